"""The visual site: fewer visual tokens enter a VLM's language model, and fewer pass its layers.

A `VisualSession` applies at most one method that acts before the language model (a pre-LLM selection, or
ToMe inside the vision tower) and one that acts between its layers (an in-LLM method), to any VLM family
`tokenomy.adapters.vlm` knows. The model runs its own code — vision tower, projector, placeholder merge,
positions (M-RoPE included) and masks — and the session intervenes at three places:

* **the language model's input**, on the prefill of a forward that carries images: the pre-LLM method picks
  each image's tokens from the `ImageView` the adapter recorded while the vision modules ran; merged tokens
  are projected and written in; the embeddings, masks, positions and the adapter's per-token arguments are
  shortened to the kept tokens, rows left-padded to one length (real tokens last, as HF generation pads).
  Positions are numbered afresh (``compact``: a prompt that never had the dropped tokens) or kept (M-RoPE).
* **before each decoder layer from the first in-LLM stage on**: the in-LLM method reads the previous layer's
  attention (a side pass over the few query rows it needs, beside the model's own fused attention) and
  drops tokens from the hidden states; every such layer gets its mask, rotary tables and position ids
  restricted to the tokens it holds, so its KV cache holds only them.
* **every later forward over the same cache** (decoding): the caller's full-length mask, ``cache_position``
  and (compact) position ids are translated into the shortened coordinates before the model reads them, and
  each shortened layer gets a mask over its own entries (sliding windows measured as the model measures them).

Outputs cover the tokens that reached the last layer (``logits`` has one row per kept token, rows left-padded);
``generate()`` returns the caller's prompt followed by the new tokens, as always.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tokenomy._validation import TokenomyError
from tokenomy.adapters.lm import decoder, rotated_keys, rotated_queries, softmax_scale
from tokenomy.adapters.vlm import vlm_adapter
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter
from tokenomy.score.base import per_query_head
from tokenomy.score.in_llm import DecoderView
from tokenomy.sites.vision.tokens import build_mask, packed_columns, take, take_mask

STATE = "_tokenomy_visual"  # on a cache: the `Shortened` coordinates of the prompt it holds


@dataclass
class Reduction:
    """What a method before the language model keeps of one image: rows of its `ImageView` (increasing), and
    their new features (merged tokens, in the view's feature space) or None when they stay as they are."""

    kept: Tensor
    features: Tensor | None = None


@dataclass
class VisualStats:
    """What a session did, summed over the images it saw.

    tokens_seen: image placeholders in the prompts (separators included); tokens_kept: those that reached the
    language model; placeholders: each image's; crop_counts: tokens kept per crop, one list per image;
    layer_tokens: visual tokens entering
    each decoder layer, summed over images (a method acting inside the language model lowers the later ones);
    selection_seconds: time spent choosing (pre-LLM selection and in-LLM scoring)."""

    tokens_seen: int = 0
    tokens_kept: int = 0
    placeholders: list[int] = field(default_factory=list)
    crop_counts: list[list[int]] = field(default_factory=list)
    layer_tokens: list[int] = field(default_factory=list)
    selection_seconds: float = 0.0

    @property
    def mean_layer_fraction(self) -> float:
        """Visual tokens per decoder layer, averaged over layers, as a fraction of the placeholders seen."""
        if not self.layer_tokens or not self.tokens_seen:
            return 1.0
        return sum(self.layer_tokens) / len(self.layer_tokens) / self.tokens_seen


@dataclass
class Shortened:
    """The coordinates a cache's prompt was shortened to (attached to the cache, so decoding can translate).

    full: the caller's prompt length; valid: ``(b, W)`` which shortened columns hold a token; decoded:
    ``(b, t)`` which tokens added since hold one (the caller's mask); layers: for each decoder layer that holds
    fewer tokens still, the decoder columns of its prefill entries ``(b, W_l)`` and which are real."""

    full: int
    valid: Tensor
    decoded: Tensor
    layers: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def index_batch(self, fn) -> None:
        self.valid, self.decoded = fn(self.valid), fn(self.decoded)
        self.layers = {i: (fn(c), fn(v)) for i, (c, v) in self.layers.items()}


@dataclass
class _Prefill:
    """One forward with images, from the model's input to its last layer."""

    inputs: dict
    input_ids: Tensor
    record: dict
    images: list[ImageTokens] | None = None
    columns: Tensor | None = None  # (b, W) decoder columns -> caller columns
    visual: Tensor | None = None  # (b, W) visual tokens, in the current layer's coordinates
    image: Tensor | None = None
    grid: Tensor | None = None
    current: Tensor | None = None  # (b, W_cur) decoder columns held by the current layer
    current_valid: Tensor | None = None
    attention_inputs: dict = field(default_factory=dict)  # layer -> (hidden, rope, mask) of its attention
    gathered: dict = field(default_factory=dict)  # id of a decoder-level tensor -> its shortened copy


class VisualSession:
    """Hooks that apply visual-token methods to a VLM (see the module docstring); a context manager."""

    def __init__(self, vlm: nn.Module, methods: "VisualMethods"):
        self.vlm, self.methods = vlm, methods
        self.adapter: VLMAdapter = vlm_adapter(vlm)
        self.decoder = decoder(vlm)
        self.layers = self.decoder.layers
        methods.check(self.adapter, len(self.layers))
        self.stages = set(methods.inside.stage_layers(len(self.layers))) if methods.inside is not None else set()
        self.first_stage = min(self.stages) if self.stages else None
        self.stats = VisualStats()
        self._handles: list = []
        self._record: dict = {}
        self._prefill: _Prefill | None = None
        self._active: _Prefill | None = None
        self._context = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def __enter__(self) -> "VisualSession":
        if getattr(self.vlm, "_tokenomy_visual_session", None) is not None:
            raise TokenomyError("a visual-token method is already applied to this model; combine methods in one "
                                "tokenomy.apply(model, [method, ...]) instead of nesting blocks")
        self.vlm._tokenomy_visual_session = self
        before = self.methods.before
        layers = before.vision_layers(len(self.adapter.layers)) if before is not None else set()
        self._handles = self.adapter.capture(self._record, layers)
        if before is not None and hasattr(before, "patch_tower"):
            self._context = before.patch_tower(self.adapter, self._record)
            self._context.__enter__()
        self._handles.append(self.vlm.register_forward_pre_hook(self._before_model, with_kwargs=True))
        self._handles.append(self.decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True))
        self._handles.append(self.decoder.register_forward_hook(self._after_decoder, with_kwargs=True))
        if self.first_stage is not None:
            for index in range(self.first_stage, len(self.layers)):
                self._handles.append(self.layers[index].register_forward_pre_hook(self._layer_hook(index),
                                                                                 with_kwargs=True))
            for index in sorted(self.stages):
                attention = self.layers[index - 1].self_attn
                self._handles.append(attention.register_forward_pre_hook(self._attention_hook(index - 1),
                                                                          with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._context is not None:
            self._context.__exit__(*exc)
            self._context = None
        self._prefill = self._active = None
        self.vlm._tokenomy_visual_session = None

    # -- the model's input: remember a forward with images, translate a later one ----------------------------
    def _before_model(self, module, args, kwargs):
        self._record.clear()
        pixels = {k: v for k, v in kwargs.items() if k.startswith("pixel_values") and v is not None}
        cache = kwargs.get("past_key_values")
        if pixels:
            if "pixel_values_videos" in pixels:
                raise TokenomyError("video inputs are not reduced by tokenomy's visual methods; pass images only")
            if cache is not None and cache.get_seq_length() > 0:
                raise TokenomyError("images must come with the first forward over a cache (the prefill)")
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            if input_ids is None:
                raise TokenomyError("with a visual-token method, call the model with input_ids=... (the image "
                                    "placeholders say where each image's tokens go)")
            if kwargs.get("labels") is not None and self.methods.reduces:
                raise TokenomyError("a loss over labels needs every position: compute it without a token-reduction "
                                    "method (outputs cover only the tokens the language model kept)")
            self._prefill = _Prefill(kwargs, input_ids, self._record)
            return None
        self._prefill = None
        state = getattr(cache, STATE, None)
        if state is None:
            return None
        return args, self._translate(state, kwargs)

    def _translate(self, state: Shortened, kwargs: dict) -> dict:
        """A forward after the prefill, in the caller's coordinates -> the shortened ones."""
        kwargs = dict(kwargs)
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids")
        embeds = kwargs.get("inputs_embeds")
        q = (ids if ids is not None else embeds).shape[1]
        width = state.valid.shape[1]
        if isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[1] >= state.full:
            new = mask[:, state.full:].bool()
        else:
            new = torch.ones(state.valid.shape[0], state.decoded.shape[1] + q, dtype=torch.bool,
                             device=state.valid.device)
        state.decoded = new.to(state.valid.device)
        short = torch.cat([state.valid, state.decoded], dim=1)
        if isinstance(mask, Tensor) and mask.dim() == 2 or not bool(short.all()):
            kwargs["attention_mask"] = short.to(mask.dtype if isinstance(mask, Tensor) else torch.long)
        position = kwargs.get("cache_position")
        if position is not None:
            kwargs["cache_position"] = position - state.full + width
        if self.adapter.positions == "compact":
            kwargs["position_ids"] = (short.long().cumsum(-1) - 1).clamp_min(0)[:, -q:]
        return kwargs

    # -- the language model's input: shorten the prompt -------------------------------------------------------
    def _before_decoder(self, module, args, kwargs):
        prefill, self._prefill = self._prefill, None
        self._active = None
        if prefill is None:
            return None
        if args:
            raise TokenomyError("the language model was called with positional arguments; tokenomy expects keywords")
        tic = time.perf_counter()
        prefill.images = self.adapter.images(prefill.record, prefill.inputs)
        embeds = kwargs["inputs_embeds"].clone()
        keep, image, grid = self._choose_before(prefill, embeds)
        self.stats.selection_seconds += time.perf_counter() - tic + prefill.record.get("selection_seconds", 0.0)
        caller_mask = prefill.inputs.get("attention_mask")
        real = caller_mask.bool().to(keep.device) if isinstance(caller_mask, Tensor) else torch.ones_like(keep)
        shortened = not bool(keep.all())
        if shortened:
            columns, valid = packed_columns(keep & real)
            kwargs = self._shorten_decoder_inputs(dict(kwargs), embeds, columns, valid, prefill)
        else:
            b, length = keep.shape
            columns, valid = torch.arange(length, device=keep.device).expand(b, length), real
            kwargs = dict(kwargs, inputs_embeds=embeds)
        prefill.columns = columns
        placeholder = self.adapter.placeholders(prefill.input_ids.to(keep.device))
        prefill.visual = placeholder.gather(1, columns) & valid
        prefill.image, prefill.grid = image.gather(1, columns), take(grid, columns, 1)
        prefill.current = torch.arange(columns.shape[1], device=keep.device).expand_as(columns)
        prefill.current_valid = valid
        if kwargs.get("use_cache") and kwargs.get("past_key_values") is None:
            from transformers import DynamicCache

            kwargs["past_key_values"] = DynamicCache(config=self.decoder.config)
        cache = kwargs.get("past_key_values")
        if cache is not None and (shortened or self.stages):
            setattr(cache, STATE, Shortened(keep.shape[1], valid, valid.new_zeros(valid.shape[0], 0)))
            _follow_batch_changes(cache)
        if not self.stats.layer_tokens:
            self.stats.layer_tokens = [0] * len(self.layers)
        visual = int(prefill.visual.sum())
        for layer in range(self.first_stage if self.first_stage is not None else len(self.layers)):
            self.stats.layer_tokens[layer] += visual
        self._active = prefill
        return args, kwargs

    def _choose_before(self, prefill: _Prefill, embeds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Which caller columns survive ``(b, L)``, and for each the image it shows (-1: text) and its grid cell
        ``(b, L, 3)`` (crop, row, col); merged tokens are written into ``embeds``."""
        ids = prefill.input_ids.to(embeds.device)
        placeholder = self.adapter.placeholders(ids)
        b, length = ids.shape
        keep = torch.ones(b, length, dtype=torch.bool, device=embeds.device)
        image_of = torch.full((b, length), -1, dtype=torch.long, device=embeds.device)
        grid = torch.full((b, length, 3), -1, dtype=torch.long, device=embeds.device)
        rows, cols = placeholder.nonzero(as_tuple=True)
        expected = sum(image.placeholders for image in prefill.images)
        if rows.numel() != expected:
            raise TokenomyError(f"the prompts hold {rows.numel()} image placeholders but the images need {expected}")
        before = self.methods.before
        offset = 0
        for index, image in enumerate(prefill.images):
            p = image.placeholders
            r, c = rows[offset:offset + p], cols[offset:offset + p]
            offset += p
            content = image.slots >= 0
            image_of[r, c] = index
            grid[r[content], c[content]] = _cells(image)[image.slots[content]].to(grid.device)
            self.stats.tokens_seen += p
            self.stats.placeholders.append(p)
            if before is None or not before.reduces:
                self.stats.tokens_kept += p
                self.stats.crop_counts.append(image.view.sizes)
                continue
            reduction = before.reduce(image, index, prefill.record)
            chosen = torch.zeros(image.view.features.shape[0], dtype=torch.bool)
            chosen[reduction.kept.cpu()] = True
            slot_kept = torch.zeros(p, dtype=torch.bool)
            slot_kept[content] = chosen[image.slots[content]]
            keep[r, c] = slot_kept.to(keep.device)
            if reduction.features is not None:
                where = torch.full((image.view.features.shape[0],), -1, dtype=torch.long)
                where[image.slots[content]] = content.nonzero().flatten()
                at = where[reduction.kept.cpu()].to(embeds.device)
                embeds[r[at], c[at]] = image.project(reduction.features).to(embeds.dtype)
            self.stats.tokens_kept += int(reduction.kept.numel())
            counts = torch.bincount(image.view.crop_of()[reduction.kept.cpu()], minlength=image.view.num_crops)
            self.stats.crop_counts.append(counts.tolist())
        return keep, image_of, grid

    def _shorten_decoder_inputs(self, kwargs: dict, embeds: Tensor, columns: Tensor, valid: Tensor,
                                prefill: _Prefill) -> dict:
        width = columns.shape[1]
        kwargs["inputs_embeds"] = take(embeds, columns, 1)
        kwargs["cache_position"] = torch.arange(width, device=embeds.device)
        positions = kwargs.get("position_ids")
        if self.adapter.positions == "compact":
            kwargs["position_ids"] = (valid.long().cumsum(-1) - 1).clamp_min(0)
        elif positions is not None:
            kwargs["position_ids"] = self.adapter.shorten_positions(take(positions, columns, -1), valid)
        mask = self.adapter.prefill_mask(prefill.inputs, kwargs, columns, valid)
        if mask is None:
            mask = kwargs.get("attention_mask")
            if isinstance(mask, dict):
                mask = {name: None if m is None and bool(valid.all()) else self._square(m, columns, valid)
                        for name, m in mask.items()}
            elif isinstance(mask, Tensor) and mask.dim() == 4:
                mask = self._square(mask, columns, valid)
            else:
                mask = valid.long()
        kwargs["attention_mask"] = mask
        for name in self.adapter.decoder_token_kwargs():
            if kwargs.get(name) is not None:
                kwargs[name] = self.adapter.shorten_token_kwarg(name, kwargs[name], columns, valid, kwargs)
        if self.adapter.positions == "model":
            self.adapter.after_prefill(kwargs.get("position_ids"), valid)
        return kwargs

    @staticmethod
    def _square(mask: Tensor | None, columns: Tensor, valid: Tensor) -> Tensor:
        if mask is None:
            return build_mask(columns, columns, valid, None, None)
        return take_mask(mask, columns, columns, valid, valid)

    def _after_decoder(self, module, args, kwargs, output):
        self._active = None
        return None

    # -- between decoder layers -------------------------------------------------------------------------------
    def _attention_hook(self, index: int):
        def hook(module, args, kwargs):
            prefill = self._active
            if prefill is not None:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                prefill.attention_inputs[index] = (hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"))
            return None
        return hook

    def _layer_hook(self, index: int):
        def hook(module, args, kwargs):
            prefill = self._active
            if prefill is not None:
                return self._prefill_layer(index, prefill, args, kwargs)
            cache = kwargs.get("past_key_values")
            state = getattr(cache, STATE, None)
            if state is None or index not in state.layers:
                return None
            return args, self._decode_layer(index, state, args, kwargs)
        return hook

    def _prefill_layer(self, index: int, prefill: _Prefill, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if index in self.stages:
            hidden = self._drop(index, prefill, hidden)
        self.stats.layer_tokens[index] += int(prefill.visual.sum())
        current, valid = prefill.current, prefill.current_valid
        whole = current.shape[1] == prefill.columns.shape[1] and bool(
            (current == torch.arange(current.shape[1], device=current.device)).all())
        kwargs = dict(kwargs)
        if not whole:
            kwargs["attention_mask"] = self._layer_mask(prefill, kwargs.get("attention_mask"), current, valid)
            kwargs["position_embeddings"] = tuple(take(t, current, -2) for t in kwargs["position_embeddings"])
            if kwargs.get("position_ids") is not None:
                kwargs["position_ids"] = take(kwargs["position_ids"], current, -1)
            kwargs["cache_position"] = torch.arange(current.shape[1], device=current.device)
        cache = kwargs.get("past_key_values")
        state = getattr(cache, STATE, None)
        if state is not None:
            state.layers[index] = (current, valid)
            self._plain_cache_layer(cache, index)
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _layer_mask(self, prefill: _Prefill, mask: Tensor | None, current: Tensor, valid: Tensor) -> Tensor:
        if mask is None:
            return build_mask(current, current, valid, None, None)
        key = id(mask)
        shortened = prefill.gathered.get(key)
        if shortened is None or shortened[0] is not current:
            shortened = (current, take_mask(mask, current, current, valid, valid))
            prefill.gathered[key] = shortened
        return shortened[1]

    def _drop(self, index: int, prefill: _Prefill, hidden: Tensor) -> Tensor:
        """Let the in-LLM method choose at layer ``index``; shorten the current tokens."""
        tic = time.perf_counter()
        method = self.methods.inside
        attn_hidden, rope, mask = prefill.attention_inputs[index - 1]
        module = self.layers[index - 1].self_attn
        view = DecoderView(prefill.visual, prefill.image, prefill.current_valid, hidden, index, len(self.layers),
                           prefill.grid, lambda queries: _side_attention(module, attn_hidden, rope, mask, queries,
                                                                        prefill.current_valid))
        keep, replacements = method.decide(view)
        if replacements is not None:
            hidden = hidden.clone()
            rows, cols, values = replacements
            hidden[rows, cols] = values.to(hidden.dtype)
        self.stats.selection_seconds += time.perf_counter() - tic
        if bool(keep.all()):
            return hidden
        positions, valid = packed_columns(keep & prefill.current_valid)
        prefill.current = prefill.current.gather(1, positions)
        prefill.current_valid = valid
        prefill.visual = prefill.visual.gather(1, positions) & valid
        prefill.image, prefill.grid = prefill.image.gather(1, positions), take(prefill.grid, positions, 1)
        return take(hidden, positions, 1)

    def _decode_layer(self, index: int, state: Shortened, args, kwargs) -> dict:
        """A forward after the prefill: layer ``index`` holds its prefill entries plus every token since."""
        columns, valid = state.layers[index]
        width = state.valid.shape[1]
        steps = state.decoded.shape[1]
        decoded = torch.arange(width, width + steps, device=columns.device).expand(columns.shape[0], steps)
        keys = torch.cat([columns, decoded], dim=1)
        keys_valid = torch.cat([valid, state.decoded.to(valid.device)], dim=1)
        hidden = args[0] if args else kwargs["hidden_states"]
        queries = decoded[:, steps - hidden.shape[1]:]
        mask = kwargs.get("attention_mask")
        dtype = mask.dtype if isinstance(mask, Tensor) else (
            None if self.decoder.config._attn_implementation != "eager" else hidden.dtype)
        window = _window(self.layers[index], self.decoder.config)
        return dict(kwargs, attention_mask=build_mask(queries, keys, keys_valid, window, dtype))

    def _plain_cache_layer(self, cache, index: int) -> None:
        """A sliding-window cache layer holding fewer tokens keeps them all (the mask applies the window), so its
        entries stay those the site maps masks onto."""
        from transformers.cache_utils import DynamicLayer

        while len(cache.layers) <= index:
            cache.layers.append(DynamicLayer())
        layer = cache.layers[index]
        if type(layer) is not DynamicLayer and layer.get_seq_length() == 0:
            cache.layers[index] = DynamicLayer()


@dataclass
class VisualMethods:
    """The visual methods of one session: ``before`` the language model (pre-LLM, or ToMe in the tower) and
    ``inside`` it (between decoder layers); either may be None. ToDRE's two stages are one of these."""

    before: Any = None
    inside: Any = None

    @property
    def keep(self) -> float:
        return (self.before or self.inside).keep

    @property
    def reduces(self) -> bool:
        return any(m is not None and m.reduces for m in (self.before, self.inside))

    def as_visual(self) -> "VisualMethods":
        return self

    def check(self, adapter: VLMAdapter, depth: int) -> None:
        """Refuse what this model cannot do, before any forward."""
        if self.before is not None:
            self.before.check(adapter)
        if self.inside is not None:
            first = min(self.inside.stage_layers(depth))
            if first < adapter.first_in_llm_layer:
                raise TokenomyError(f"on {type(adapter).__name__.removesuffix('Adapter')} models, visual tokens can "
                                    f"leave the language model from layer {adapter.first_in_llm_layer} on (the model "
                                    f"adds visual features to the earlier layers); got layer {first}")

    def apply(self, vlm) -> VisualSession:
        return VisualSession(vlm, self)


def _cells(image: ImageTokens) -> Tensor:
    """(crop, row, col) of each row of the image's view ``(n, 3)``."""
    cells = []
    for crop, (rows, cols) in enumerate(image.view.grids):
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        cells.append(torch.stack([torch.full_like(r, crop), r, c], dim=-1).view(-1, 3))
    return torch.cat(cells)


def _window(layer: nn.Module, config) -> int | None:
    """The sliding window of a decoder layer (HF's rule), or None for full attention."""
    kind = getattr(layer, "attention_type", None)
    types = getattr(config, "layer_types", None)
    if kind is None and types is not None:
        kind = types[layer.self_attn.layer_idx]
    if kind in ("sliding_attention", "chunked_attention"):
        return getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
    return None


def _side_attention(module: nn.Module, hidden: Tensor, rope, mask: Tensor | None, queries: Tensor,
                    valid: Tensor) -> Tensor:
    """Softmax attention ``(b, h, q, n)`` of the tokens at ``queries`` ``(b, q)`` in ``module``, from its
    normalised input ``hidden`` ``(b, n, d)``, rotary tables and mask (None: causal over ``valid`` keys)."""
    b, n, _ = hidden.shape
    rows = queries.to(hidden.device)
    q_hidden = take(hidden, rows, 1)
    q_rope = tuple(take(t, rows, -2) for t in rope)
    q = rotated_queries(module, q_hidden, q_rope).float()
    k = per_query_head(rotated_keys(module, hidden, rope).float(), q.shape[1])
    logits = (q @ k.transpose(-1, -2)) * softmax_scale(module)  # (b, h, q, n)
    if mask is None:
        coords = torch.arange(n, device=hidden.device).expand(b, n)
        allowed = build_mask(rows, coords, valid.to(hidden.device), None, None)
    else:
        expanded = mask.expand(b, *mask.shape[1:])
        allowed = expanded.gather(2, rows[:, None, :, None].expand(b, expanded.shape[1], rows.shape[1], n))
        allowed = allowed if allowed.dtype == torch.bool else allowed == 0
    logits = logits.masked_fill(~allowed, -torch.inf)
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)


def _follow_batch_changes(cache) -> None:
    """Make the cache's `Shortened` follow beam search's reordering and batch selections of the cache."""
    if getattr(cache, "_tokenomy_follows", False):
        return
    cache._tokenomy_follows = True
    for name, change in (("reorder_cache", lambda idx: (lambda t: t.index_select(0, idx.to(t.device)))),
                         ("batch_repeat_interleave", lambda n: (lambda t: t.repeat_interleave(n, dim=0))),
                         ("batch_select_indices", lambda idx: (lambda t: t[idx]))):
        original = getattr(cache, name, None)
        if original is None:
            continue

        def wrapped(arg, original=original, change=change):
            out = original(arg)
            state = getattr(cache, STATE, None)
            if state is not None:
                state.index_batch(change(arg))
            return out

        setattr(cache, name, wrapped)
