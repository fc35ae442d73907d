"""The visual-token site: fewer image tokens reach the language model of a LLaVA-style VLM.

Two pieces, kept apart from the methods:

* `VisualSession` owns the plumbing once. An ``encode`` function turns a batch's ``pixel_values`` into
  each sample's reduced visual features and how many tokens each crop kept; the session then removes
  the surplus image placeholders from ``input_ids`` (and the matching ``attention_mask``/``labels``
  columns) so the language model sees a shorter prompt with correct positions and masks, and hands the
  reduced features to the model's own ``get_image_features``. ``generate()`` returns the caller's
  original prompt followed by the new tokens, so slicing by the input length keeps working.
* `PreLLM` is the ``encode`` of methods that act between the vision encoder and the projector: a crop
  budget (how a sample's tokens are shared among its crops) and a token choice (which tokens of a crop
  survive, or what they merge into), both reading a `CropView`. ToMe, which merges inside the ViT, has
  its own ``encode`` in `tokenomy.sites.vit`.

Budgets: a sample keeps ``kept_count(keep, crops * patches)`` visual tokens — exactly, every time. The
crop budget splits them (`tokenomy.budget.split_budget`); when it is smaller than the number of crops,
some crops keep no token at all (the thumbnail first in line when crops weigh the same).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tokenomy._validation import TokenomyError, check_fraction
from tokenomy.budget import kept_count, split_budget
from tokenomy.models.vision_adapters import CropLayout, VisionParts, cls_attention, has_cls, vision_parts
from tokenomy.score.vision import CropView
from tokenomy.select import average_pool, k_center, merge_into_nearest, most_isolated, top_k

SITE = "pre-llm"

# One sample's reduced visual features (tokens, llm_width) and the tokens each crop kept (crops,).
Encoded = list[tuple[Tensor, Tensor]]


@dataclass
class VisualStats:
    """What a session kept: visual tokens before and after, per-crop counts, and the selection time."""

    tokens_seen: int = 0
    tokens_kept: int = 0
    crop_counts: list[list[int]] = field(default_factory=list)
    selection_seconds: float = 0.0


class VisualSession:
    """Context manager applying an ``encode`` function to every image a VLM processes (see module doc)."""

    def __init__(self, vlm, encode: Callable[[Tensor, VisionParts, CropLayout, VisualStats], Encoded]):
        self.vlm, self.encode = vlm, encode
        self.parts = vision_parts(vlm)
        self.layout = CropLayout.of(vlm.config)
        self.stats = VisualStats()
        self._pending: list[Tensor] | None = None
        self._current: list[Tensor] | None = None

    def __enter__(self) -> "VisualSession":
        if getattr(self.vlm, "_tokenomy_visual", None) is not None:
            raise TokenomyError("a visual-token method is already applied to this model; nest `with` blocks of one")
        self.vlm._tokenomy_visual = self
        self.parts.model.get_image_features = self._image_features
        self.vlm.generate = self._generate
        self._hook = self.vlm.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        del self.parts.model.get_image_features, self.vlm.generate
        self.vlm._tokenomy_visual = None

    # -- plumbing -------------------------------------------------------------------------------------
    def _reduce(self, input_ids: Tensor, pixel_values: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Encode the batch's images; return which prompt columns survive ``(b, L)`` and the features."""
        b = input_ids.shape[0]
        per_sample = self.layout.num_crops
        if pixel_values.shape[0] != b * per_sample:
            raise TokenomyError(
                f"each prompt must carry one image of {per_sample} crop(s): got {pixel_values.shape[0]} crops "
                f"for {b} prompts"
            )
        with torch.no_grad():
            encoded = self.encode(pixel_values, self.parts, self.layout, self.stats)
        placeholder = input_ids == self.parts.image_token_id
        n = self.layout.tokens_per_crop
        expected = per_sample * n
        keep = torch.ones_like(placeholder)
        for row, (_, counts) in enumerate(encoded):
            columns = placeholder[row].nonzero().flatten()
            if columns.numel() != expected:
                raise TokenomyError(
                    f"prompt {row} has {columns.numel()} image placeholders; expected {expected} "
                    f"({per_sample} crop(s) x {n} patches)"
                )
            within = torch.arange(expected) % n
            crop = torch.arange(expected) // n
            keep[row, columns] = (within < counts[crop]).to(keep.device)
        return keep, [features for features, _ in encoded]

    @staticmethod
    def _shrink(keep: Tensor, tensor: Tensor | None) -> Tensor | None:
        if tensor is None or tensor.ndim < 2 or tensor.shape[:2] != keep.shape:
            return tensor
        return tensor[keep].view(keep.shape[0], -1, *tensor.shape[2:])

    def _pre_forward(self, module, args, kwargs):
        if kwargs.get("pixel_values") is None:
            return None
        if self._pending is not None:  # generate() already shrank the prompt
            self._current, self._pending = self._pending, None
            return None
        if args or kwargs.get("input_ids") is None:
            raise TokenomyError("with a visual-token method, call the model with input_ids=... and pixel_values=...")
        keep, self._current = self._reduce(kwargs["input_ids"], kwargs["pixel_values"])
        for name in ("input_ids", "attention_mask", "labels", "position_ids"):
            kwargs[name] = self._shrink(keep, kwargs.get(name))
        if kwargs.get("cache_position") is not None:
            kwargs["cache_position"] = kwargs["cache_position"][: keep.sum(1).max()]
        return args, kwargs

    def _image_features(self, pixel_values=None, **kwargs):
        if self._current is None:
            raise TokenomyError("image features were requested outside a forward pass the session prepared")
        features, self._current = self._current, None
        return BaseModelOutputWithPooling(pooler_output=features)

    def _generate(self, input_ids: Tensor | None = None, pixel_values: Tensor | None = None, **kwargs):
        original = type(self.vlm).generate.__get__(self.vlm)
        if pixel_values is None:
            return original(input_ids=input_ids, **kwargs)
        keep, self._pending = self._reduce(input_ids, pixel_values)
        attention_mask = self._shrink(keep, kwargs.pop("attention_mask", None))
        short = self._shrink(keep, input_ids)
        try:
            out = original(input_ids=short, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)
        finally:
            self._pending = None
        sequences = out if isinstance(out, Tensor) else out.sequences
        restored = torch.cat([input_ids, sequences[:, short.shape[1]:]], dim=1)
        if isinstance(out, Tensor):
            return restored
        out.sequences = restored
        return out


