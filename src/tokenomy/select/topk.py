"""Top-k selection on plain tensors: which positions to keep, given scores and how many to keep.

No model knowledge lives here; everything is batched over leading dimensions and deterministic.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k(scores: Tensor, counts: Tensor | int) -> tuple[Tensor, Tensor | None]:
    """Positions of the ``counts`` highest ``scores`` along the last dimension, in increasing order.

    ``counts`` is one int or a tensor broadcastable to ``scores.shape[:-1]`` (a ragged budget, e.g. one
    count per head). Returns ``(indices, valid)``: ``indices`` has ``max(counts)`` slots per row, the kept
    positions first in increasing order; ``valid`` marks the slots that hold a kept position (rows with a
    smaller count are padded with unused positions) and is ``None`` when every row keeps the same number.
    """
    n = scores.shape[-1]
    counts_t = torch.as_tensor(counts, device=scores.device).expand(scores.shape[:-1])
    if bool((counts_t < 0).any()) or bool((counts_t > n).any()):
        raise ValueError(f"counts must be in [0, {n}], got {counts_t.unique().tolist()}")
    k_max = int(counts_t.max()) if counts_t.numel() else 0
    ranked = scores.topk(k_max, dim=-1).indices
    valid = torch.arange(k_max, device=scores.device) < counts_t.unsqueeze(-1)
    # Valid slots first, each group in positional order (keeps the cache causal-ordered).
    order = torch.where(valid, ranked, ranked + n).argsort(dim=-1)
    indices = ranked.gather(-1, order)
    valid = valid.gather(-1, order)
    return indices, (None if bool(valid.all()) else valid)


def prioritize(
    scores: Tensor,
    *,
    first: int = 0,
    last: Tensor | int = 0,
    valid: Tensor | None = None,
) -> Tensor:
    """Scores turned into priorities where protected positions always win, and padding always loses.

    Order: padding < ordinary positions (by score) < the ``first`` positions < the ``last`` positions.
    Positions count only valid (non-padding) entries, so protection follows the real text under left
    padding. Among protected positions the most recent win, then the earliest sinks, so a budget smaller
    than the protected set is still honoured exactly. ``scores`` has shape ``(b, h, n)``, ``valid``
    ``(b, n)``, ``last`` an int or ``(b,)``. Ordinary scores are min-max normalised over each batch row
    (all heads together), which keeps them comparable across heads for head-adaptive budgets.
    """
    b, _, n = scores.shape
    if valid is None:
        valid = torch.ones(b, n, dtype=torch.bool, device=scores.device)
    rank = valid.long().cumsum(-1) - 1  # index among real tokens
    n_valid = valid.sum(-1, keepdim=True)
    last_t = torch.as_tensor(last, device=scores.device).reshape(-1, 1).expand(b, 1)
    is_last = valid & (rank >= n_valid - last_t)
    is_first = valid & (rank < first) & ~is_last

    s = scores.double()
    finite = valid.unsqueeze(1).expand_as(s)
    lo = torch.where(finite, s, torch.inf).amin(dim=(1, 2), keepdim=True)
    hi = torch.where(finite, s, -torch.inf).amax(dim=(1, 2), keepdim=True)
    normalised = ((s - lo) / (hi - lo).clamp_min(1e-300)).clamp(0, 1)
    position = rank.double().unsqueeze(1) / n  # in [0, 1)
    priority = 1.0 + normalised
    priority = torch.where(is_first.unsqueeze(1), 3.0 - position, priority)
    priority = torch.where(is_last.unsqueeze(1), 4.0 + position, priority)
    return torch.where(finite, priority, torch.zeros_like(priority))
