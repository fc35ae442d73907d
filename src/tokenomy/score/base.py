"""What a scorer sees of one attention layer, and the scorer protocol.

Scorers are model-agnostic: the site fills a `LayerObservation` from whatever model family it patched
(queries are computed lazily by the model adapter), and a scorer maps it to one score per cached entry
and KV head. Higher scores mean "keep".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Replay:
    """One layer's view of a replay: a chunk of the context fed again right after the whole context, over its
    own copy of the cache.

    queries: ``(b, h, m, d)`` rotated queries of the ``m`` replayed tokens; keys: ``(b, h_kv, m, d)`` the
    replay's own keys (replayed token ``i`` sees the whole context and the chunk's replayed keys ``<= i``);
    valid: ``(b, m)`` False at replayed padding, or None; log_normalizers: ``(b, h, m)`` the log of each
    replayed query's softmax denominator when the replay's own attention handed it over (PyTorch's fused CPU
    kernel computes it anyway), else None and the scorer computes it.
    """

    queries: Tensor
    keys: Tensor
    valid: Tensor | None = None
    log_normalizers: Tensor | None = None


@dataclass
class LayerObservation:
    """One attention layer's cache and the queries that produced it.

    keys, values: ``(b, h_kv, n, d)`` cached entries (keys already rotated by RoPE).
    valid: ``(b, n)`` False at padding, or None when there is none.
    layer_idx, num_layers: the layer's rank among the layers being compressed, and their number (a hybrid
        model's sliding-window layers are not), which layer budgets are spread over.
    query_offset: key index of the first observable query; query ``i`` sees keys ``<= query_offset + i``.
        After a prefill the queries are the prompt's own (``query_offset = n - w``); while decoding they
        are new tokens that see every cached key (``query_offset >= n``).
    num_queries: how many queries can be observed (the last ones of the forward pass).
    scale: the attention's softmax scale.
    history: ``(b, h, n)`` attention each entry has received from every query since the prompt (its own
        included) — kept by the KV site while decoding, so accumulating scores (H2O) keep accumulating — or None.
    replay: the context run again after itself over this cache (KVzip's reconstruction), one `Replay` per
        chunk of the context fed at a time, when the method asked the site for one, else None.
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
    history: Tensor | None = None
    replay: list[Replay] | None = None
    _queries: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _received: Tensor | None = field(default=None, repr=False)

    @property
    def num_heads(self) -> int:
        return self.queries(1).shape[1]

    @torch.no_grad()
    def queries(self, last: int | None = None) -> Tensor:
        """Rotated queries ``(b, h, w, d)`` of the last ``w = min(last, num_queries)`` observable tokens."""
        w = self.num_queries if last is None else min(last, self.num_queries)
        if w not in self._queries:
            self._queries[w] = self.query_fn(w)
        return self._queries[w]

    def received(self) -> Tensor:
        """Attention ``(b, h, n)`` each cached entry receives, summed over every observable query
        (computed once per observation, a block of queries at a time without keeping the whole matrix:
        the scorer and the site's decoding history both read it)."""
        if self._received is None:
            total = None
            for probs in self._attention_blocks(None, chunk=128):
                if total is None:
                    total = probs.new_zeros(*probs.shape[:2], self.keys.shape[2])
                total[..., : probs.shape[-1]] += probs.sum(dim=2)
            self._received = total
        return self._received

    def attention(self, last: int | None = None, chunk: int = 512) -> Tensor:
        """Softmax attention ``(b, h, w, n)`` of the last ``w`` queries over the cached keys.

        Causal and padding masks are applied; rows are computed ``chunk`` queries at a time.
        """
        n = self.keys.shape[2]
        blocks = [F.pad(p, (0, n - p.shape[-1])) for p in self._attention_blocks(last, chunk)]
        return torch.cat(blocks, dim=2)

    @torch.no_grad()
    def _attention_blocks(self, last: int | None, chunk: int) -> Iterator[Tensor]:
        """`causal_attention_blocks` of the last ``last`` observed queries, as ``(b, h, wc, limit)``."""
        q = self.queries(last)
        first = self.query_offset + self.num_queries - q.shape[2]
        for _, _, probs in causal_attention_blocks(q, self.keys, self.scale, first, self.valid, chunk):
            yield probs


@torch.no_grad()
def causal_logit_blocks(queries: Tensor, keys: Tensor, scale: float, first: int, valid: Tensor | None = None,
                        chunk: int = 128) -> Iterator[tuple[int, int, Tensor]]:
    """Scaled attention logits of ``queries`` ``(b, h, w, d)`` over ``keys`` ``(b, h_kv, n, d)``, ``chunk``
    queries at a time: yields ``(start, stop, logits)`` with ``logits`` ``(b, h, stop - start, limit)`` over the
    keys ``[:limit]`` the block's last query can see. Query ``i`` sees keys ``<= first + i`` (later ones are
    -inf) and none where ``valid`` ``(b, n)`` is False (-inf). Every block is written into one buffer (a
    fresh large tensor per block costs page faults that can exceed the arithmetic), so a block is valid only
    until the next one is drawn."""
    b, h, w, d = queries.shape
    n = keys.shape[2]
    # GQA without a broadcasting matmul (it would copy the keys at every block). One block (decoding, an
    # observation window): each group's queries are the rows of one product with their KV head's keys, so the
    # keys are never copied. Several blocks (a prefill): the keys are repeated per query head once, since nine
    # products spread over threads more evenly than three (10-15% faster blocks on a 2-core CPU).
    keys = keys.float() if w <= chunk else per_query_head(keys.float(), h)
    keys, products = keys.transpose(-1, -2), keys.shape[1]  # (b, products, d, n)
    queries = queries.float() * scale
    buffer = torch.empty(b * h * min(chunk, w) * n, device=queries.device)
    future = torch.ones(min(chunk, w), min(chunk, w), dtype=torch.bool, device=queries.device).triu(1)
    for start in range(0, w, chunk):
        stop = min(start + chunk, w)
        limit = min(n, first + stop)
        logits = buffer[: b * h * (stop - start) * limit].view(b, products, -1, limit)
        torch.matmul(queries[:, :, start:stop].reshape(b, products, -1, d), keys[..., :limit], out=logits)
        logits = logits.view(b, h, stop - start, limit)
        diagonal = first + start  # the block's first query sees keys up to here, each next one a key more
        if diagonal + 1 < limit:
            logits[..., diagonal:].masked_fill_(future[: stop - start, : limit - diagonal], -torch.inf)
        if valid is not None:
            logits.masked_fill_(~valid[:, None, None, :limit], -torch.inf)
        yield start, stop, logits


@torch.no_grad()
def causal_attention_blocks(queries: Tensor, keys: Tensor, scale: float, first: int, valid: Tensor | None = None,
                            chunk: int = 128) -> Iterator[tuple[int, int, Tensor]]:
    """`causal_logit_blocks` as softmax probabilities, in the same buffer: a masked key gets exactly zero, and
    a query that sees no key gets zeros."""
    for start, stop, logits in causal_logit_blocks(queries, keys, scale, first, valid, chunk):
        # In place and in one fused kernel: a row (one query's logits) stays in cache from max to normalised
        # probabilities, where separate max/exp/sum/divide steps each stream the whole block through memory.
        probs = torch.ops.aten._softmax.out(logits, -1, False, out=logits)
        yield start, stop, probs.nan_to_num_(0.0) if valid is not None else probs


def attention_and_received(queries: Tensor, keys: Tensor, values: Tensor, scale: float,
                           valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A prefill's causal attention output ``(b, h, w, d)`` and the attention ``(b, h, n)`` each key received
    from all ``w`` queries, in one pass over `causal_attention_blocks` (the last query is the last key).
    The output is a view of a ``(b, w, h, d)`` tensor, the layout attention modules hand on."""
    b, h, w, d = queries.shape
    n = keys.shape[2]
    out = queries.new_empty(b, w, h, values.shape[-1], dtype=torch.float32)
    received = queries.new_zeros(b, h, n, dtype=torch.float32)
    values = per_query_head(values.float(), h)  # once, not copied by a broadcasting matmul at every block
    for start, stop, probs in causal_attention_blocks(queries, keys, scale, n - w, valid):
        out[:, start:stop] = torch.matmul(probs, values[..., : probs.shape[-1], :]).transpose(1, 2)
        received[..., : probs.shape[-1]] += probs.sum(dim=2)
    return out.transpose(1, 2).to(queries.dtype), received


def per_query_head(x: Tensor, num_heads: int) -> Tensor:
    """Repeat a per-KV-head tensor ``(b, h_kv, ...)`` for each query head of its GQA group -> ``(b, h, ...)``."""
    return x.repeat_interleave(num_heads // x.shape[1], dim=1)


def per_kv_head(x: Tensor, num_kv_heads: int) -> Tensor:
    """Average a per-query-head tensor ``(b, h, ...)`` over each GQA group -> ``(b, h_kv, ...)``."""
    b, h = x.shape[:2]
    return x.view(b, num_kv_heads, h // num_kv_heads, *x.shape[2:]).mean(dim=2)


class Scorer(Protocol):
    """Maps a layer observation to scores ``(b, h_kv, n)``; higher means more worth keeping."""

    def __call__(self, obs: LayerObservation) -> Tensor: ...
