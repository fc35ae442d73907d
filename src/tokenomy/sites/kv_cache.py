"""The KV-cache site: evict (or select) cached keys/values of HF causal LMs, GQA included.

How it works, in three pieces kept apart from the methods:

* A compressed layer (`tokenomy.sites.kv_layers`) replaces a `DynamicLayer` of HF's `DynamicCache`. It keeps
  the original position of every stored entry and reports the number of tokens *seen* as its length, so
  `generate()` builds positions and masks exactly as for the uncompressed model. On SDPA the model runs on
  the site's attention, and layers whose heads or rows keep different counts are stored packed (exactly the
  kept entries); otherwise they are rectangular, padded.
* A forward pre-hook on every attention module maps HF's mask (over seen positions) onto the stored
  entries of a rectangular layer — per head, since heads may keep different tokens — or hands a packed layer
  to the attention, and arms the layer for the update.
* A forward post-hook on every attention module compresses the layer right after its prefill, from a
  `LayerObservation` (cache + the queries of that prefill), by the method's score -> budget -> select.

Compression happens on the first forward of a cache (the prefill). Later forwards (a question appended
after the context, decoding) only read the compressed cache, so the same session serves both settings:
the question inside the compressed prompt (query-aware) or after it (query-agnostic). With
``evict_every=n`` the post-hook also cuts each layer back to its post-prefill budget once ``n`` new tokens
have arrived, scored by the queries of the forward that brought the last of them (accumulating scores,
H2O's, by all the attention each entry has received since the prompt: the hook keeps the forwards since the
last cut and adds their share in one batched pass just before the next), so
a long generation runs in bounded memory (at most budget + n entries per head, decoding one token per forward).
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from tokenomy._validation import TokenomyError, check_choice, check_fraction, check_int
from tokenomy.budget import HeadAdaptive, Keep
from tokenomy.adapters.lm import (decoder, full_attention_modules, key_padding, rope_slice, rotated_queries,
                                 softmax_scale)
from tokenomy.models.caches import copy_cache
from tokenomy.registry import site_options
from tokenomy.score.base import LayerObservation, Replay, Scorer, per_query_head
from tokenomy.select import prioritize, top_k
from tokenomy.sites.kv_layers import CompressedLayer, PackedLayer, PrunedLayer
from tokenomy.sites.kv_quant import EntryQuantizer
from tokenomy.sites.scoring_attention import NORMALIZERS, PACKED, SUMS, scoring_attention

SITE = "kv-cache"
site_options(SITE, evict_every=0, bits=16)  # every KV method can also evict while decoding, and store its
# kept entries quantized (see KVCompression)


def map_mask(layer: PrunedLayer, mask: Tensor | None, num_new: int, num_heads: int) -> Tensor | None:
    """HF's mask over seen positions ``(b, 1, q, seen + q)`` -> a mask over the entries the layer will
    attend to, ``(b, num_heads, q, L + q)`` (bool or additive float, like the input)."""
    positions, valid = layer.positions, layer.valid
    if layer.selection is not None:
        positions = positions.gather(-1, layer.selection)
        valid = None if valid is None else valid.gather(-1, layer.selection)
        if layer.selection_valid is not None:
            valid = layer.selection_valid if valid is None else valid & layer.selection_valid
    b, h_kv, stored = positions.shape
    q = num_new
    device = positions.device
    if mask is None:
        if valid is None:
            return None
        causal = torch.ones(q, q, dtype=torch.bool, device=device).tril()
        mapped = torch.cat([valid.unsqueeze(2).expand(b, h_kv, q, stored), causal.expand(b, h_kv, q, q)], dim=-1)
    else:
        new = (layer.seen + torch.arange(q, device=device)).expand(b, h_kv, q)
        columns = torch.cat([positions, new], dim=-1).unsqueeze(2).expand(b, h_kv, q, stored + q)
        mapped = mask[..., -q:, :].expand(b, h_kv, q, mask.shape[-1]).gather(-1, columns)
        if valid is not None:
            in_use = torch.cat([valid, valid.new_ones(b, h_kv, q)], dim=-1).unsqueeze(2)
            if mapped.dtype == torch.bool:
                mapped = mapped & in_use
            else:
                mapped = mapped.masked_fill(~in_use, torch.finfo(mapped.dtype).min)
    return per_query_head(mapped, num_heads)


@dataclass
class KVStats:
    """What a session did, summed over layers: for reports and budgets checks."""

    layers_compressed: int = 0
    entries_seen: int = 0  # real tokens x KV heads x layers, at compression time
    entries_kept: int = 0
    bytes_kept: int = 0  # physical size of the compressed keys + values
    scoring_seconds: float = 0.0  # scoring + selection (after prefill; per step for decode-phase methods);
    # H2O/VATP sums taken inside the prefill's attention (`sums_in_prefill`) are part of the forward, not this
    per_layer_kept: list[int] = field(default_factory=list)
    evictions: int = 0  # layer evictions while decoding (``evict_every``)
    selections: int = 0  # decode-phase layer selections (TokenSelect), fresh or reused
    selections_reused: int = 0  # ... of which kept the previous one (``reuse_similarity``)


@dataclass
class KVCompression:
    """A KV-cache method: score every cached entry, budget how many survive, keep the top ones.

    score: a scorer (see `tokenomy.score`), higher = keep.
    budget: `Keep(keep)` (same fraction everywhere) or a layer schedule such as `Pyramid`.
    heads: "uniform", or a `HeadAdaptive` allocation of each layer's budget across its KV heads (or, with
        ``across_layers``, of the whole budget across every layer's heads, once the prefill has run).
    sinks: the first tokens always kept (attention sinks).
    recent: the last tokens always kept: an int, or a float = fraction of the layer's budget.
    phase: "prefill" evicts once after the prefill; "decode" keeps every entry and lets each later
        forward attend only to its selected ones (TokenSelect).
    evict_every: 0 evicts only after the prefill; n > 0 also evicts while decoding: once n tokens have
        been added since the last eviction, each layer goes back to its post-prefill budget (the way
        StreamingLLM, H2O and TOVA run during generation), so one-token decoding stays within budget + n.
    reuse_similarity: decode phase only: a layer keeps its last scored picks (refreshing the recent window)
        while the coming forward's query fingerprint — its queries averaged over tokens, all heads — has at
        least this cosine similarity to the one that chose them (TokenSelect's Selection Cache); None
        selects afresh at every forward. Batches with padding always select afresh.
    bits: 16 stores the kept entries as the model computed them; 8, 4 or 2 stores each key and value
        quantized per token in groups of 32 channels (`tokenomy.sites.kv_quant`), tokens added while
        decoding too, so eviction and quantization multiply their savings.
    """

    score: Scorer
    budget: Keep = field(default_factory=Keep)
    heads: str | HeadAdaptive = "uniform"
    sinks: int = 0
    recent: int | float = 0
    phase: str = "prefill"
    evict_every: int = 0
    reuse_similarity: float | None = None
    bits: int = 16

    def __post_init__(self):
        check_int("sinks", self.sinks)
        if self.bits != 16:
            EntryQuantizer(self.bits)  # validates
        if isinstance(self.recent, float):
            if not 0.0 <= self.recent <= 1.0:
                raise TokenomyError(f"recent as a fraction of the budget must be in [0, 1], got {self.recent}")
        else:
            check_int("recent", self.recent)
        check_choice("phase", self.phase, ["prefill", "decode"])
        if not isinstance(self.heads, HeadAdaptive):
            check_choice("heads", self.heads, ["uniform"])
        if self.phase == "decode" and isinstance(self.heads, HeadAdaptive):
            raise TokenomyError("head-adaptive budgets apply to eviction after prefill, not to decode-time selection")
        check_int("evict_every", self.evict_every)
        if self.replays and (self.evict_every or self.phase == "decode"):
            raise TokenomyError("a score that replays the context (KVzip) compresses once, after the prefill: "
                                "evict_every and decode-time selection are not supported with it")
        if self.evict_every and self.phase == "decode":
            raise TokenomyError("evict_every applies to methods that evict; this one keeps every entry and "
                                "selects per step")
        if self.reuse_similarity is not None:
            if self.phase != "decode":
                raise TokenomyError("reuse_similarity applies to decode-time selection (phase='decode')")
            self.reuse_similarity = check_fraction("reuse_similarity", self.reuse_similarity)
        if self.evict_every and isinstance(self.heads, HeadAdaptive):
            raise TokenomyError("evict_every is not supported with head-adaptive budgets (heads keep ragged counts)")
        if self.across_layers and type(self.budget) is not Keep:
            raise TokenomyError("a budget shared across layers is allocated by the scores; it cannot also follow "
                                f"a layer schedule ({type(self.budget).__name__})")

    @property
    def keep(self) -> float:
        return self.budget.keep

    @property
    def quantizer(self) -> EntryQuantizer | None:
        """How kept entries are stored: quantized to ``bits`` (2, 4, 8), or as the model computed them (16)."""
        return None if self.bits == 16 else EntryQuantizer(self.bits)

    @property
    def compresses(self) -> bool:
        """It changes the cache: evicts (keep < 1) or quantizes; keep = 1.0 at 16 bits leaves it untouched."""
        return self.keep < 1.0 or self.bits != 16

    @property
    def accumulates(self) -> bool:
        """Evicting while decoding with a score summed over every query so far (H2O, VATP): the site then
        keeps each entry's received attention, brought up to date before every eviction."""
        return bool(self.evict_every) and self.sums_received

    @property
    def sums_in_prefill(self) -> bool:
        """Applied to a model on SDPA, it sums its scores inside the prefill's attention (`scoring_attention`)."""
        return self.compresses and self.phase == "prefill" and self.sums_received

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
    def packable(self) -> bool:
        """Its compressed layers may be stored packed (`PackedLayer`): it evicts after the prefill and keeps
        no per-entry history (decode-time selection and accumulated attention read the rectangular layout)."""
        return self.phase == "prefill" and not self.accumulates

    @property
    def across_layers(self) -> bool:
        """Every layer's heads share one budget (`HeadAdaptive(across_layers=True)`)."""
        return isinstance(self.heads, HeadAdaptive) and self.heads.across_layers

    @property
    def waits_for_prefill(self) -> bool:
        """Compresses once the whole prefill has run, every layer at once: it replays the context, or shares
        its budget across layers."""
        return self.replays or self.across_layers

    def _score_says(self, flag: str) -> bool:
        """Whether the score, or a score it wraps (`Pooled`), sets ``flag``."""
        score = self.score
        while score is not None and not getattr(score, flag, False):
            score = getattr(score, "inner", None)
        return score is not None

    def apply(self, model: nn.Module) -> "KVSession":
        """Patch ``model`` for the duration of a ``with`` block (see `tokenomy.apply`)."""
        return KVSession(model, self)

    # -- the recipe, shared by the hooks and the benchmark ------------------------------------------------

    def select(self, obs: LayerObservation, per_head: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Indices ``(b, h_kv, k)`` of the entries to keep (sorted) and the slots in use (or None);
        ``per_head`` ``(b,)`` overrides the budget's count (decoding keeps the post-prefill one)."""
        if per_head is None:
            per_head = self._counts(obs)
        recent = self._recent(per_head)
        priority = prioritize(self.score(obs), first=self.sinks, last=recent.to(obs.keys.device), valid=obs.valid)
        if isinstance(self.heads, HeadAdaptive):
            counts = self.heads.head_counts(priority, per_head)
        else:
            counts = per_head.view(-1, 1).expand(-1, obs.keys.shape[1])
        return top_k(priority, counts.to(obs.keys.device))

    def _counts(self, obs: LayerObservation) -> Tensor:
        """The budget's entries per head ``(b,)`` for this layer."""
        b, _, n = obs.keys.shape[:3]
        n_valid = obs.valid.sum(-1) if obs.valid is not None else torch.full((b,), n)
        return self.budget.layer_counts(n_valid.cpu(), obs.layer_idx, obs.num_layers)

    def _recent(self, per_head: Tensor) -> Tensor:
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
        per_head = self._counts(first)  # `Keep`: the same count in every layer, and the same real tokens
        scores = torch.cat([self.score(obs) for obs in observations.values()], dim=1)  # (b, layers * h_kv, n)
        last = self._recent(per_head).to(scores.device)
        priority = prioritize(scores, first=self.sinks, last=last, valid=first.valid)
        counts = self.heads.head_counts(priority, per_head).to(scores.device)
        h_kv = first.keys.shape[1]
        picks = [top_k(priority[:, i * h_kv : (i + 1) * h_kv], counts[:, i * h_kv : (i + 1) * h_kv])
                 for i in range(len(observations))]
        stats.scoring_seconds += time.perf_counter() - start
        for (idx, obs), chosen in zip(observations.items(), picks):
            self.compress_layer(cache, idx, obs, stats, chosen, packed)

    def compress_layer(self, cache, layer_idx: int, obs: LayerObservation, stats: KVStats,
                       chosen: tuple[Tensor, Tensor | None] | None = None, packed: bool = False) -> None:
        """Replace layer ``layer_idx`` of ``cache`` by its compressed version (prefill phase) or by a
        selectable copy (decode phase); ``chosen``: the kept entries, when already selected. ``packed``: the
        model runs on the site's attention, so a layer whose rows or heads keep different counts is stored
        as a `PackedLayer` (exactly the kept entries) rather than padded to a rectangle."""
        start = time.perf_counter()
        n = obs.keys.shape[2]
        b, h_kv = obs.keys.shape[:2]
        if self.phase == "decode":
            indices = torch.arange(n, device=obs.keys.device).expand(b, h_kv, n)
            in_use = None if obs.valid is None else obs.valid.unsqueeze(1).expand(b, h_kv, n)
        else:
            indices, in_use = chosen if chosen is not None else self.select(obs)
        gather = indices.unsqueeze(-1).expand(-1, -1, -1, obs.keys.shape[-1])
        layout = PackedLayer if packed and in_use is not None and self.packable else PrunedLayer
        pruned = layout(obs.keys.gather(2, gather), obs.values.gather(2, gather), indices, in_use, n, self.quantizer)
        cache.layers[layer_idx] = pruned
        pruned.budget = torch.full((b,), indices.shape[-1]) if in_use is None else in_use[:, 0].sum(-1).cpu()
        if self.accumulates:
            received = obs.received()  # (b, heads, n), already computed by the score
            pruned.history = received.gather(-1, per_query_head(indices, received.shape[1]))
        stats.scoring_seconds += time.perf_counter() - start
        stats.layers_compressed += 1
        n_real = int(obs.valid.sum()) if obs.valid is not None else b * n
        stats.entries_seen += n_real * h_kv
        stats.entries_kept += pruned.kept_entries()
        stats.per_layer_kept.append(pruned.kept_entries())
        stats.bytes_kept += pruned.resident_bytes()

    def evict(self, layer: CompressedLayer, obs: LayerObservation, stats: KVStats) -> None:
        """Decoding: cut ``layer`` back to its post-prefill budget (``evict_every``)."""
        start = time.perf_counter()
        indices, in_use = self.select(obs, per_head=layer.budget)
        layer.keep_only(indices, in_use)
        stats.scoring_seconds += time.perf_counter() - start
        stats.evictions += 1

    def choose_for_step(self, layer: PrunedLayer, obs: LayerObservation, stats: KVStats) -> None:
        """Decode phase: pick the stored entries the coming forward attends to (or reuse the last pick)."""
        per_head = self._counts(obs)
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
        layer.selection, layer.selection_valid = self.select(obs, per_head)
        if fingerprint is not None:  # what the score picked, without the recent window (it moves on)
            scored = max(layer.selection.shape[-1] - int(self._recent(per_head)[0]), 0)
            layer.chosen = (fingerprint, layer.selection[..., :scored])


def _obs_from_prefill(module, layer, hidden: Tensor, rope: tuple[Tensor, Tensor], mask, rank: int, count: int):
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


def _obs_for_step(module, layer: PrunedLayer, hidden: Tensor, rope: tuple[Tensor, Tensor], rank: int, count: int,
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


def _replay_inputs(prefill: dict) -> dict:
    """Decoder inputs that feed a prefill's tokens again right after them: same ids (or embeddings) and
    padding, each row's positions continuing from its last one."""
    tokens = prefill["input_ids"] if prefill["input_ids"] is not None else prefill["inputs_embeds"]
    positions, mask = prefill["position_ids"], prefill["attention_mask"]
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    replay = {"position_ids": positions + positions.amax(dim=-1, keepdim=True) + 1,
              "attention_mask": None if mask is None else torch.cat([mask, mask], dim=1)}
    key = "input_ids" if prefill["input_ids"] is not None else "inputs_embeds"
    return replay | {key: tokens}


class KVSession:
    """Hooks that apply a `KVCompression` to a model; a context manager, reusable once exited."""

    def __init__(self, model: nn.Module, method: KVCompression):
        self.model = model
        self.method = method
        self.modules = full_attention_modules(model)
        self.rank = {module.layer_idx: i for i, module in enumerate(self.modules)}
        self.stats = KVStats()
        self._handles: list = []
        self._prefill: dict[int, tuple] = {}
        self._attention = ExitStack()
        self.sums_in_prefill = False  # the prefill's attention hands H2O's sums over (else recomputed)
        self.normalizers_in_replay = False  # the replay's attention hands its log-normalisers over (KVzip)
        self.packed = False  # ragged layers are stored packed, attended by the site's attention
        self._decoder_inputs: dict | None = None  # the prefill's decoder inputs, replayed (KVzip)
        self._deferred: dict[int, LayerObservation] = {}  # prefill observations waiting for its end
        self._replayed: dict[int, tuple] | None = None  # (hidden, rope, normalisers) per layer in the replay

    def __enter__(self) -> "KVSession":
        if getattr(self.model, "_tokenomy_kv_session", None) is not None:
            raise TokenomyError("a tokenomy KV method is already applied to this model; exit that block first")
        compresses = self.method.compresses
        wanted = compresses and (self.method.sums_in_prefill or self.method.replays or self.method.packable)
        own = self._attention.enter_context(scoring_attention(self.model, wanted))
        self.sums_in_prefill = own and self.method.sums_in_prefill
        self.normalizers_in_replay = own and self.method.replays
        self.packed = own and self.method.packable
        self.model._tokenomy_kv_session = self
        for module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._after, with_kwargs=True))
        if self.method.waits_for_prefill and self.method.compresses:
            stack = decoder(self.model)
            self._handles.append(stack.register_forward_pre_hook(self._before_decoder, with_kwargs=True))
            self._handles.append(stack.register_forward_hook(self._after_decoder, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        self._attention.close()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._prefill.clear()
        self._deferred.clear()
        self._decoder_inputs = self._replayed = None
        self.model._tokenomy_kv_session = None

    def _where(self, module) -> tuple[int, int]:
        return self.rank[module.layer_idx], len(self.modules)

    def _before(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        if cache is None:
            return None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        rope = kwargs["position_embeddings"]
        if self._replayed is not None:
            self._replayed[module.layer_idx] = (hidden, rope)
            if self.normalizers_in_replay:
                setattr(module, NORMALIZERS, True)  # the attention hands them over (scoring_attention)
            return None
        idx = module.layer_idx
        layer = cache.layers[idx] if idx < len(cache.layers) else None
        if isinstance(layer, PackedLayer):
            if not self.packed:
                raise TokenomyError("this cache holds packed layers; use it inside the `with` block of the method "
                                    "that compressed it")
            setattr(module, PACKED, layer)  # the site's attention attends it (scoring_attention)
            layer.armed = True
            return None
        if isinstance(layer, PrunedLayer):
            if self.method.phase == "decode":
                start = time.perf_counter()
                obs = _obs_for_step(module, layer, hidden, rope, *self._where(module))
                self.method.choose_for_step(layer, obs, self.stats)
                self.stats.scoring_seconds += time.perf_counter() - start
            num_heads = module.config.num_attention_heads
            kwargs["attention_mask"] = map_mask(layer, kwargs.get("attention_mask"), hidden.shape[1], num_heads)
            layer.armed = True
            return args, kwargs
        if layer is None or layer.get_seq_length() == 0:
            self._prefill[idx] = (hidden, rope, kwargs.get("attention_mask"))
            if self.sums_in_prefill:
                setattr(module, SUMS, True)  # the attention sums this prefill (scoring_attention)
        return None

    def _after(self, module, args, kwargs, output):
        pending = self._prefill.pop(module.layer_idx, None)
        received = module.__dict__.pop(SUMS, None)
        normalizers = module.__dict__.pop(NORMALIZERS, None)
        if self._replayed is not None:
            self._replayed[module.layer_idx] += (normalizers if isinstance(normalizers, Tensor) else None,)
        if not self.method.compresses or self._replayed is not None:
            return None  # keep=1.0 at 16 bits leaves the cache untouched; a replay only records its queries
        if pending is None:
            self._evict_while_decoding(module, args, kwargs)
            return None
        cache = kwargs["past_key_values"]
        layer = cache.layers[module.layer_idx]
        if layer.get_seq_length() == 0:
            return None
        if type(layer) is not DynamicLayer:
            raise TokenomyError(f"tokenomy KV methods need HF's DynamicCache; got a {type(layer).__name__} layer")
        obs = _obs_from_prefill(module, layer, *pending, *self._where(module))
        if isinstance(received, Tensor):
            obs = replace(obs, _received=received)
        if self.method.waits_for_prefill:  # compressed once the whole prefill has run (`_after_decoder`)
            self._deferred[module.layer_idx] = obs
            return None
        self.method.compress_layer(cache, module.layer_idx, obs, self.stats, packed=self.packed)
        return None

    def _before_decoder(self, stack, args, kwargs):
        """Remember a prefill's inputs (the decoder's first forward over an empty cache) for its replay."""
        cache = kwargs.get("past_key_values")
        if not self.method.replays or self._replayed is not None or (cache is not None and cache.get_seq_length() > 0):
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise TokenomyError("a replaying KV method (KVzip) needs the prefill's attention mask as a 2-D "
                                f"(batch, tokens) tensor, got shape {tuple(mask.shape)}")
        self._decoder_inputs = {"input_ids": ids, "inputs_embeds": kwargs.get("inputs_embeds"),
                                "attention_mask": mask, "position_ids": kwargs.get("position_ids")}
        return None

    def _after_decoder(self, stack, args, kwargs, output):
        """After a prefill: compress every layer at once, from a replay of the context when the score reads one."""
        inputs, self._decoder_inputs = self._decoder_inputs, None
        if not self._deferred or self._replayed is not None:
            return None
        deferred, self._deferred = self._deferred, {}
        cache = output.past_key_values
        if self.method.replays:
            self._replay(stack, inputs, cache, deferred)
        self.method.compress_layers(cache, deferred, self.stats, packed=self.packed)
        return None

    def _replay(self, stack, inputs: dict, cache, observations: dict[int, LayerObservation]) -> None:
        """Feed the prefill's inputs again over a copy of its ``cache`` and attach each layer's `Replay`."""
        start = time.perf_counter()
        replica = copy_cache(cache)  # grows by the replay; the prefill's own cache stays as it was
        self._replayed = {}
        try:
            stack(**_replay_inputs(inputs), past_key_values=replica, use_cache=True)
            replayed = self._replayed
        finally:
            self._replayed = None
        modules = {m.layer_idx: m for m in self.modules}
        for idx, obs in observations.items():
            hidden, rope, normalizers = replayed[idx]
            n = obs.keys.shape[2]
            obs.replay = Replay(rotated_queries(modules[idx], hidden, rope), replica.layers[idx].keys[:, :, n:],
                                valid=obs.valid, log_normalizers=normalizers)
        self.stats.scoring_seconds += time.perf_counter() - start

    def _evict_while_decoding(self, module, args, kwargs) -> None:
        cache = kwargs.get("past_key_values")
        every = self.method.evict_every
        layer = cache.layers[module.layer_idx] if cache is not None and every else None
        if not isinstance(layer, CompressedLayer):
            return
        due = layer.seen - layer.evicted_at >= every
        if layer.history is None and not due:
            return
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs["position_embeddings"]
        if layer.history is not None:  # the history is brought up to date once per eviction, for all the
            layer.unscored = [*layer.unscored, (hidden, cos, sin)]  # forwards since the last one (one batched
            # pass); a new list, so a `copy_cache` copy never sees another copy's forwards
            if not due:
                return
            hidden, cos, sin = (torch.cat(parts, dim=-2) for parts in zip(*layer.unscored))  # the token axis
            layer.unscored = []
        obs = _obs_for_step(module, layer, hidden, (cos, sin), *self._where(module), appended=True)
        if layer.history is not None:  # what those forwards' queries gave every stored entry
            start = time.perf_counter()
            layer.history = layer.history + obs.received()
            obs.history = layer.history
            self.stats.scoring_seconds += time.perf_counter() - start
        self.method.evict(layer, obs, self.stats)

    def compress(self, cache, observations: dict[int, LayerObservation]) -> None:
        """Compress an already prefilled ``cache`` from recorded observations (see `PrefillRecorder`). Each
        call starts from the raw observations (nothing another method computed is reused), so every method
        pays, and reports, its own scoring time."""
        if not self.method.compresses:
            return
        if self.method.replays:
            raise TokenomyError("this method replays the context through the model after the prefill, so it "
                                "compresses a prefill run inside its `with` block, not recorded observations")
        fresh = {idx: replace(obs, _queries={}, _received=None) for idx, obs in observations.items()}
        self.method.compress_layers(cache, fresh, self.stats, packed=self.packed)


class PrefillRecorder:
    """Records each layer's observation during one plain prefill, so several methods can then be
    applied to copies of the same cache without running the prefill again (the benchmark's trick;
    results equal those of the hooks, which a test checks)."""

    def __init__(self, model: nn.Module):
        self.modules = full_attention_modules(model)
        self.rank = {module.layer_idx: i for i, module in enumerate(self.modules)}
        self.observations: dict[int, LayerObservation] = {}
        self._pending: dict[int, tuple] = {}

    @contextmanager
    def record(self) -> Iterator["PrefillRecorder"]:
        handles = []
        for module in self.modules:
            handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            handles.append(module.register_forward_hook(self._after, with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _before(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self._pending[module.layer_idx] = (hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"))

    def _after(self, module, args, kwargs, output):
        pending = self._pending.pop(module.layer_idx)
        layer = kwargs["past_key_values"].layers[module.layer_idx]
        rank = self.rank[module.layer_idx]
        self.observations[module.layer_idx] = _obs_from_prefill(module, layer, *pending, rank, len(self.modules))

