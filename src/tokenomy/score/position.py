"""Scores that ignore content: recency and chance. Baselines every method must beat."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy.score.base import LayerObservation


@dataclass
class Recency:
    """Later positions score higher: with a few protected sinks this is StreamingLLM's window."""

    def __call__(self, obs: LayerObservation) -> Tensor:
        b, h, n, _ = obs.keys.shape
        return torch.arange(n, dtype=torch.float32, device=obs.keys.device).expand(b, h, n)


@dataclass
class RandomScores:
    """Uniform random scores from a seeded generator (a different draw per layer, reproducible)."""

    seed: int = 0

    def __call__(self, obs: LayerObservation) -> Tensor:
        b, h, n, _ = obs.keys.shape
        gen = torch.Generator().manual_seed(self.seed * 100_003 + obs.layer_idx)
        return torch.rand(b, h, n, generator=gen).to(obs.keys.device)
