"""Methods that act before the language model: each image keeps a budget of its tokens, shared among its
crops by a crop rule, chosen by a token choice within each crop (or over all crops at once).

Budget: an image keeps ``kept_count(keep, p)`` of its ``p`` placeholders, exactly — every one a content token
(row separators such as LLaVA-NeXT's newlines are dropped when an image is reduced, kept at ``keep = 1``).
The crop rule splits it (`tokenomy.budget.split_budget`); when it is smaller than the number of crops, some
crops keep nothing (the first in line when crops weigh the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_fraction
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter
from tokenomy.budget import kept_count, split_budget
from tokenomy.score.vision import ImageView
from tokenomy.select import average_pool, cosine_distance, k_center, merge_into_nearest, most_isolated, pool_representatives, top_k
from tokenomy.sites.vision.session import Reduction, VisualMethods, VisualSession

SITE = "pre-llm"


def _rows(view: ImageView, crop: int | None) -> Tensor:
    """The view's rows of crop ``crop`` (None: every crop)."""
    n = view.features.shape[0]
    return torch.arange(n) if crop is None else torch.arange(n)[view.crop(crop)]


def _distance(view: ImageView, crop: int | None) -> Tensor:
    """Cosine distances between the tokens of crop ``crop`` (None: every crop), once per view: a start rule and
    the traversal share them."""
    return view.remember(("distance", crop), lambda: cosine_distance(view.features[_rows(view, crop).to(
        view.features.device)]))


def vision_layers_of(*parts) -> set[int]:
    """ViT layers whose attention the parts read (their ``vision_layers``; None: every layer)."""
    layers: set = set()
    for part in parts:
        wanted = getattr(part, "vision_layers", ())
        layers |= {None} if wanted is None else set(wanted)
    return layers


class CropWeights(Protocol):
    """Relative share of an image's budget per crop, ``(c,)`` >= 0."""

    def __call__(self, view: ImageView) -> Tensor: ...


class TokenChoice(Protocol):
    """Which ``k`` tokens of crop ``crop`` (None: of every crop at once) survive, and what they carry."""

    def __call__(self, view: ImageView, crop: int | None, k: int) -> Reduction: ...


@dataclass
class TopScored:
    """Keep the ``k`` highest-scored tokens (``score``: ImageView -> ``(n,)``)."""

    score: Callable[[ImageView], Tensor]

    @property
    def vision_layers(self):
        return getattr(self.score, "vision_layers", ())

    def __call__(self, view: ImageView, crop: int | None, k: int) -> Reduction:
        return Reduction(self.kept(view, crop, k))

    def kept(self, view: ImageView, crop: int | None, k: int) -> Tensor:
        scores = view.remember(("score", id(self)), lambda: self.score(view).cpu())
        rows = _rows(view, crop)
        return rows[top_k(scores[rows], k)[0]]


@dataclass
class MergePruned(TopScored):
    """Keep the top-scored tokens, then fold every pruned token of the crop into its most similar kept one."""

    def __call__(self, view: ImageView, crop: int | None, k: int) -> Reduction:
        rows = _rows(view, crop)
        kept = self.kept(view, crop, k)
        local = torch.searchsorted(rows, kept)
        features = view.features[rows.to(view.features.device)]
        return Reduction(kept, merge_into_nearest(features, local.to(features.device), features))


@dataclass
class Diverse:
    """Greedy k-center over token features from a starting token (``start``: view, crop -> index among the
    crop's rows, or a list of them); ``crop`` None selects over every crop at once. ``merge``: every pruned
    token is folded into its most similar kept one (PruMerge's step) instead of being dropped."""

    start: Callable[[ImageView, int | None], int | list[int]]
    merge: bool = False

    @property
    def vision_layers(self):
        return getattr(self.start, "vision_layers", ())

    def __call__(self, view: ImageView, crop: int | None, k: int) -> Reduction:
        rows = _rows(view, crop)
        features = view.features[rows.to(view.features.device)]
        local = k_center(features, k, self.start(view, crop), _distance(view, crop))
        merged = merge_into_nearest(features, local, features) if self.merge else None
        return Reduction(rows[local.cpu()], merged)


@dataclass
class Pooled:
    """Average-pool each crop's token grid down to ``k`` tokens (each sits where its window starts)."""

    def __call__(self, view: ImageView, crop: int | None, k: int) -> Reduction:
        if crop is None:
            raise TokenomyError("pooling works crop by crop")
        rows = _rows(view, crop)
        h, w = view.grids[crop]
        pooled = average_pool(view.features[rows.to(view.features.device)], k, h, w)
        return Reduction(rows[pool_representatives(k, h, w)], pooled)


def first_isolated(view: ImageView, crop: int | None) -> int:
    """DivPrune's start: the token whose nearest neighbour is farthest (of the crop, or of every crop)."""
    return most_isolated(view.features[_rows(view, crop).to(view.features.device)], _distance(view, crop))


@dataclass(frozen=True)
class FirstAttended:
    """ToDRE's start: the token the tower attends to most in its last layer ([CLS] attention, or its substitute
    on towers without [CLS]), of the crop or of every crop."""

    vision_layers: tuple[int, ...] = (-1,)

    def __call__(self, view: ImageView, crop: int | None) -> int:
        return int(view.attention(-1)[_rows(view, crop).to(view.features.device)].argmax())


@dataclass
class PreLLM:
    """A pre-LLM method: ``keep`` of an image's placeholders, shared among crops by ``crop_weights`` (even
    when None), chosen per crop by ``choose``; ``joint``: one choice over every crop's tokens at once, so crops
    get what the choice gives them."""

    keep: float
    choose: TokenChoice
    crop_weights: CropWeights | None = None
    joint: bool = False

    def __post_init__(self):
        self.keep = check_fraction("keep", self.keep)
        if self.joint and self.crop_weights is not None:
            raise TokenomyError("a joint selection over every crop takes no crop weights")

    @property
    def reduces(self) -> bool:
        return self.keep < 1.0

    def check(self, adapter: VLMAdapter) -> None:
        """Every family can run a pre-LLM method (towers without [CLS] read the substitute, `ImageView`)."""

    def vision_layers(self, depth: int) -> set[int]:
        wanted = vision_layers_of(self.choose, self.crop_weights)
        return set(range(depth)) if None in wanted else {layer % depth for layer in wanted}

    def as_visual(self) -> VisualMethods:
        return VisualMethods(before=self)

    def apply(self, vlm) -> VisualSession:
        return self.as_visual().apply(vlm)

    def reduce(self, image: ImageTokens, index: int, record: dict) -> Reduction:
        view = image.view
        n = view.features.shape[0]
        total = min(int(kept_count(self.keep, image.placeholders)), n)
        if self.joint:
            return self.choose(view, None, total)
        weights = torch.ones(view.num_crops) if self.crop_weights is None else self.crop_weights(view).float().cpu()
        counts = split_budget(total, weights, torch.tensor(view.sizes))
        parts = [self.choose(view, crop, int(k)) for crop, k in enumerate(counts.tolist()) if k > 0]
        kept = torch.cat([p.kept for p in parts])
        features = None if parts[0].features is None else torch.cat([p.features for p in parts])
        return Reduction(kept, features)
