"""What the KV site shows a method's score of one attention layer: its cache and the queries that see it."""

from __future__ import annotations

from torch import Tensor

from tokenomy.adapters.lm import key_padding, rope_slice, rotated_queries, softmax_scale
from tokenomy.score.base import LayerObservation
from tokenomy.sites.kv_layers import PrunedLayer


def observe_prefill(module, layer, hidden: Tensor, rope: tuple[Tensor, Tensor], mask, rank: int, count: int):
    """A layer's prefill cache observed by the prompt's queries; the layer is number ``rank`` of the
    ``count`` layers the site compresses."""
    keys, values = layer.keys, layer.values
    n = keys.shape[2]

    def queries(w: int) -> Tensor:
        return rotated_queries(module, hidden[:, -w:], rope_slice(rope, slice(-w, None)))

    return LayerObservation(
        keys=keys,
        values=values,
        valid=key_padding(mask, n),
        layer_idx=rank,
        num_layers=count,
        query_offset=0,
        num_queries=hidden.shape[1],
        scale=softmax_scale(module),
        query_fn=queries,
    )


def observe_step(module, layer: PrunedLayer, hidden: Tensor, rope: tuple[Tensor, Tensor], rank: int, count: int,
                  appended: bool = False):
    """The stored entries, observed by the queries of the coming forward (which see all of them), or of
    the forward that just ``appended`` its tokens (each sees the entries up to itself)."""
    keys, values, _, valid = layer.padded()
    stored = keys.shape[2]
    return LayerObservation(
        keys=keys,
        values=values,
        valid=None if valid is None else valid[:, 0],
        layer_idx=rank,
        num_layers=count,
        query_offset=stored - hidden.shape[1] if appended else stored,
        num_queries=hidden.shape[1],
        scale=softmax_scale(module),
        query_fn=lambda w: rotated_queries(module, hidden[:, -w:], rope_slice(rope, slice(-w, None))),
    )
