"""What a scorer sees of one attention layer, and the scorer protocol.

Scorers are model-agnostic: the site fills a `LayerObservation` from whatever model family it patched
(queries are computed lazily by the model adapter), and a scorer maps it to one score per cached entry
and KV head. Higher scores mean "keep".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor


@dataclass
class LayerObservation:
    """One attention layer's cache and the queries that produced it.

    keys, values: ``(b, h_kv, n, d)`` cached entries (keys already rotated by RoPE).
    valid: ``(b, n)`` False at padding, or None when there is none.
    query_offset: key index of the first observable query; query ``i`` sees keys ``<= query_offset + i``.
        After a prefill the queries are the prompt's own (``query_offset = n - w``); while decoding they
        are new tokens that see every cached key (``query_offset >= n``).
    num_queries: how many queries can be observed (the last ones of the forward pass).
    scale: the attention's softmax scale.
    segments: ``(b, n)`` span ids (e.g. sentences) for span-level scoring, or None.
    history: ``(b, h, n)`` attention each entry has received from every query since the prompt (its own
        included) — kept by the KV site while decoding, so accumulating scores (H2O) keep accumulating — or None.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor | None
    layer_idx: int
    num_layers: int
    query_offset: int
    num_queries: int
    scale: float
    query_fn: Callable[[int], Tensor] = field(repr=False)
    segments: Tensor | None = None
    history: Tensor | None = None
    _queries: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _received: Tensor | None = field(default=None, repr=False)

    @property
    def num_heads(self) -> int:
        return self.queries(1).shape[1]

    def queries(self, last: int | None = None) -> Tensor:
        """Rotated queries ``(b, h, w, d)`` of the last ``w = min(last, num_queries)`` observable tokens."""
        w = self.num_queries if last is None else min(last, self.num_queries)
        if w not in self._queries:
            self._queries[w] = self.query_fn(w)
        return self._queries[w]

    def received(self) -> Tensor:
        """Attention ``(b, h, n)`` each cached entry receives, summed over every observable query
        (computed once per observation, a chunk of queries at a time without keeping the whole matrix:
        the scorer and the site's decoding history both read it)."""
        if self._received is None:
            self._received = sum(probs.sum(dim=2) for probs in self._attention_chunks(None))
        return self._received

    def attention(self, last: int | None = None, chunk: int = 512) -> Tensor:
        """Softmax attention ``(b, h, w, n)`` of the last ``w`` queries over the cached keys.

        Causal and padding masks are applied; rows are computed ``chunk`` queries at a time.
        """
        return torch.cat(list(self._attention_chunks(last, chunk)), dim=2)

    def _attention_chunks(self, last: int | None, chunk: int = 512) -> Iterator[Tensor]:
        q = self.queries(last)
        b, h, w, _ = q.shape
        n = self.keys.shape[2]
        groups = h // self.keys.shape[1]
        keys = self.keys.repeat_interleave(groups, dim=1)
        first = self.query_offset + self.num_queries - w
        key_pos = torch.arange(n, device=q.device)
        for start in range(0, w, chunk):
            qc = q[:, :, start : start + chunk]
            logits = torch.matmul(qc.float(), keys.float().transpose(-1, -2)) * self.scale
            q_pos = first + start + torch.arange(qc.shape[2], device=q.device)
            allowed = key_pos.view(1, -1) <= q_pos.view(-1, 1)  # (wc, n)
            allowed = allowed.view(1, 1, *allowed.shape)
            if self.valid is not None:
                allowed = allowed & self.valid.view(b, 1, 1, n)
            logits = logits.masked_fill(~allowed, -torch.inf)
            yield torch.softmax(logits, dim=-1).nan_to_num(0.0)


def per_kv_head(x: Tensor, num_kv_heads: int) -> Tensor:
    """Average a per-query-head tensor ``(b, h, ...)`` over each GQA group -> ``(b, h_kv, ...)``."""
    b, h = x.shape[:2]
    return x.view(b, num_kv_heads, h // num_kv_heads, *x.shape[2:]).mean(dim=2)


class Scorer(Protocol):
    """Maps a layer observation to scores ``(b, h_kv, n)``; higher means more worth keeping."""

    def __call__(self, obs: LayerObservation) -> Tensor: ...