# -- pre-LLM methods: crop budget x token choice ------------------------------------------------------
class CropWeights(Protocol):
    """Relative share of a sample's budget per crop, ``(c,)`` >= 0."""

    def __call__(self, view: CropView) -> Tensor: ...


class TokenChoice(Protocol):
    """Which ``k`` tokens of crop ``crop`` reach the projector: ``(k, d)`` features, spatial order."""

    def __call__(self, view: CropView, crop: int, k: int) -> Tensor: ...


@dataclass
class TopScored:
    """Keep the ``k`` highest-scored patches of the crop (``score``: CropView -> ``(c, n)``)."""

    score: Callable[[CropView], Tensor]

    def __call__(self, view: CropView, crop: int, k: int) -> Tensor:
        return view.features[crop, self.kept(view, crop, k)]

    def kept(self, view: CropView, crop: int, k: int) -> Tensor:
        scores = view.remember(("score", id(self)), lambda: self.score(view))
        return top_k(scores[crop], k)[0]


@dataclass
class Diverse:
    """Greedy k-center over patch features, from a starting patch (``start``: view, crop -> i, or a list of
    starting patches, as `k_center` takes); ``crop`` None selects over every crop's patches at once (indices
    into the flattened crops). ``merge``: every pruned patch is folded into its most similar kept one
    (PruMerge's step) instead of being dropped."""

    start: Callable[[CropView, int | None], int | list[int]]
    merge: bool = False

    def __call__(self, view: CropView, crop: int, k: int) -> Tensor:
        return self.take(view.features[crop], self.indices(view, crop, k))

    def indices(self, view: CropView, crop: int | None, k: int) -> Tensor:
        features = view.features.flatten(0, 1) if crop is None else view.features[crop]
        return k_center(features, k, self.start(view, crop))

    def take(self, features: Tensor, kept: Tensor) -> Tensor:
        """The kept rows of ``features`` ``(n, d)``, each absorbing its pruned neighbours when merging."""
        return merge_into_nearest(features, kept, features) if self.merge else features[kept]


