"""Scores that ignore content: recency, chance, and a fixed ranking of heads. Baselines, and DuoAttention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError
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
    batch_dependent = True  # one draw for the whole batch: a row's scores depend on the batch's shape

    def __call__(self, obs: LayerObservation) -> Tensor:
        b, h, n, _ = obs.keys.shape
        gen = torch.Generator().manual_seed(self.seed * 100_003 + obs.layer_idx)
        return torch.rand(b, h, n, generator=gen).to(obs.keys.device)


@dataclass
class HeadProfile:
    """Whole heads ranked by a fixed per-model profile, the most retrieving first; recent tokens first within a
    head. With one budget over every layer's heads (`HeadAdaptive(across_layers=True)`) the top-ranked heads
    keep their whole cache and the rest only what the recipe protects (sinks, recent window).

    From "DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads" (Xiao et al.,
    2024, arXiv:2410.10819): only some heads look far back for what the text said; the others attend to the
    first tokens and the last ones, whatever the text. The profile (`tokenomy.models.kv_heads`) is measured
    once per model; the budget decides how many heads are retrieval heads.

    profile: ``(layers, kv_heads)`` how much each KV head retrieves; trained_for: the model it was measured on.
    """

    profile: Tensor
    trained_for: str = "?"

    def __call__(self, obs: LayerObservation) -> Tensor:
        b, h, n, _ = obs.keys.shape
        if (obs.num_layers, h) != tuple(self.profile.shape):
            raise TokenomyError(
                f"this head profile was measured on {self.trained_for} ({self.profile.shape[0]} layers, "
                f"{self.profile.shape[1]} KV heads); this model has {obs.num_layers} layers and {h} KV heads: "
                "measure one with `tokenomy train-kv duoattention --model MODEL -o PATH`, then use "
                "duoattention:profile=PATH")
        rank = self.profile.flatten().argsort().argsort().view(self.profile.shape)[obs.layer_idx]
        rank = rank.to(device=obs.keys.device, dtype=torch.float32)
        return rank[None, :, None] + Recency()(obs) / n
