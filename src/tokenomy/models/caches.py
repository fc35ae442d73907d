"""Cheap copies of HF caches."""

from __future__ import annotations


def copy_cache(cache):
    """A new DynamicCache sharing ``cache``'s tensors: HF's dynamic (and sliding-window) layers and
    tokenomy's pruned layers never write into a tensor in place — an update concatenates into a new one —
    so two copies can grow apart without copying what they share (a deep copy costs a memory pass)."""
    from transformers import DynamicCache

    fresh = DynamicCache()
    for layer in cache.layers:
        clone = type(layer).__new__(type(layer))
        clone.__dict__.update(layer.__dict__)
        fresh.layers.append(clone)
    return fresh
