"""Token merging on plain tensors: fold similar tokens together instead of dropping them.

Merged tokens are size-weighted means, where a token's size is the number of original patches it stands
for, so repeated merging still averages the original patches evenly. No model knowledge lives here;
everything is deterministic (ties go to the lowest index) and merges are scatter-adds, not Python loops.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError

Merge = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def _weighted_mean(x: Tensor, size: Tensor, slot: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Size-weighted means of ``x`` ``(b, n, c)`` gathered into ``count`` slots by ``slot`` ``(b, n)``.

    Returns ``(means (b, count, c), summed sizes (b, count, 1))``; sums run in at least float32.
    """
    b, _, c = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)
    index = slot.unsqueeze(-1)
    total = size.new_zeros(b, count, 1).scatter_add_(1, index, size)
    weighted = x.to(dtype) * size.to(dtype)
    summed = weighted.new_zeros(b, count, c).scatter_add_(1, index.expand(-1, -1, c), weighted)
    return (summed / total.to(dtype)).to(x.dtype), total


def bipartite_soft_matching(metric: Tensor, r: int, protected: int = 0) -> Merge:
    """ToMe's bipartite soft matching: plan how to merge ``r`` tokens away, batched over rows.

    From "Token Merging: Your ViT But Faster" (Bolya et al., ICLR 2023, arXiv:2210.09461). ``metric`` is
    ``(b, n, d)``. The first ``protected`` tokens (e.g. [CLS]) are never merged; the others alternate into
    set A (even positions among them) and set B (odd). Each A token's best match is its most cosine-similar
    B token, and the ``r`` A tokens with the most similar matches merge into them. ``r`` is clamped to the
    size of A (several A tokens may merge into one B token), and to 0 when B is empty.

    Returns ``merge(x, size) -> (x_merged, size_merged, slot)`` for ``x`` ``(b, n, c)`` and token sizes
    ``size`` ``(b, n, 1)`` (positive): ``x_merged`` ``(b, n - r, c)`` holds size-weighted means,
    ``size_merged`` the summed sizes, and ``slot`` ``(b, n)`` the output index each input token went to,
    so any other per-token quantity can follow. Output order: protected tokens, then the other tokens by
    the smallest original index each contains (spatial order is kept).
    """
    if metric.ndim != 3:
        raise TokenomyError(f"metric must have shape (b, n, d), got {tuple(metric.shape)}")
    b, n, _ = metric.shape
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise TokenomyError(f"r must be an integer >= 0, got {r!r}")
    if isinstance(protected, bool) or not isinstance(protected, int) or not 0 <= protected <= n:
        raise TokenomyError(f"protected must be an integer in [0, {n}], got {protected!r}")
    device = metric.device
    positions = torch.arange(protected, n, device=device)
    a_pos, b_pos = positions[0::2], positions[1::2]
    r = min(r, a_pos.numel()) if b_pos.numel() else 0

    # Every token points at the token it ends up in: itself, or its B match for the r merged A tokens.
    index = torch.arange(n, device=device).expand(b, n)
    owner = index
    if r > 0:
        unit = F.normalize(metric.float(), dim=-1)
        similarity = unit[:, a_pos] @ unit[:, b_pos].transpose(1, 2)  # (b, |A|, |B|)
        best, match = similarity.max(dim=-1)  # first maximal B on ties
        merged = best.argsort(dim=-1, descending=True, stable=True)[:, :r]  # (b, r) indices into A
        owner = index.clone().scatter_(1, a_pos[merged], b_pos[match.gather(1, merged)])
    # Order the surviving groups by their smallest original index; merged-away slots (key n) sort last.
    # Protected tokens come first on their own: their indices are below every other token's.
    key = torch.full((b, n), n, device=device).scatter_reduce_(1, owner, index, "amin")
    rank = torch.empty_like(index).scatter_(1, key.argsort(dim=1, stable=True), index)
    slot = rank.gather(1, owner)
    count = n - r

    def merge(x: Tensor, size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if x.ndim != 3 or tuple(x.shape[:2]) != (b, n):
            raise TokenomyError(f"x must have shape ({b}, {n}, c), got {tuple(x.shape)}")
        if tuple(size.shape) != (b, n, 1):
            raise TokenomyError(f"size must have shape ({b}, {n}, 1), got {tuple(size.shape)}")
        x_merged, size_merged = _weighted_mean(x, size, slot, count)
        return x_merged, size_merged, slot

    return merge


def merge_into_nearest(x: Tensor, kept: Tensor, metric: Tensor, size: Tensor | None = None) -> Tensor:
    """Fold every pruned token into its most similar kept token, as LLaVA-PruMerge does.

    From "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models" (Shang et al.,
    2024, arXiv:2403.15388). ``x`` is ``(n, c)``, ``kept`` ``(k,)`` distinct indices, ``metric`` ``(n, d)``
    (cosine similarity; ties go to the earlier entry of ``kept``), ``size`` ``(n,)`` or ``(n, 1)`` token
    sizes (ones by default). Each kept token becomes the size-weighted mean of itself and the tokens
    assigned to it. Returns ``(k, c)`` in the order of ``kept``.
    """
    n = x.shape[0]
    if x.ndim != 2 or metric.ndim != 2 or metric.shape[0] != n:
        raise TokenomyError(f"x and metric must have shapes (n, c) and (n, d), got {tuple(x.shape)} "
                            f"and {tuple(metric.shape)}")
    k = kept.numel()
    in_range = bool(((kept >= 0) & (kept < n)).all())
    if kept.ndim != 1 or k == 0 or not in_range or kept.unique().numel() != k:
        raise TokenomyError(f"kept must be 1 to {n} distinct indices in [0, {n - 1}], got {kept.tolist()}")
    size = torch.ones(n, 1, dtype=x.dtype, device=x.device) if size is None else size.reshape(n, 1)
    unit = F.normalize(metric.float(), dim=-1)
    assign = (unit @ unit[kept].T).argmax(dim=1)  # (n,) position in kept; first maximal on ties
    assign[kept] = torch.arange(k, device=x.device)  # a kept token always stays itself
    return _weighted_mean(x.unsqueeze(0), size.unsqueeze(0), assign.unsqueeze(0), k)[0][0]
