"""Policies: wrappers that change *when* a KV method acts, composed around any method that evicts once.

A `KVCompression` scores, budgets and evicts once, after the prefill. A policy wraps it (or another policy, as
kvpress wraps presses: ``DecodingPress(press)``) and overrides only the part it changes; every other attribute
is the wrapped method's:

* `EvictWhileDecoding(method, every)`: also cuts each layer back to its post-prefill budget every ``every``
  tokens added after the prefill, as StreamingLLM, H2O and TOVA run during generation, so a long output (a
  reasoning trace) decodes in bounded memory.
* `SelectPerStep(method, reuse_similarity)`: evicts nothing; each forward after the prefill attends only to
  the entries the method would keep for that forward's queries (TokenSelect).

What a wrapped method must be able to do is read from what it declares (``replays``, ``heads``,
``evict_every``, ``selects_per_step``), and a wrapper that cannot compose with it says why when built.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError, check_fraction, check_int
from tokenomy.budget import HeadAdaptive
from tokenomy.score.base import LayerObservation, per_query_head
from tokenomy.sites.kv_layers import CompressedLayer, PrunedLayer
from tokenomy.sites.kv_observation import observe_step


class KVPolicy:
    """Base of the policies: the wrapped method is ``inner``; what a policy does not override is inner's."""

    inner: Any
    head_adaptable = False  # its budget is the wrapped method's, spent as the policy says

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "inner":  # copy/pickle look these up before the fields exist
            raise AttributeError(name)
        return getattr(self.inner, name)

    def apply(self, model):
        """Patch ``model`` for the duration of a ``with`` block (see `tokenomy.apply`)."""
        from tokenomy.sites.kv_session import KVSession

        return KVSession(model, self)

    def stored_in(self, bits: int) -> "KVPolicy":
        """The same policy around the wrapped method storing its kept entries in ``bits``."""
        return dataclasses.replace(self, inner=self.inner.stored_in(bits))

    def compress_layers(self, cache, observations: dict[int, LayerObservation], stats, packed: bool = False) -> None:
        """Compress the layers of one prefill, each by this policy's `compress_layer`."""
        for idx, obs in observations.items():
            self.compress_layer(cache, idx, obs, stats, packed=packed)

    def _refuse(self, cannot: str, because: str) -> None:
        raise TokenomyError(f"{type(self).__name__} cannot wrap a method that {cannot}: {because}")


@dataclass
class EvictWhileDecoding(KVPolicy):
    """``inner`` evicts after the prefill, then again whenever ``every`` tokens have arrived since its last
    eviction: each layer goes back to its post-prefill budget, scored by the queries of the forward that brought
    the last of them. A score summed over every query so far (H2O's accumulated attention) keeps each entry's
    received attention up to date: the forwards since the last eviction add their share in one batched pass just
    before the next. Decoding one token per forward, a layer never holds more than budget + ``every`` entries."""

    inner: Any
    every: int

    def __post_init__(self):
        check_int("evict_every", self.every, minimum=1)
        if self.inner.replays:
            self._refuse("replays the context (KVzip)", "it compresses once, after the prefill")
        if self.inner.selects_per_step:
            self._refuse("selects per step", "it keeps every entry, so there is nothing to evict")
        if isinstance(self.inner.heads, HeadAdaptive):
            self._refuse("uses head-adaptive budgets", "its heads keep ragged counts, not one budget to return to")
        if self.inner.evict_every:
            self._refuse("already evicts while decoding", f"it does every {self.inner.evict_every} tokens")

    @property
    def evict_every(self) -> int:
        """Tokens added after the prefill between two evictions."""
        return self.every

    @property
    def accumulates(self) -> bool:
        """The score sums every query's attention (H2O, VATP): the site keeps each entry's received attention."""
        return self.inner.sums_received

    @property
    def packable(self) -> bool:
        """Packed unless it keeps a received-attention history (read in the rectangular layout)."""
        return self.inner.packable and not self.accumulates

    def compress_layer(self, cache, layer_idx: int, obs: LayerObservation, stats,
                       chosen: tuple[Tensor, Tensor | None] | None = None, packed: bool = False) -> CompressedLayer:
        """The wrapped method's compression, plus the attention each kept entry has received when it accumulates."""
        layer = self.inner.compress_layer(cache, layer_idx, obs, stats, chosen, packed)
        if self.accumulates:
            start = time.perf_counter()
            received = obs.received()  # (b, heads, n), already computed by the score
            layer.history = received.gather(-1, per_query_head(layer.positions, received.shape[1]))
            stats.scoring_seconds += time.perf_counter() - start
        return layer

    def before_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats) -> None:
        """Nothing: the forward reads the cache as the last eviction left it."""

    def after_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats) -> None:
        """After a forward that appended tokens: fold its queries into the history, and evict once due."""
        due = layer.seen - layer.evicted_at >= self.every
        if layer.history is None and not due:
            return
        cos, sin = rope
        if layer.history is not None:  # brought up to date once per eviction, for all the forwards since the
            layer.unscored = [*layer.unscored, (hidden, cos, sin)]  # last one (one batched pass); a new list,
            # so a `copy_cache` copy never sees another copy's forwards
            if not due:
                return
            hidden, cos, sin = (torch.cat(parts, dim=-2) for parts in zip(*layer.unscored))  # the token axis
            layer.unscored = []
        obs = observe_step(module, layer, hidden, (cos, sin), *where, appended=True)
        start = time.perf_counter()
        if layer.history is not None:  # what those forwards' queries gave every stored entry
            layer.history = layer.history + obs.received()
            obs.history = layer.history
        indices, in_use = self.inner.select(obs, per_head=layer.budget)
        layer.keep_only(indices, in_use)
        stats.scoring_seconds += time.perf_counter() - start
        stats.evictions += 1


