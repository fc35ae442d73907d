"""Token-axis plumbing for the visual site, on plain tensors: shortening a batch of sequences to the tokens
each row keeps (rows left-padded to one length, real tokens last, as HF generation pads), carrying every
per-token tensor and attention mask along, and building masks over kept entries."""

from __future__ import annotations

import torch
from torch import Tensor


def packed_columns(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Kept columns of ``keep`` ``(b, L)`` packed to the right: ``(columns, valid)``, both ``(b, W)`` with
    ``W`` the most any row keeps; a row keeping fewer is padded on the left (column 0, valid False)."""
    b, length = keep.shape
    width = int(keep.sum(1).max()) if keep.numel() else 0
    index = torch.arange(length, device=keep.device).expand(b, length)
    ordered = torch.where(keep, index, -1).sort(dim=1).values[:, length - width:]  # kept ones last, in order
    valid = ordered >= 0
    return ordered.clamp_min(0), valid


def take(x: Tensor, columns: Tensor, axis: int) -> Tensor:
    """Gather per row the ``columns`` ``(b, W)`` along the token ``axis`` of ``x``, whose batch axis comes right
    before it (``(b, L, d)``, ``(3, b, L, d)``, ``(b, L)``, ``(3, b, L)``); a batch of 1 is broadcast."""
    axis = axis % x.ndim
    b, width = columns.shape
    shape = list(x.shape)
    shape[axis - 1] = b
    x = x.expand(shape)
    index = columns.to(x.device)
    view = [1] * x.ndim
    view[axis - 1], view[axis] = b, width
    index = index.view(view)
    sizes = list(x.shape)
    sizes[axis] = width
    return x.gather(axis, index.expand(sizes))


def take_mask(mask: Tensor, rows: Tensor, columns: Tensor, valid_rows: Tensor, valid_columns: Tensor) -> Tensor:
    """A 4-D attention mask ``(b, 1|h, q, k)`` (bool, or additive float) restricted to query ``rows`` ``(b, q')``
    and key ``columns`` ``(b, k')``; padded keys are masked, and a padded query attends to itself only (a
    row with nothing to attend to would be NaN)."""
    b = rows.shape[0]
    mask = mask.expand(b, *mask.shape[1:])
    heads, q, k = mask.shape[1], rows.shape[1], columns.shape[1]
    picked = mask.gather(2, rows.to(mask.device)[:, None, :, None].expand(b, heads, q, mask.shape[3]))
    picked = picked.gather(3, columns.to(mask.device)[:, None, None, :].expand(b, heads, q, k))
    allowed = valid_columns[:, None, None, :].to(mask.device)
    if rows.shape[1] == columns.shape[1]:  # a square mask over the kept tokens: pad queries see themselves
        eye = torch.eye(rows.shape[1], dtype=torch.bool, device=mask.device)
        lonely = ~valid_rows[:, None, :, None].to(mask.device) & eye
        return _combine(picked, allowed, lonely)
    return _combine(picked, allowed, None)


def _combine(mask: Tensor, allowed: Tensor, forced: Tensor | None) -> Tensor:
    if mask.dtype == torch.bool:
        out = mask & allowed
        return out if forced is None else out | forced
    low = torch.finfo(mask.dtype).min
    out = mask.masked_fill(~allowed, low)
    return out if forced is None else out.masked_fill(forced, 0.0)


def build_mask(query_coords: Tensor, key_coords: Tensor, key_valid: Tensor, window: int | None,
               dtype: torch.dtype | None) -> Tensor:
    """A causal mask ``(b, 1, q, k)`` by coordinates: query ``i`` sees key ``j`` when ``key_valid`` and
    ``key <= query`` (and, with a sliding ``window``, ``query - key < window``). ``dtype`` None gives bool,
    a float dtype an additive mask. A query that sees nothing (padding) sees itself if it is also a key."""
    q = query_coords[:, :, None]
    k = key_coords[:, None, :]
    allowed = key_valid[:, None, :] & (k <= q)
    if window is not None:
        allowed &= (q - k) < window
    lonely = ~allowed.any(-1, keepdim=True) & (k == q)
    allowed = (allowed | lonely).unsqueeze(1)
    if dtype is None or dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
