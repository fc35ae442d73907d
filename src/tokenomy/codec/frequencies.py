"""Next-token logits -> integer frequency tables, exactly and deterministically.

The tables use only elementwise float operations (no float sums, whose order depends on threads): each
probability is exp(logit - max) in float64, scaled to an integer, then the table is normalised with exact
int64 arithmetic. Every symbol gets a frequency of at least 1, so any token can be coded. The same logits
give the same table in any process, whatever the thread count. The work is done in place on one buffer:
tables are built at every coding step for every context in the batch (41 x 49k symbols on a whole book).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenomy.codec.arithmetic import MAX_TOTAL

TOTAL = 1 << 28  # sum of every table: the smallest codable probability is 2^-28
_SCALE = 1 << 30  # resolution of the float -> integer step


def frequencies(logits: Tensor, extra: int = 0) -> tuple[Tensor, Tensor]:
    """Frequencies ``(..., V + extra)`` int64, each >= 1, each row summing to exactly ``TOTAL``; the
    ``extra`` symbols after the logits' ``V`` (escapes the model never predicts) get the minimum frequency.
    Also each row's log-normaliser (see `weights`)."""
    x, log_normalizers = weights(logits, extra)
    return table(x, peaked=True), log_normalizers


def weights(logits: Tensor, extra: int = 0) -> tuple[Tensor, Tensor]:
    """``exp(logits - max)`` in float64 over ``V + extra`` symbols (escapes: 0), each row's largest exactly 1,
    and each row's logsumexp of its logits (float64, for reporting the model's own cross-entropy; unlike the
    weights it may differ in the last bits between runs)."""
    vocab = logits.shape[-1] + extra
    if vocab >= TOTAL:
        raise ValueError(f"vocabulary of {vocab} symbols does not fit a {TOTAL}-total table")
    x = logits.new_full((*logits.shape[:-1], vocab), -torch.inf, dtype=torch.float64)
    x[..., : logits.shape[-1]] = logits
    peak = x.amax(dim=-1, keepdim=True)  # max is exact in any order
    x.sub_(peak).exp_()
    return x, peak.squeeze(-1) + x.sum(dim=-1).log_()


def table(weights: Tensor, peaked: bool = False) -> Tensor:
    """Exact integer table of non-negative float64 ``weights`` (any scale, each row's largest > 0): scaled so
    the largest is ``2^30``, floored, then normalised with int64 arithmetic to sum to ``TOTAL`` with every
    symbol >= 1. Elementwise float operations only, so any process computes the same table. ``weights`` is
    overwritten; ``peaked``: its rows' largest value is already 1."""
    vocab = weights.shape[-1]
    if not peaked:
        weights.div_(weights.amax(dim=-1, keepdim=True))
    raw = weights.mul_(_SCALE).floor_().long()  # in [0, 2^30]
    raw_total = raw.sum(dim=-1, keepdim=True)  # int64: exact, order-free
    freq = raw.mul_(TOTAL - vocab).floor_divide_(raw_total).add_(1)  # each >= 1; sum <= TOTAL
    freq[..., 0] += TOTAL - freq.sum(dim=-1)  # hand the rounding remainder to one fixed symbol
    return freq


def cumulative(freq: Tensor) -> Tensor:
    """Cumulative frequencies ``(..., symbols + 1)``, from 0 to ``TOTAL``: what a decoder searches."""
    cum = freq.new_zeros(*freq.shape[:-1], freq.shape[-1] + 1)
    torch.cumsum(freq, dim=-1, out=cum[..., 1:])
    return cum


def interval(freq: Tensor, symbol: int) -> tuple[int, int]:
    """``symbol``'s slice [low, high) of a 1-D table: what an encoder codes, without the whole cumulative
    table (the same integers, summed exactly)."""
    low = int(freq[:symbol].sum())
    return low, low + int(freq[symbol])


assert TOTAL <= MAX_TOTAL


def symbol_at(cum: Tensor, target: int) -> int:
    """The symbol whose slice [cum[s], cum[s+1]) contains ``target`` (cum is 1-D)."""
    return int(torch.searchsorted(cum, torch.tensor([target]), right=True)) - 1
