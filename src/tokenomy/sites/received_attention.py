"""Accumulated attention (H2O, VATP) summed inside the model's own prefill instead of recomputed after it.

PyTorch's fused attention never materialises the attention matrix, so a score that needs every prompt
query's attention would have to run the queries again. While an accumulating method is applied, the model
runs on ``tokenomy_sdpa_received``: PyTorch's SDPA everywhere, except in a prefill the KV site marks, where
`attention_and_received` computes the layer's attention block by block and hands the column sums to the
site on the module. Masks are SDPA's, so nothing else about the forward changes.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tokenomy.models.adapters import key_padding
from tokenomy.score.base import attention_and_received

ATTENTION = "tokenomy_sdpa_received"
SUMS = "_tokenomy_received"  # on an attention module: True = sum this prefill, then the sums (b, h, n)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    valid = key_padding(attention_mask, key.shape[2])
    summing = (getattr(module, SUMS, None) is True and query.shape[2] == key.shape[2]
               and _plain_causal(module, attention_mask, valid, kwargs))
    if not summing or (torch.is_grad_enabled() and query.requires_grad):  # it does not backpropagate
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out, received = attention_and_received(query, key, value, scale, valid)
    setattr(module, SUMS, received)
    return out.transpose(1, 2).contiguous(), None


def _plain_causal(module, mask, valid, kwargs) -> bool:
    """Causal attention with at most key padding (what `attention_and_received` computes); anything else —
    bidirectional spans, sliding windows, soft-capping, sink logits — keeps SDPA, and the site recomputes."""
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        return False
    if kwargs.get("softcap") or kwargs.get("sliding_window") or kwargs.get("s_aux") is not None:
        return False
    if mask is None:
        return True
    if mask.dtype != torch.bool:
        return False
    q, n = mask.shape[-2:]
    causal = torch.ones(q, n, dtype=torch.bool, device=mask.device).tril(n - q)
    expected = causal if valid is None else causal & valid[:, None, None, :]
    return bool((mask == expected).all())


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextmanager
def summing_received(model: nn.Module, active: bool) -> Iterator[bool]:
    """Run ``model`` on the summing attention for a block, when ``active`` and the model is on SDPA (other
    implementations keep theirs, and the scores are recomputed); yields whether it is on."""
    previous = model.config._attn_implementation
    if not active or previous != "sdpa":
        yield False
        return
    model.set_attn_implementation(ATTENTION)
    try:
        yield True
    finally:
        model.set_attn_implementation(previous)
