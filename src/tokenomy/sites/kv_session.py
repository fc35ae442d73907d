"""The hooks that apply a `KVCompression` to a model inside a ``with`` block (see `tokenomy.sites.kv_cache`)."""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from tokenomy._validation import TokenomyError
from tokenomy.adapters.lm import context_length, decoder, full_attention_modules, rotated_queries
from tokenomy.adapters.caches import copy_cache
from tokenomy.score.base import LayerObservation, Replay
from tokenomy.sites.kv_layers import CompressedLayer, PackedLayer, PrunedLayer
from tokenomy.sites.kv_mask import map_mask
from tokenomy.sites.kv_observation import observe_prefill
from tokenomy.sites.scoring_attention import NORMALIZERS, PACKED, SUMS, scoring_attention


@dataclass
class KVStats:
    """What a session did, summed over layers: for reports and budgets checks."""

    layers_compressed: int = 0
    entries_seen: int = 0  # real tokens x KV heads x layers, at compression time
    entries_kept: int = 0
    bytes_kept: int = 0  # physical size of the compressed keys + values
    scoring_seconds: float = 0.0  # scoring + selection (after prefill; before each forward with `SelectPerStep`);
    # H2O/VATP sums taken inside the prefill's attention (`sums_in_prefill`) are part of the forward, not this
    per_layer_kept: list[int] = field(default_factory=list)
    evictions: int = 0  # layer evictions while decoding (`EvictWhileDecoding`)
    selections: int = 0  # layer selections before a forward (`SelectPerStep`), fresh or reused
    selections_reused: int = 0  # ... of which kept the previous one (``reuse_similarity``)


def _replay_inputs(prefill: dict, first: int, last: int) -> dict:
    """Decoder inputs that feed a prefill's tokens ``first:last`` again right after the whole prefill: same ids
    (or embeddings) and padding, each row's positions continuing from its last one."""
    tokens = prefill["input_ids"] if prefill["input_ids"] is not None else prefill["inputs_embeds"]
    positions, mask = prefill["position_ids"], prefill["attention_mask"]
    if positions is None:
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None]
    replay = {"position_ids": (positions + positions.amax(dim=-1, keepdim=True) + 1 - first)[:, first:last],
              "attention_mask": None if mask is None else torch.cat([mask, mask[:, first:last]], dim=1)}
    key = "input_ids" if prefill["input_ids"] is not None else "inputs_embeds"
    return replay | {key: tokens[:, first:last]}


class KVSession:
    """Hooks that apply a method (a `tokenomy.sites.kv_cache.KVCompression`, which builds its session with
    ``method.apply(model)``) to a model; a context manager, reusable once exited."""

    def __init__(self, model: nn.Module, method):
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
            self.method.before_forward(module, layer, hidden, rope, self._where(module), self.stats)
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
            cache, idx = kwargs.get("past_key_values"), module.layer_idx
            layer = cache.layers[idx] if cache is not None and idx < len(cache.layers) else None
            if isinstance(layer, CompressedLayer):
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                self.method.after_forward(module, layer, hidden, kwargs["position_embeddings"], self._where(module),
                                          self.stats)
            return None
        cache = kwargs["past_key_values"]
        layer = cache.layers[module.layer_idx]
        if layer.get_seq_length() == 0:
            return None
        if type(layer) is not DynamicLayer:
            raise TokenomyError(f"tokenomy KV methods need HF's DynamicCache; got a {type(layer).__name__} layer")
        obs = observe_prefill(module, layer, *pending, *self._where(module))
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
        """Feed the prefill's inputs again, ``method.replay_chunk`` tokens at a time, each chunk over its own copy
        of the prefill's ``cache``, and attach each layer's `Replay` of every chunk."""
        start = time.perf_counter()
        n = next(iter(observations.values())).keys.shape[2]
        size = self.method.replay_chunk or n
        check_replay_fits(self.model, n, size)
        modules = {m.layer_idx: m for m in self.modules}
        for obs in observations.values():
            obs.replay = []
        for first in range(0, n, size):
            replica = copy_cache(cache)  # grows by the chunk; the prefill's own cache stays as it was
            self._replayed = {}
            try:
                stack(**_replay_inputs(inputs, first, min(first + size, n)), past_key_values=replica, use_cache=True)
                replayed = self._replayed
            finally:
                self._replayed = None
            for idx, obs in observations.items():
                hidden, rope, normalizers = replayed[idx]
                valid = None if obs.valid is None else obs.valid[:, first:first + size]
                obs.replay.append(Replay(rotated_queries(modules[idx], hidden, rope), replica.layers[idx].keys[:, :, n:],
                                         valid=valid, log_normalizers=normalizers))
        self.stats.scoring_seconds += time.perf_counter() - start

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


def check_replay_fits(model, n: int, chunk: int, where: str = "a") -> None:
    """Refuse a replay of ``where``'s ``n``-token context, ``chunk`` tokens at a time (0: whole), that would run
    past the model's positions, naming a chunk that fits."""
    size = min(chunk or n, n)
    limit = context_length(model)
    if limit is not None and n + size > limit:
        remedy = (f"give the method a smaller chunk (chunk={limit - n} or less)" if limit > n else
                  "no chunk fits: shorten the context")
        raise TokenomyError(f"replaying {where} {n}-token context {size} tokens at a time needs {n + size} "
                            f"positions; the model allows {limit}: {remedy}")