@dataclass
class MergePruned(TopScored):
    """Keep the top-scored patches, then fold every pruned patch into its most similar kept one."""

    def __call__(self, view: CropView, crop: int, k: int) -> Tensor:
        features = view.features[crop]
        return merge_into_nearest(features, self.kept(view, crop, k), features)


def pooled(view: CropView, crop: int, k: int) -> Tensor:
    """Average-pool the crop's patch grid down to ``k`` tokens."""
    side = view.layout.side
    return average_pool(view.features[crop], k, side, side)


def first_isolated(view: CropView, crop: int | None) -> int:
    """DivPrune's start: the patch whose nearest neighbour is farthest (of the crop, or of every crop)."""
    return most_isolated(view.features.flatten(0, 1) if crop is None else view.features[crop])


def first_attended(view: CropView, crop: int | None) -> int:
    """ToDRE's start: the patch [CLS] attends to most in the last layer (of the crop, or of every crop)."""
    attention = view.attention(-1)
    return int((attention.flatten() if crop is None else attention[crop]).argmax())


@dataclass
class PreLLM:
    """A pre-LLM method: ``keep`` of a sample's visual tokens, shared among crops by ``crop_weights``
    (even when None), chosen per crop by ``choose``. ``joint``: one selection over every crop's patches at
    once (``choose.indices(view, None, k)``), so crops get what the selection gives them."""

    keep: float
    choose: TokenChoice
    crop_weights: CropWeights | None = None
    needs_cls: bool = False
    joint: bool = False

    def __post_init__(self):
        self.keep = check_fraction("keep", self.keep)
        if self.joint and (self.crop_weights is not None or not hasattr(self.choose, "take")):
            raise TokenomyError("a joint selection takes no crop weights and needs a choice with `indices` and "
                                "`take` (e.g. Diverse)")

    def apply(self, vlm) -> VisualSession:
        session = VisualSession(vlm, self.encode)
        if self.needs_cls and not has_cls(session.parts):
            raise TokenomyError("this method needs a vision tower with a [CLS] token (CLIP-style); this one has none")
        return session

    def encode(self, pixel_values: Tensor, parts: VisionParts, layout: CropLayout, stats: VisualStats) -> Encoded:
        out = parts.tower(pixel_values.to(parts.tower.dtype), output_hidden_states=True)
        hidden = out.hidden_states
        chosen = hidden[parts.feature_layer]
        cls = chosen[:, 0] if has_cls(parts) else None
        features = chosen[:, 1:] if parts.drops_cls else chosen
        if features.shape[1] != layout.tokens_per_crop:
            raise TokenomyError(
                f"the vision tower gives {features.shape[1]} patches per crop; the layout expects "
                f"{layout.tokens_per_crop} ({layout.side} x {layout.side})"
            )
        c, n = layout.num_crops, layout.tokens_per_crop
        encoded = []
        for start in range(0, features.shape[0], c):
            tic = time.perf_counter()
            crops = slice(start, start + c)
            view = CropView(
                features[crops], None if cls is None else cls[crops], layout, len(parts.layers),
                lambda layer, crops=crops: cls_attention(parts, hidden[layer][crops], layer),
            )
            total = int(kept_count(self.keep, c * n))
            if self.joint:
                chosen = self.choose.indices(view, None, total)
                counts = torch.bincount(chosen.cpu() // n, minlength=c)
                kept = self.choose.take(view.features.flatten(0, 1), chosen)
            else:
                weights = torch.ones(c) if self.crop_weights is None else self.crop_weights(view).float().cpu()
                counts = split_budget(total, weights, torch.full((c,), n))
                kept = torch.cat([self.choose(view, i, int(k)) for i, k in enumerate(counts) if k > 0])
            stats.selection_seconds += time.perf_counter() - tic
            stats.tokens_seen += c * n
            stats.tokens_kept += kept.shape[0]
            stats.crop_counts.append(counts.tolist())
            encoded.append((parts.projector(kept.unsqueeze(0))[0], counts))
        return encoded
