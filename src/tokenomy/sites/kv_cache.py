"""The KV-cache site: evict (or select) cached keys/values of HF causal LMs, GQA included.

How it works, in pieces kept apart from the methods (this file holds the method, `KVCompression`: score ->
budget -> select, and what it does to one layer):

* A compressed layer (`tokenomy.sites.kv_layers`) replaces a `DynamicLayer` of HF's `DynamicCache`. It keeps
  the original position of every stored entry and reports the number of tokens *seen* as its length, so
  `generate()` builds positions and masks exactly as for the uncompressed model. On SDPA the model runs on
  the site's attention, and layers whose heads or rows keep different counts are stored packed (exactly the
  kept entries); otherwise they are rectangular, padded.
* A session (`tokenomy.sites.kv_session`) hooks every attention module. Its pre-hook maps HF's mask (over
  seen positions) onto the stored entries of a rectangular layer (`tokenomy.sites.kv_mask`) — per head, since
  heads may keep different tokens — or hands a packed layer to the attention, and arms the layer for the
  update. Its post-hook compresses the layer right after its prefill, from a `LayerObservation`
  (`tokenomy.sites.kv_observation`: cache + the queries of that prefill), by the method's
  score -> budget -> select.
* The benchmark records one prefill's observations (`tokenomy.sites.kv_recorder`) and lets each method
  compress a copy of the same cache, as the hooks would.

Compression happens on the first forward of a cache (the prefill). Later forwards (a question appended
after the context, decoding) only read the compressed cache, so the same session serves both settings:
the question inside the compressed prompt (query-aware) or after it (query-agnostic). Policies
(`tokenomy.sites.kv_policies`) wrap a method to act while decoding too: evict again every n tokens
(`EvictWhileDecoding`, the site option ``evict_every``), or keep everything and select per forward
(`SelectPerStep`, TokenSelect).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from tokenomy._validation import TokenomyError, check_choice, check_int
from tokenomy.budget import HeadAdaptive, Keep
from tokenomy.registry import site_options
from tokenomy.score.base import LayerObservation, Scorer
from tokenomy.select import prioritize, top_k
from tokenomy.sites.kv_layers import CompressedLayer, PackedLayer, PrunedLayer
from tokenomy.sites.kv_policies import EvictWhileDecoding
from tokenomy.sites.kv_quant import KVQuantizer

if TYPE_CHECKING:
    from tokenomy.sites.kv_session import KVSession, KVStats

SITE = "kv-cache"


def site_wide(method, evict_every: int = 0, bits: int = 16):
    """The options every KV method takes: ``bits`` (16, or 8, 4, 2: its kept entries stored quantized) and
    ``evict_every`` (> 0: wrapped in `EvictWhileDecoding`, so it evicts while decoding too)."""
    check_int("evict_every", evict_every)
    if bits != 16:
        method = method.stored_in(bits)
    return EvictWhileDecoding(method, evict_every) if evict_every else method


site_options(SITE, site_wide, evict_every=0, bits=16)


@dataclass
class KVCompression:
    """A KV-cache method: score every cached entry, budget how many survive, keep the top ones.

    score: a scorer (see `tokenomy.score`), higher = keep.
    budget: `Keep(keep)` (same fraction everywhere) or a layer schedule such as `Pyramid`.
    heads: "uniform", or a `HeadAdaptive` allocation of each layer's budget across its KV heads (or, with
        ``across_layers``, of the whole budget across every layer's heads, once the prefill has run).
    sinks: the first tokens always kept (attention sinks).
    recent: the last tokens always kept: an int, or a float = fraction of the layer's budget.
    bits: 16 stores the kept entries as the model computed them; 8, 4 or 2 stores them quantized as KIVI
        does (`tokenomy.sites.kv_quant`: keys per channel over groups of 32 tokens, values per token), tokens
        added while decoding too once 32 have arrived, so eviction and quantization multiply their savings.
    """

    score: Scorer
    budget: Keep = field(default_factory=Keep)
    heads: str | HeadAdaptive = "uniform"
    sinks: int = 0
    recent: int | float = 0
    bits: int = 16

    evict_every = 0  # what policies change (`tokenomy.sites.kv_policies`): this evicts once, after the prefill,
    selects_per_step = False  # and later forwards read what it kept

    def __post_init__(self):
        check_int("sinks", self.sinks)
        if self.bits != 16:
            KVQuantizer(self.bits)  # validates
        if isinstance(self.recent, float):
            if not 0.0 <= self.recent <= 1.0:
                raise TokenomyError(f"recent as a fraction of the budget must be in [0, 1], got {self.recent}")
        else:
            check_int("recent", self.recent)
        if not isinstance(self.heads, HeadAdaptive):
            check_choice("heads", self.heads, ["uniform"])
        if self.across_layers and type(self.budget) is not Keep:
            raise TokenomyError("a budget shared across layers is allocated by the scores; it cannot also follow "
                                f"a layer schedule ({type(self.budget).__name__})")

    @property
    def keep(self) -> float:
        return self.budget.keep

    @property
    def quantizer(self) -> KVQuantizer | None:
        """How kept entries are stored: quantized to ``bits`` (2, 4, 8), or as the model computed them (16)."""
        return None if self.bits == 16 else KVQuantizer(self.bits)

    @property
    def compresses(self) -> bool:
        """It changes the cache: evicts (keep < 1) or quantizes; keep = 1.0 at 16 bits leaves it untouched."""
        return self.keep < 1.0 or self.bits != 16

    @property
    def sums_in_prefill(self) -> bool:
        """Applied to a model on SDPA, it sums its scores inside the prefill's attention (`scoring_attention`)."""
        return self.compresses and self.sums_received

    @property
    def sums_received(self) -> bool:
        """The score needs the attention every prompt query pays every entry (H2O, VATP): the site then
        sums it inside the prefill's own attention where it can (see `scoring_attention`)."""
        return self._score_says("accumulates")

    @property
    def replays(self) -> bool:
        """The score reads a replay of the context (KVzip): after the prefill the site runs the context again
        over a copy of the cache, then compresses every layer at once."""
        return self._score_says("replays")

    @property
    def batch_dependent(self) -> bool:
        """A row's scores depend on the rest of its batch (random draws): a padded batch then keeps other entries
        than each of its rows compressed alone."""
        return self._score_says("batch_dependent")

    @property
    def packable(self) -> bool:
        """Its compressed layers may be stored packed (`PackedLayer`); a policy that reads the rectangular
        layout while decoding says otherwise."""
        return True

    @property
    def head_adaptable(self) -> bool:
        """Its layer budget can be shared out across heads (`tokenomy.recipes.kv.adakv`): its heads keep even
        budgets today, and no policy wraps it."""
        return self.heads == "uniform"

    @property
    def across_layers(self) -> bool:
        """Every layer's heads share one budget (`HeadAdaptive(across_layers=True)`)."""
        return isinstance(self.heads, HeadAdaptive) and self.heads.across_layers

    @property
    def waits_for_prefill(self) -> bool:
        """Compresses once the whole prefill has run, every layer at once: it replays the context, or shares
        its budget across layers."""
        return self.replays or self.across_layers

    @property
    def replay_chunk(self) -> int:
        """Context tokens its replay feeds per forward (the score's ``chunk``); 0: the whole context at once."""
        return getattr(self._score_with("replays"), "chunk", 0)

    def _score_says(self, flag: str) -> bool:
        """Whether the score, or a score it wraps (`Pooled`), sets ``flag``."""
        return self._score_with(flag) is not None

    def _score_with(self, flag: str):
        """The score, or the score it wraps (`Pooled`), that sets ``flag``; None if none does."""
        score = self.score
        while score is not None and not getattr(score, flag, False):
            score = getattr(score, "inner", None)
        return score

    def stored_in(self, bits: int) -> "KVCompression":
        """The same method, storing its kept entries in ``bits`` (16: as computed; 8, 4, 2: quantized)."""
        return dataclasses.replace(self, bits=bits)

    def apply(self, model: nn.Module) -> "KVSession":
        """Patch ``model`` for the duration of a ``with`` block (see `tokenomy.apply`)."""
        from tokenomy.sites.kv_session import KVSession

        return KVSession(model, self)

    # -- the recipe, shared by the hooks and the benchmark ------------------------------------------------

    def select(self, obs: LayerObservation, per_head: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Indices ``(b, h_kv, k)`` of the entries to keep (sorted) and the slots in use (or None);
        ``per_head`` ``(b,)`` overrides the budget's count (decoding keeps the post-prefill one)."""
        if per_head is None:
            per_head = self.layer_counts(obs)
        recent = self.recent_counts(per_head)
        priority = prioritize(self.score(obs), first=self.sinks, last=recent.to(obs.keys.device), valid=obs.valid)
        if isinstance(self.heads, HeadAdaptive):
            counts = self.heads.head_counts(priority, per_head)
        else:
            counts = per_head.view(-1, 1).expand(-1, obs.keys.shape[1])
        return top_k(priority, counts.to(obs.keys.device))

    def layer_counts(self, obs: LayerObservation) -> Tensor:
        """The budget's entries per head ``(b,)`` for this layer."""
        b, _, n = obs.keys.shape[:3]
        n_valid = obs.valid.sum(-1) if obs.valid is not None else torch.full((b,), n)
        return self.budget.layer_counts(n_valid.cpu(), obs.layer_idx, obs.num_layers)

    def recent_counts(self, per_head: Tensor) -> Tensor:
        """How many of the last entries are protected, per row ``(b,)``."""
        if isinstance(self.recent, float):
            return torch.floor(self.recent * per_head.double()).long()
        return torch.full_like(per_head, self.recent)

    def compress_layers(self, cache, observations: dict[int, LayerObservation], stats: KVStats,
                        packed: bool = False) -> None:
        """Compress the layers of one prefill (``observations`` by layer index), each as `compress_layer`
        does, except that a budget shared across layers is first allocated over all of them: every layer's
        scores side by side, as the heads of one layer, in one `HeadAdaptive` top-k."""
        if not self.across_layers:
            for idx, obs in observations.items():
                self.compress_layer(cache, idx, obs, stats, packed=packed)
            return
        start = time.perf_counter()
        first = next(iter(observations.values()))
        per_head = self.layer_counts(first)  # `Keep`: the same count in every layer, and the same real tokens
        scores = torch.cat([self.score(obs) for obs in observations.values()], dim=1)  # (b, layers * h_kv, n)
        last = self.recent_counts(per_head).to(scores.device)
        priority = prioritize(scores, first=self.sinks, last=last, valid=first.valid)
        counts = self.heads.head_counts(priority, per_head).to(scores.device)
        h_kv = first.keys.shape[1]
        picks = [top_k(priority[:, i * h_kv : (i + 1) * h_kv], counts[:, i * h_kv : (i + 1) * h_kv])
                 for i in range(len(observations))]
        stats.scoring_seconds += time.perf_counter() - start
        for (idx, obs), chosen in zip(observations.items(), picks):
            self.compress_layer(cache, idx, obs, stats, chosen, packed)

    def compress_layer(self, cache, layer_idx: int, obs: LayerObservation, stats: KVStats,
                       chosen: tuple[Tensor, Tensor | None] | None = None, packed: bool = False) -> CompressedLayer:
        """Replace layer ``layer_idx`` of ``cache`` by its compressed version, and return it; ``chosen``: the
        kept entries, when already selected. ``packed``: the model runs on the site's attention, so a layer
        whose rows or heads keep different counts is stored as a `PackedLayer` (exactly the kept entries)
        rather than padded to a rectangle."""
        start = time.perf_counter()
        b, h_kv, n = obs.keys.shape[:3]
        indices, in_use = chosen if chosen is not None else self.select(obs)
        gather = indices.unsqueeze(-1).expand(-1, -1, -1, obs.keys.shape[-1])
        layout = PackedLayer if packed and in_use is not None else PrunedLayer
        pruned = layout(obs.keys.gather(2, gather), obs.values.gather(2, gather), indices, in_use, n, self.quantizer)
        cache.layers[layer_idx] = pruned
        pruned.budget = torch.full((b,), indices.shape[-1]) if in_use is None else in_use[:, 0].sum(-1).cpu()
        stats.scoring_seconds += time.perf_counter() - start
        stats.layers_compressed += 1
        n_real = int(obs.valid.sum()) if obs.valid is not None else b * n
        stats.entries_seen += n_real * h_kv
        stats.entries_kept += pruned.kept_entries()
        stats.per_layer_kept.append(pruned.kept_entries())
        stats.bytes_kept += pruned.resident_bytes()
        return pruned

    def before_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats: KVStats) -> None:
        """A forward after the prefill is about to read ``layer``: nothing to do (policies may select here)."""

    def after_forward(self, module, layer: CompressedLayer, hidden: Tensor, rope, where, stats: KVStats) -> None:
        """A forward after the prefill has appended to ``layer``: nothing to do (policies may evict here)."""
