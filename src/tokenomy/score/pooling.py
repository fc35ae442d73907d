"""Neighbourhood pooling of any score, so tokens next to an important one survive with it."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import check_choice, check_int
from tokenomy.score.base import LayerObservation, Scorer


@dataclass
class Pooled:
    """``inner``'s scores pooled over a sliding window of ``kernel`` positions (``kind``: max or avg).

    SnapKV's clustering step: a kept token drags its neighbours along, so whole phrases (a key and the
    number after it) survive instead of scattered tokens. Padding positions never leak into the pool.
    """

    inner: Scorer
    kernel: int = 7
    kind: str = "max"

    def __post_init__(self):
        check_int("kernel", self.kernel, minimum=1)
        check_choice("kind", self.kind, ["max", "avg"])

    def __call__(self, obs: LayerObservation) -> Tensor:
        scores = self.inner(obs)
        if self.kernel == 1:
            return scores
        b, h, n = scores.shape
        if obs.valid is not None:  # padding must neither win a max nor dilute an average
            fill = scores.min() if self.kind == "max" else 0.0
            scores = scores.masked_fill(~obs.valid.unsqueeze(1), float(fill))
        pool = F.max_pool1d if self.kind == "max" else F.avg_pool1d
        pooled = pool(scores.reshape(b * h, 1, n), self.kernel, stride=1, padding=self.kernel // 2)
        return pooled[..., :n].reshape(b, h, n)


@dataclass
class Chunked:
    """``inner``'s scores summed over fixed chunks of ``size`` consecutive tokens and over a layer's heads: every
    token of a chunk, in every head, scores its chunk's total, so whole chunks are kept or evicted together.

    From "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference" (Liu et al.,
    2025, arXiv:2502.00299): a phrase kept whole (a key, its verb and its number) is worth more than its
    individually best tokens scattered over the context. Padding contributes nothing to a chunk.
    """

    inner: Scorer
    size: int = 10

    def __post_init__(self):
        check_int("size", self.size, minimum=1)

    def __call__(self, obs: LayerObservation) -> Tensor:
        scores = self.inner(obs)
        b, h, n = scores.shape
        if obs.valid is not None:
            scores = scores.masked_fill(~obs.valid.unsqueeze(1), 0.0)
        totals = F.pad(scores.sum(dim=1), (0, -n % self.size)).view(b, -1, self.size).sum(-1)  # (b, chunks)
        return totals.repeat_interleave(self.size, dim=-1)[:, None, :n].expand(b, h, n)
