"""Peer libraries run side by side with tokenomy in the same process, on the same model and samples.

kvpress (NVIDIA, ``pip install "tokenomy[compare]"``): for each tokenomy method with a matching press, the
press runs with kvpress's own defaults at the same kept fraction (``compression_ratio = 1 - keep``),
through kvpress's own API (``with press(model): model(...)``), prefilling the same token ids; tokenomy's
greedy loop then decodes for both, with explicit positions as kvpress's pipeline does.

quanto (transformers' own ``QuantizedCache``, KIVI-like, with the optimum-quanto backend): the whole cache at
4 and 2 bits with transformers' defaults (groups of 64 along the channel axis, the last 128 tokens in full
precision until they are quantized together); it never evicts, so its rows are at keep 1.0.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tokenomy._validation import TokenomyError
from tokenomy.adapters.lm import attention_modules
from tokenomy.adapters.caches import cache_bytes

# tokenomy method -> kvpress press factory (compression ratio -> press)
_KVPRESS: dict[str, Callable[[object, float], object]] = {
    "streamingllm": lambda kp, r: kp.StreamingLLMPress(compression_ratio=r),
    "snapkv": lambda kp, r: kp.SnapKVPress(compression_ratio=r),
    "tova": lambda kp, r: kp.TOVAPress(compression_ratio=r),
    "knorm": lambda kp, r: kp.KnormPress(compression_ratio=r),
    "keydiff": lambda kp, r: kp.KeyDiffPress(compression_ratio=r),
    "h2o": lambda kp, r: kp.ObservedAttentionPress(compression_ratio=r),
    "pyramidkv": lambda kp, r: kp.PyramidKVPress(compression_ratio=r),
    "adakv": lambda kp, r: kp.AdaKVPress(kp.SnapKVPress(compression_ratio=r)),
    "random": lambda kp, r: kp.RandomPress(compression_ratio=r, seed=0),
    "kvzip": lambda kp, r: kp.KVzipPress(compression_ratio=r),  # its default: one budget across layers, as ours
}
_NEEDS_EAGER = {"h2o"}  # kvpress reads H2O's scores from materialised attention weights


def kvpress_matches(methods: list[str]) -> list[str]:
    """The methods among ``methods`` that kvpress has a press for."""
    return [m for m in methods if m in _KVPRESS]


def import_kvpress():
    try:
        import kvpress
    except ImportError as err:
        raise TokenomyError(
            'the kvpress comparison needs the optional extra: pip install "tokenomy[compare]"'
        ) from err
    return kvpress


QUANTO_BITS = (4, 2)  # the widths transformers' quanto backend offers


def import_quanto() -> None:
    """Fail now, not mid-benchmark, when transformers' QuantizedCache could not import its backend."""
    import importlib.util

    try:
        found = importlib.util.find_spec("optimum.quanto") is not None
    except ModuleNotFoundError:  # no optimum at all
        found = False
    if not found:
        raise TokenomyError(
            'the quanto comparison (transformers\' QuantizedCache) needs the optional extra: pip install "tokenomy[compare]"'
        )


@dataclass
class PeerRun:
    cache: object
    logits: torch.Tensor
    prefill_seconds: float
    kept_entries: int
    bytes_kept: int


@contextlib.contextmanager
def _attention(model, implementation: str):
    previous = model.config._attn_implementation
    if previous == implementation:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


@torch.no_grad()
def kvpress_prefill(kvpress, model, method: str, keep: float, ids: torch.Tensor) -> PeerRun:
    """Prefill ``ids`` under kvpress's matching press; return its compressed cache and last logits."""
    from transformers import DynamicCache

    press = _KVPRESS[method](kvpress, 1.0 - keep)
    cache = DynamicCache()
    modules = attention_modules(model)
    implementation = "eager" if method in _NEEDS_EAGER else model.config._attn_implementation
    with _attention(model, implementation):
        start = time.perf_counter()
        with press(model):
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        seconds = time.perf_counter() - start
    kept = bytes_kept = 0
    for module, layer in zip(modules, cache.layers):
        b, h, n, _ = layer.keys.shape
        masked = getattr(module, "masked_key_indices", None)  # AdaKV masks instead of evicting
        kept += b * h * n - (0 if masked is None else len(masked[0]))
        bytes_kept += (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
    return PeerRun(cache, logits, seconds, kept, bytes_kept)


def kvpress_cleanup(model) -> None:
    """Forget AdaKV's per-module masks so they cannot leak into the next run."""
    for module in attention_modules(model):
        if getattr(module, "masked_key_indices", None) is not None:
            module.masked_key_indices = None


@torch.no_grad()
def quantized_cache_prefill(model, bits: int, ids: torch.Tensor) -> PeerRun:
    """Prefill ``ids`` into transformers' ``QuantizedCache`` (quanto backend, ``bits`` wide, its defaults
    otherwise); return the cache and last logits. Every entry is kept, quantized."""
    from transformers import QuantizedCache

    cache = QuantizedCache("quanto", model.config, nbits=bits)
    start = time.perf_counter()
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
    seconds = time.perf_counter() - start
    return PeerRun(cache, logits, seconds, ids.shape[0] * entries(model, ids.shape[1]), cache_bytes(cache))


def entries(model, tokens: int) -> int:
    """KV entries (one key and value vector per layer, KV head and token) a model's cache holds for ``tokens``."""
    config = model.config.get_text_config(decoder=True)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers * heads * tokens
