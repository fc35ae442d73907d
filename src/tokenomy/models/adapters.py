"""Model-family specifics for decoder-only transformers: where the attention layers are and how their
queries are formed. Everything else in tokenomy reads models only through these functions.

Supported: HF causal LMs whose attention modules expose ``q_proj`` (+ optional ``q_norm``), ``head_dim``,
``layer_idx`` and whose modeling file defines ``apply_rotary_pos_emb`` — Llama, Mistral, Qwen2, Qwen3,
Gemma2/3 text models and the language model inside HF VLMs built on them.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor, nn

from tokenomy._validation import TokenomyError


def decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (the module holding ``layers``) of a causal LM or VLM."""
    candidates = [model]
    for attr in ("model", "language_model", "text_model"):
        for parent in list(candidates):
            child = getattr(parent, attr, None)
            if isinstance(child, nn.Module):
                candidates.append(child)
    for module in reversed(candidates):
        if isinstance(getattr(module, "layers", None), nn.ModuleList):
            return module
    raise TokenomyError(
        f"cannot find the decoder layers of {type(model).__name__}; tokenomy supports HF causal LMs "
        "with a `model.layers` stack (Llama, Mistral, Qwen2/3, Gemma2/3 and VLMs built on them)"
    )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention module of every decoder layer, in order."""
    modules = []
    for layer in decoder(model).layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "layer_idx"):
            raise TokenomyError(
                f"unsupported attention layer {type(attn).__name__} in {type(model).__name__}: "
                "expected a self_attn module with q_proj and layer_idx"
            )
        modules.append(attn)
    return modules


def context_length(model: nn.Module) -> int | None:
    """The most positions the (language) model was trained on, or None where the config does not say."""
    return getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None)


def full_attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of the layers that attend over the whole context, in order. Sliding-window and
    chunked layers (Gemma-3's local ones, Mistral's) keep a bounded cache of their own (HF's rule, read from
    the config the same way), so KV methods leave them alone and spread their budgets over the others."""
    config = model.config.get_text_config(decoder=True)
    modules = attention_modules(model)
    types = getattr(config, "layer_types", None)
    if types is None:
        windowed = getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
        types = ["sliding_attention" if windowed is not None else "full_attention"] * len(modules)
    return [m for m in modules if types[m.layer_idx] not in ("sliding_attention", "chunked_attention")]


def key_padding(mask: Tensor | None, n: int) -> Tensor | None:
    """Which of the ``n`` prefill tokens are real, read off HF's 4-D prefill mask (None: all real)."""
    if mask is None:
        return None
    last_row = mask[:, 0, -1, :n]  # the last query sees every real token (left padding)
    real = last_row if last_row.dtype == torch.bool else last_row == 0
    return None if bool(real.all()) else real


def softmax_scale(module: nn.Module) -> float:
    """The scale the attention applies to q.k (Gemma uses its own query_pre_attn_scalar)."""
    return float(getattr(module, "scaling", module.head_dim**-0.5))


def rotated_queries(module: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor]) -> Tensor:
    """Queries ``(b, h, w, d)`` exactly as ``module`` forms them (projection, optional q-norm, RoPE)."""
    b, w, _ = hidden_states.shape
    q = module.q_proj(hidden_states).view(b, w, -1, module.head_dim)
    q_norm = getattr(module, "q_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    q = q.transpose(1, 2)
    modeling = sys.modules[type(module).__module__]
    rope = getattr(modeling, "apply_rotary_pos_emb", None)
    if rope is None:
        raise TokenomyError(f"{type(module).__name__} has no apply_rotary_pos_emb in {modeling.__name__}")
    cos, sin = position_embeddings
    q, _ = rope(q, q, cos, sin)
    return q
