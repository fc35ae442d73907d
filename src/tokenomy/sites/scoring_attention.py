"""Scores taken inside the model's own attention instead of recomputed after it.

PyTorch's fused attention never materialises the attention matrix, so a score that needs what every query
paid every key would have to run the queries again. While such a method is applied, the model runs on
``tokenomy_sdpa_scoring``: PyTorch's SDPA everywhere, except in a forward the KV site marks on a module:
- ``SUMS``: a prefill, where `attention_and_received` computes the layer's attention block by block and
  hands the column sums (H2O, VATP) to the site on the module;
- ``NORMALIZERS``: a replay of the context (KVzip), where PyTorch's fused CPU kernel, which computes each
  query's log-normaliser anyway, hands it over, so the score needs only the context's logits;
- ``PACKED``: a forward over a `PackedLayer` (exactly the kept entries of each head, no rectangle), which the
  layer attends segment by segment.
Masks are SDPA's, so nothing else about the forward changes.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from tokenomy._validation import TokenomyError
from tokenomy.adapters.lm import key_padding
from tokenomy.score.base import attention_and_received, per_query_head

ATTENTION = "tokenomy_sdpa_scoring"
SUMS = "_tokenomy_received"  # on an attention module: True = sum this prefill, then the sums (b, h, n)
NORMALIZERS = "_tokenomy_normalizers"  # True = keep this forward's log-normalisers, then them (b, h, w)
PACKED = "_tokenomy_packed"  # the `PackedLayer` this forward attends over (set by the KV site's pre-hook)


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    packed = module.__dict__.pop(PACKED, None)
    if packed is not None:
        if kwargs.get("softcap") or kwargs.get("s_aux") is not None:
            raise TokenomyError("packed KV layers attend with plain softmax attention; this model's layer "
                                "needs soft-capping or sink logits")
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return packed.attend(query, attention_mask, scale), None
    sums, normalizers = getattr(module, SUMS, None) is True, getattr(module, NORMALIZERS, None) is True
    own = ((sums and query.shape[2] == key.shape[2]) or (normalizers and query.device.type == "cpu")) and not (
        torch.is_grad_enabled() and query.requires_grad)  # it does not backpropagate
    valid = key_padding(attention_mask, key.shape[2])
    if not own or not _plain_causal(module, attention_mask, valid, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if sums:
        out, received = attention_and_received(query, key, value, scale, valid)
        setattr(module, SUMS, received)
    else:
        out, normalizer = _fused_with_normalizers(query, key, value, scale, valid)
        setattr(module, NORMALIZERS, normalizer)
    return out.transpose(1, 2).contiguous(), None


def _fused_with_normalizers(query: Tensor, key: Tensor, value: Tensor, scale: float,
                            valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Causal attention ``(b, h, w, d)`` (query ``i`` sees keys ``<= n - w + i``, none where ``valid`` is
    False) and each query's log-normaliser ``(b, h, w)``, from the fused CPU kernel SDPA itself runs.

    Run as two fused calls merged by their log-normalisers: the queries over the earlier keys (no causal
    mask: every query sees all of them) and over their own ``w`` keys (causal, square). Neither needs the
    ``w x n`` mask one call would, and the causal half skips its masked blocks."""
    h, w, n = query.shape[1], query.shape[2], key.shape[2]
    key, value = per_query_head(key, h), per_query_head(value, h)
    parts = [_fused_part(query, key[:, :, keys], value[:, :, keys], scale,
                         None if valid is None else valid[:, keys], causal=causal)
             for keys, causal in ((slice(0, n - w), False), (slice(n - w, n), True))]
    normalizer = torch.logaddexp(parts[0][1], parts[1][1])
    weights = [torch.exp(lse - normalizer).nan_to_num(0.0).unsqueeze(-1) for _, lse in parts]
    return parts[0][0] * weights[0] + parts[1][0] * weights[1], normalizer


def _fused_part(query: Tensor, key: Tensor, value: Tensor, scale: float, valid: Tensor | None,
                causal: bool) -> tuple[Tensor, Tensor]:
    """One fused call over ``key``: output and log-normaliser, -inf (not the kernel's 0) where a query sees
    none of these keys (``causal``: the queries are the keys' own tokens)."""
    b, w, n = query.shape[0], query.shape[2], key.shape[2]
    if n == 0:
        return query.new_zeros(query.shape), query.new_full((b, query.shape[1], w), -torch.inf)
    bias = seen = None
    if valid is not None and not bool(valid.all()):
        allowed = valid[:, None, None, :]
        if causal:
            allowed = allowed & torch.ones(w, n, dtype=torch.bool, device=query.device).tril(n - w)
        bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device).masked_fill_(~allowed, -torch.inf)
        seen = allowed.any(dim=-1)  # (b, 1, w or 1)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, is_causal=causal and bias is None, attn_mask=bias, scale=scale)[:2]
    return out, lse if seen is None else lse.masked_fill(~seen, -torch.inf)


def _plain_causal(module, mask, valid, kwargs) -> bool:
    """Causal attention with at most key padding (what tokenomy computes); anything else — bidirectional
    spans, sliding windows, soft-capping, sink logits — keeps SDPA, and the site recomputes."""
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        return False
    if kwargs.get("softcap") or kwargs.get("sliding_window") or kwargs.get("s_aux") is not None:
        return False
    if mask is None:
        return True
    if mask.dtype != torch.bool:
        return False
    global _last_mask
    seen, verdict = _last_mask
    if seen() is not mask:  # HF hands every layer of a forward the same mask: compare it once
        q, n = mask.shape[-2:]
        causal = torch.ones(q, n, dtype=torch.bool, device=mask.device).tril(n - q)
        expected = causal if valid is None else causal & valid[:, None, None, :]
        verdict = bool((mask == expected).all())
        _last_mask = weakref.ref(mask), verdict
    return verdict


_last_mask: tuple[weakref.ref, bool] = (lambda: None, False)  # the last bool mask checked, and its verdict


AttentionInterface.register(ATTENTION, _attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextmanager
def scoring_attention(model: nn.Module, active: bool) -> Iterator[bool]:
    """Run ``model`` on the scoring attention for a block, when ``active`` and the model is on SDPA (other
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
