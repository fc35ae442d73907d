"""HF's attention mask, over the positions a layer has seen, mapped onto the entries a rectangular compressed
layer (`tokenomy.sites.kv_layers.PrunedLayer`) stores."""

from __future__ import annotations

import torch
from torch import Tensor

from tokenomy.score.base import per_query_head
from tokenomy.sites.kv_layers import PrunedLayer


def map_mask(layer: PrunedLayer, mask: Tensor | None, num_new: int, num_heads: int) -> Tensor | None:
    """HF's mask over seen positions ``(b, 1, q, seen + q)`` -> a mask over the entries the layer will
    attend to, ``(b, num_heads, q, L + q)`` (bool or additive float, like the input)."""
    positions, valid = layer.positions, layer.valid
    if layer.selection is not None:
        positions = positions.gather(-1, layer.selection)
        valid = None if valid is None else valid.gather(-1, layer.selection)
        if layer.selection_valid is not None:
            valid = layer.selection_valid if valid is None else valid & layer.selection_valid
    b, h_kv, stored = positions.shape
    q = num_new
    device = positions.device
    if mask is None:
        if valid is None:
            return None
        causal = torch.ones(q, q, dtype=torch.bool, device=device).tril()
        mapped = torch.cat([valid.unsqueeze(2).expand(b, h_kv, q, stored), causal.expand(b, h_kv, q, q)], dim=-1)
    else:
        new = (layer.seen + torch.arange(q, device=device)).expand(b, h_kv, q)
        columns = torch.cat([positions, new], dim=-1).unsqueeze(2).expand(b, h_kv, q, stored + q)
        mapped = mask[..., -q:, :].expand(b, h_kv, q, mask.shape[-1]).gather(-1, columns)
        if valid is not None:
            in_use = torch.cat([valid, valid.new_ones(b, h_kv, q)], dim=-1).unsqueeze(2)
            if mapped.dtype == torch.bool:
                mapped = mapped & in_use
            else:
                mapped = mapped.masked_fill(~in_use, torch.finfo(mapped.dtype).min)
    return per_query_head(mapped, num_heads)