@dataclass
class SelectPerStep(KVPolicy):
    """Keeps every entry; before each forward after the prefill, ``inner`` selects (by its score, budget and
    protections, for that forward's queries) the entries the forward attends to. Memory is not saved; attention
    reads ``keep`` of the cache.

    reuse_similarity: a layer keeps its last scored picks (refreshing the recent window) while the coming
    forward's query fingerprint — its queries averaged over tokens, all heads — has at least this cosine
    similarity to the one that chose them (TokenSelect's Selection Cache); None selects afresh at every forward.
    Batches with padding always select afresh.
    """

    inner: Any
    reuse_similarity: float | None = None
    selects_per_step = True
    sums_in_prefill = False  # the prefill's attention is never scored: nothing is evicted after it
    packable = False  # every entry stays, in the rectangular layout each step selects from

    def __post_init__(self):
        if self.inner.replays:
            self._refuse("replays the context (KVzip)", "the replay scores the prefill once, not each forward")
        if self.inner.selects_per_step or self.inner.evict_every:
            self._refuse("already acts while decoding", "wrap a method that evicts once, after the prefill")
        if isinstance(self.inner.heads, HeadAdaptive):
            self._refuse("uses head-adaptive budgets", "they allocate an eviction after the prefill")
        if self.reuse_similarity is not None:
            self.reuse_similarity = check_fraction("reuse_similarity", self.reuse_similarity)

    def compress_layer(self, cache, layer_idx: int, obs: LayerObservation, stats,
                       chosen: tuple[Tensor, Tensor | None] | None = None, packed: bool = False) -> CompressedLayer:
        """Store every entry, in a layer later forwards select from."""
        b, h_kv, n = obs.keys.shape[:3]
        indices = torch.arange(n, device=obs.keys.device).expand(b, h_kv, n)
        in_use = None if obs.valid is None else obs.valid.unsqueeze(1).expand(b, h_kv, n)
        return self.inner.compress_layer(cache, layer_idx, obs, stats, (indices, in_use), packed=False)

    def before_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats) -> None:
        """Pick the stored entries the coming forward attends to (or reuse the last pick)."""
        start = time.perf_counter()
        self.choose(layer, observe_step(module, layer, hidden, rope, *where), stats)
        stats.scoring_seconds += time.perf_counter() - start

    def after_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats) -> None:
        """Nothing: every entry stays."""

    def choose(self, layer: PrunedLayer, obs: LayerObservation, stats) -> None:
        """Set ``layer``'s selection for the forward ``obs`` describes (its queries over the stored entries)."""
        inner = self.inner
        per_head = inner.layer_counts(obs)
        n_valid = obs.valid.sum(-1).cpu() if obs.valid is not None else torch.full_like(per_head, layer.stored)
        if bool((per_head >= n_valid).all()):
            return
        stats.selections += 1
        fingerprint = None
        if self.reuse_similarity is not None and obs.valid is None:  # no padding: rows share one count
            fingerprint = obs.queries().mean(dim=2).flatten(1)  # (b, h * d)
            if layer.chosen is not None:
                last, picks = layer.chosen
                if bool((F.cosine_similarity(fingerprint, last, dim=-1) >= self.reuse_similarity).all()):
                    n, latest = layer.stored, int(per_head[0]) - picks.shape[-1]  # topped up to this budget
                    newest = torch.arange(n - latest, n, device=picks.device).expand(*picks.shape[:2], -1)
                    layer.selection = torch.cat([picks, newest], dim=-1)
                    stats.selections_reused += 1
                    return
        layer.selection, layer.selection_valid = inner.select(obs, per_head)
        if fingerprint is not None:  # what the score picked, without the recent window (it moves on)
            scored = max(layer.selection.shape[-1] - int(inner.recent_counts(per_head)[0]), 0)
            layer.chosen = (fingerprint, layer.selection[..., :scored])
