"""Cheap copies of HF caches, and what they hold."""

from __future__ import annotations


def copy_cache(cache):
    """A new DynamicCache sharing ``cache``'s tensors: HF's dynamic (and sliding-window) layers never write
    into a tensor in place — an update concatenates into a new one — and tokenomy's compressed layers write
    only into room they made themselves (a copy makes its own), so two copies can grow apart without copying
    what they share (a deep copy costs a memory pass)."""
    from transformers import DynamicCache

    fresh = DynamicCache()
    for layer in cache.layers:
        clone = type(layer).__new__(type(layer))
        clone.__dict__.update(layer.__dict__)
        fresh.layers.append(clone)
    return fresh


def cache_bytes(cache, peak: bool = False) -> int:
    """Bytes of keys + values a cache's layers store (``peak``: the most each held at once): what compressed
    layers really hold (their layout's padding and quantized rows included), HF's layers' tensors otherwise."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "resident_bytes"):
            total += layer.resident_bytes(peak)
            continue
        for quantized in (getattr(layer, "_quantized_keys", None), getattr(layer, "_quantized_values", None)):
            if quantized is not None:  # transformers' QuantizedLayer (quanto): packed codes, scales, shifts
                total += sum(_tensor_bytes(t) for t in (quantized._data, quantized._scale, quantized._shift))
        if getattr(layer, "keys", None) is not None:  # a QuantizedLayer's keys: its full-precision recent tokens
            total += (layer.keys.numel() + layer.values.numel()) * layer.keys.element_size()
    return total


def _tensor_bytes(tensor) -> int:
    """Bytes a tensor stores; quanto's packed codes keep them in an inner ``_data`` tensor."""
    import torch

    inner = getattr(tensor, "_data", None)
    return _tensor_bytes(inner) if isinstance(inner, torch.Tensor) and inner is not tensor else \
        tensor.numel() * tensor.element_size()
