"""Attention-based scores: how much attention the observed queries pay to each cached entry."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from tokenomy._validation import check_choice, check_int
from tokenomy.score.base import LayerObservation, per_kv_head


@dataclass
class Attention:
    """Attention received from the last ``window`` observed queries.

    One recipe covers several papers: SnapKV (last 32 prompt queries, then `Pooled`), TOVA (the last
    query only, averaged over all heads of the layer), H2O (all queries, accumulated), TokenSelect (the
    current decoding queries, soft-voted over all heads).

    window: number of most recent queries to observe; None observes every available query.
    reduce: "mean", "sum" (accumulated attention) or "max" over the observed queries.
    heads: "group" averages the query heads of each GQA group (one score per KV head); "layer"
        averages all heads of the layer (the same tokens are kept in every head).
    """

    window: int | None = 32
    reduce: str = "mean"
    heads: str = "group"

    @property
    def accumulates(self) -> bool:
        """H2O's score: attention summed over every query so far (while decoding, the site's history)."""
        return self.window is None and self.reduce == "sum"

    def __post_init__(self):
        if self.window is not None:
            check_int("window", self.window, minimum=1)
        check_choice("reduce", self.reduce, ["mean", "sum", "max"])
        check_choice("heads", self.heads, ["group", "layer"])

    def __call__(self, obs: LayerObservation) -> Tensor:
        if self.accumulates:
            scores = obs.received() if obs.history is None else obs.history
        else:
            probs = obs.attention(self.window)  # (b, h, w, n)
            if self.reduce == "max":
                scores = probs.amax(dim=2)
            else:
                scores = probs.sum(dim=2) if self.reduce == "sum" else probs.mean(dim=2)
        h_kv = obs.keys.shape[1]
        if self.heads == "layer":
            return scores.mean(dim=1, keepdim=True).expand(-1, h_kv, -1)
        return per_kv_head(scores, h_kv)
