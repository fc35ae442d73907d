"""Norm-based scores: read off the cached vectors themselves, no queries needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.score.base import LayerObservation, Scorer


@dataclass
class KeyNorm:
    """Low key norm means important: the score is minus the L2 norm of each cached key.

    From "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression" (Devoto et al., 2024,
    arXiv:2406.11430): keys with small norms attract high attention.
    """

    def __call__(self, obs: LayerObservation) -> Tensor:
        return -obs.keys.float().norm(dim=-1)


@dataclass
class ValueWeighted:
    """Another score multiplied by the Lp norm of each cached value vector.

    From VATP, "Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction:
    Value Also Matters" (Guo et al., 2024, arXiv:2406.12335): a token attended to but carrying a tiny
    value vector contributes little to the attention output.
    """

    inner: Scorer
    p: float = 1.0

    def __post_init__(self):
        if not float(self.p) > 0:
            raise TokenomyError(f"p must be > 0, got {self.p!r}")

    def __call__(self, obs: LayerObservation) -> Tensor:
        return self.inner(obs) * obs.values.float().norm(p=self.p, dim=-1)


@dataclass
class KeyDiversity:
    """Distinctive keys are important: the score is minus the cosine similarity of each key to the
    mean key of its head (over real tokens).

    From "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference in
    Resource-Constrained Environments" (Park et al., 2025, arXiv:2504.15364). It needs no queries, so it
    keeps what any later question may need: the scorer for query-agnostic compression.
    """

    def __call__(self, obs: LayerObservation) -> Tensor:
        keys = F.normalize(obs.keys.float(), dim=-1)
        if obs.valid is None:
            anchor = keys.mean(dim=2, keepdim=True)
        else:
            weight = obs.valid.to(keys.dtype).view(keys.shape[0], 1, -1, 1)
            anchor = (keys * weight).sum(dim=2, keepdim=True) / weight.sum(dim=2, keepdim=True).clamp_min(1)
        return -(keys * F.normalize(anchor, dim=-1)).sum(dim=-1)
