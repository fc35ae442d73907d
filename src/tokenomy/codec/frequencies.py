"""Next-token logits -> integer frequency tables, exactly and deterministically.

Only elementwise float operations are used (no float sums, whose order depends on threads): each
probability is exp(logit - max) in float64, scaled to an integer, then the table is normalised with exact
int64 arithmetic. Every symbol gets a frequency of at least 1, so any token can be coded. The same logits
give the same table in any process, whatever the thread count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenomy.codec.arithmetic import MAX_TOTAL

TOTAL = 1 << 28  # sum of every table: the smallest codable probability is 2^-28
_SCALE = 1 << 30  # resolution of the float -> integer step


def cumulative_frequencies(logits: Tensor, extra: int = 0) -> Tensor:
    """Cumulative frequencies ``(..., V + extra + 1)`` int64, from 0 to exactly ``TOTAL``; the ``extra``
    symbols after the logits' ``V`` (escapes the model never predicts) get the minimum frequency."""
    x = logits.double()
    if extra:
        x = torch.cat([x, x.new_full((*x.shape[:-1], extra), -torch.inf)], dim=-1)
    x = x - x.amax(dim=-1, keepdim=True)  # max is exact in any order
    raw = torch.floor(torch.exp(x) * _SCALE).long()  # in [0, 2^30]
    vocab = raw.shape[-1]
    if vocab >= TOTAL:
        raise ValueError(f"vocabulary of {vocab} symbols does not fit a {TOTAL}-total table")
    spare = TOTAL - vocab
    raw_total = raw.sum(dim=-1, keepdim=True)  # int64: exact, order-free
    freq = 1 + raw * spare // raw_total  # each >= 1; sum <= TOTAL
    freq[..., 0] += TOTAL - freq.sum(dim=-1)  # hand the rounding remainder to one fixed symbol
    cum = torch.zeros(*freq.shape[:-1], vocab + 1, dtype=torch.long)
    cum[..., 1:] = freq.cumsum(dim=-1)
    return cum


assert TOTAL <= MAX_TOTAL


def symbol_at(cum: Tensor, target: int) -> int:
    """The symbol whose slice [cum[s], cum[s+1]) contains ``target`` (cum is 1-D)."""
    return int(torch.searchsorted(cum, torch.tensor([target]), right=True)) - 1
