"""Model-family specifics for decoder-only transformers: where the attention layers are and how their
queries are formed. Everything else in tokenomy reads models only through these functions.

Supported: HF causal LMs whose attention modules expose ``q_proj``/``k_proj`` (+ optional ``q_norm``/``k_norm``),
``head_dim``, ``layer_idx`` and whose modeling file defines ``apply_rotary_pos_emb`` or, for M-RoPE (Qwen2-VL,
Qwen2.5-VL), ``apply_multimodal_rotary_pos_emb`` — Llama, Mistral, Qwen2, Qwen3, Gemma2/3 text models and the
language models inside the HF VLMs built on them. Rotary tables ``(cos, sin)`` carry the token axis second to
last, whatever comes before it (``(b, n, d)``, or ``(3, b, n, d)`` for M-RoPE).
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


def final_norm(model: nn.Module) -> nn.Module:
    """The norm the decoder applies after its last layer."""
    norm = getattr(decoder(model), "norm", None)
    if not isinstance(norm, nn.Module):
        raise TokenomyError(f"cannot find the final norm of {type(decoder(model)).__name__} (expected `.norm`)")
    return norm


def rope_slice(rope: tuple[Tensor, Tensor], index) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` restricted to the tokens ``index`` selects along the token axis (second to last)."""
    return tuple(t[..., index, :] for t in rope)


def _rotate(module: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """``x`` ``(b, h, w, d)`` rotated as ``module``'s modeling file rotates its queries and keys."""
    modeling = sys.modules[type(module).__module__]
    cos, sin = rope
    multimodal = getattr(modeling, "apply_multimodal_rotary_pos_emb", None)
    if multimodal is not None and cos.ndim == 4:
        section = module.config.rope_parameters["mrope_section"]
        return multimodal(x, x, cos, sin, section)[0]
    rope_fn = getattr(modeling, "apply_rotary_pos_emb", None)
    if rope_fn is None:
        raise TokenomyError(f"{type(module).__name__} has no apply_rotary_pos_emb in {modeling.__name__}")
    return rope_fn(x, x, cos, sin)[0]


def _project(module: nn.Module, hidden_states: Tensor, which: str) -> Tensor:
    b, w, _ = hidden_states.shape
    x = getattr(module, f"{which}_proj")(hidden_states).view(b, w, -1, module.head_dim)
    norm = getattr(module, f"{which}_norm", None)
    return (x if norm is None else norm(x)).transpose(1, 2)


def rotated_queries(module: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor]) -> Tensor:
    """Queries ``(b, h, w, d)`` exactly as ``module`` forms them (projection, optional q-norm, RoPE)."""
    return _rotate(module, _project(module, hidden_states, "q"), position_embeddings)


def rotated_keys(module: nn.Module, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor]) -> Tensor:
    """Keys ``(b, h_kv, w, d)`` exactly as ``module`` forms them (projection, optional k-norm, RoPE)."""
    return _rotate(module, _project(module, hidden_states, "k"), position_embeddings)


class _StopForward(Exception):
    """Raised after the last layer `attention_from_last` reads: the rest of the forward is not needed."""


@torch.no_grad()
def attention_from_last(model: nn.Module, ids: Tensor, asking: int, layers: int) -> Tensor:
    """Attention ``(layers, heads, n)`` that the last ``asking`` of ``ids`` ``(n,)`` pay each token (mean over
    them, causal softmax, query heads) in the first ``layers`` decoder layers, from the queries and keys the
    model itself forms; the forward stops after those layers (what a short "skim" of a prompt costs)."""
    modules = attention_modules(model)[:layers]
    rows: list[Tensor] = []

    def capture(module, args, kwargs):
        hidden, rope = kwargs["hidden_states"], kwargs["position_embeddings"]
        q = rotated_queries(module, hidden[:, -asking:], rope_slice(rope, slice(-asking, None))).float()
        k = rotated_keys(module, hidden, rope).float()
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        n = k.shape[2]
        future = torch.arange(n, device=k.device)[None, :] > torch.arange(n - asking, n, device=k.device)[:, None]
        logits = ((q @ k.transpose(-1, -2)) * softmax_scale(module)).masked_fill(future, -torch.inf)
        rows.append(torch.softmax(logits, dim=-1)[0].mean(dim=1))
        if len(rows) == len(modules):
            raise _StopForward

    handles = [m.register_forward_pre_hook(capture, with_kwargs=True) for m in modules]
    try:
        model(input_ids=ids.unsqueeze(0).to(model.device), use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack(rows).cpu()
