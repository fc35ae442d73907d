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
