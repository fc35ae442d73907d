"""Pooling visual tokens on their patch grid: the simplest reduction, and the baseline to beat.

A ViT's patch tokens come in raster order over an ``h x w`` grid; pooling them to a smaller grid keeps the
layout a model expects. When ``k`` has no factor pair that fits the grid, tokens are pooled along the
raster order instead. No model knowledge lives here; everything is deterministic.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError, check_int


def grid_shape(k: int, h: int, w: int) -> tuple[int, int] | None:
    """The pooled grid ``(gh, gw)`` with ``gh * gw == k``, ``gh <= h``, ``gw <= w`` closest in aspect to
    ``h x w``, or None if there is none.

    Closeness is on a log scale (the ratio between ``gh / gw`` and ``h / w``, whichever way is >= 1), so
    ``2 x 3`` and ``3 x 2`` are equally close to a square; ties go to the larger ``gh``.
    """
    for name, value in (("k", k), ("h", h), ("w", w)):
        check_int(name, value, minimum=1)
    target = Fraction(h, w)
    fits = [(gh, k // gh) for gh in range(1, k + 1) if k % gh == 0 and gh <= h and k // gh <= w]
    if not fits:
        return None

    def mismatch(shape: tuple[int, int]) -> Fraction:
        ratio = Fraction(*shape) / target
        return max(ratio, 1 / ratio)

    return min(fits, key=lambda shape: (mismatch(shape), -shape[0]))


def average_pool(x: Tensor, k: int, h: int, w: int) -> Tensor:
    """Average-pool ``x`` ``(h * w, c)`` in raster order down to ``k`` tokens ``(k, c)``, in raster order.

    LLaVolta's average-pooling baseline ("Efficient Large Multi-modal Models via Visual Context
    Compression", Chen et al., 2024, arXiv:2406.20092): 2D adaptive average pooling to ``grid_shape(k, h,
    w)`` when it exists, otherwise 1D adaptive average pooling along the raster order. Both use PyTorch's
    adaptive bins (``[floor(i n / k), ceil((i + 1) n / k))`` per axis), so where the sizes do not divide
    evenly, neighbouring bins share one token. ``k`` must be in ``[1, h * w]``.
    """
    check_int("h", h, minimum=1)
    check_int("w", w, minimum=1)
    if x.ndim != 2 or x.shape[0] != h * w:
        raise TokenomyError(f"x must have shape ({h} * {w}, c), got {tuple(x.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h * w:
        raise TokenomyError(f"k must be an integer in [1, {h * w}], got {k!r}")
    shape = grid_shape(k, h, w)
    channels_first = x.T.unsqueeze(0)  # (1, c, h * w)
    if shape is None:
        return F.adaptive_avg_pool1d(channels_first, k)[0].T
    pooled = F.adaptive_avg_pool2d(channels_first.reshape(1, -1, h, w), shape)  # (1, c, gh, gw)
    return pooled.flatten(2)[0].T


def pool_representatives(k: int, h: int, w: int) -> Tensor:
    """For each of the ``k`` tokens `average_pool` makes of an ``h x w`` grid, the raster index of the first
    token its bin holds ``(k,)``: where a pooled token sits in the sequence (its position, its slot)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= h * w:
        raise TokenomyError(f"k must be an integer in [1, {h * w}], got {k!r}")
    index = -torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w)  # max-pooling the negated index: the min
    shape = grid_shape(k, h, w)
    if shape is None:
        return (-F.adaptive_max_pool1d(index.view(1, 1, -1), k)).flatten().long()
    return (-F.adaptive_max_pool2d(index, shape)).flatten().long()


def on_lattice(rows: Tensor, cols: Tensor, stride: int) -> Tensor:
    """True where a token's grid position lies on a lattice of step ``stride`` (offset to the middle of each
    ``stride x stride`` cell), so the chosen tokens cover the grid evenly: ATP-LLaVA's spatial subset."""
    check_int("stride", stride, minimum=1)
    middle = stride // 2
    return (rows % stride == middle) & (cols % stride == middle)
