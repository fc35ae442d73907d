"""Scores for visual tokens before the language model: what a method knows about one image, and how much each
of its tokens (or crops) matters.

Model-agnostic: a VLM adapter (`tokenomy.adapters.vlm`) fills an `ImageView` from whatever family it reads;
scores read only the view. Higher scores mean "keep"; crop weights are relative shares of an image's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class ImageView:
    """One image as the vision tower saw it, token by token as the language model reads it.

    features: ``(n, d)`` one row per visual token the language model reads for this image (content tokens:
        no row/tile separators), in the tower's feature space — the projector's per-token input — crop after
        crop, raster order within a crop.
    grids: ``(rows, cols)`` of each crop's token grid; their products sum to ``n``.
    num_layers: the vision tower's depth.
    attention_fn: ViT layer -> ``(n,)`` attention each token receives in that layer: from the crop's [CLS]
        token where the tower has one, else the mean over the crop's patches as queries (SigLIP, Qwen's ViT);
        a token standing for several patches (a 2x2 merge, a pixel shuffle, a pooling window) sums theirs.
    cls: ``(crops, d)`` each crop's [CLS] feature in the feature layer, or None for towers without one.
    thumbnail: index of the crop that shows the whole image at low resolution, or None.
    tiles: ``(rows, cols)`` arrangement of the other crops, in raster order, when the model knows it.
    """

    features: Tensor
    grids: tuple[tuple[int, int], ...]
    num_layers: int
    attention_fn: Callable[[int], Tensor] = field(repr=False)
    cls: Tensor | None = None
    thumbnail: int | None = None
    tiles: tuple[int, int] | None = None
    _memo: dict = field(default_factory=dict, repr=False)

    @property
    def num_crops(self) -> int:
        return len(self.grids)

    @property
    def sizes(self) -> list[int]:
        """Tokens per crop."""
        return [rows * cols for rows, cols in self.grids]

    def crop(self, index: int) -> slice:
        """The rows of ``features`` that belong to crop ``index``."""
        start = sum(self.sizes[:index])
        return slice(start, start + self.sizes[index])

    def crop_of(self) -> Tensor:
        """The crop each token belongs to, ``(n,)``."""
        return torch.repeat_interleave(torch.arange(self.num_crops), torch.tensor(self.sizes))

    def remember(self, key, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per view and ``key`` (scores are shared by all crops of an image)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def attention(self, layer: int) -> Tensor:
        """Attention each token receives ``(n,)`` in ViT layer ``layer`` (negative counts from the end)."""
        layer = layer % self.num_layers
        return self.remember(("attention", layer), lambda: self.attention_fn(layer))


@dataclass
class ClsAttention:
    """[CLS] attention over the tokens, averaged over ``layers`` (None: every ViT layer, VTC-CLS's ensemble).
    On towers without [CLS], the attention each token receives from the crop's patches (`ImageView`)."""

    layers: tuple[int, ...] | None = (-1,)

    @property
    def vision_layers(self) -> tuple[int, ...] | None:
        """The ViT layers read (None: all), so the site records only those."""
        return self.layers

    def __call__(self, view: ImageView) -> Tensor:
        layers = range(view.num_layers) if self.layers is None else self.layers
        return torch.stack([view.attention(layer) for layer in layers]).mean(0)


def cls_similarity(view: ImageView) -> Tensor:
    """Cosine similarity of every token with its crop's [CLS] feature ``(n,)`` (TCC's sampling); on towers
    without [CLS], with the crop's mean token (the global descriptor such towers pool)."""
    crop = view.crop_of()
    if view.cls is not None:
        anchor = view.cls.float()
    else:
        anchor = torch.stack([view.features[view.crop(i)].float().mean(0) for i in range(view.num_crops)])
    return F.cosine_similarity(view.features.float(), anchor[crop.to(anchor.device)], dim=-1)


@dataclass
class RandomScore:
    """Uniform random scores, the baseline every method must beat. Drawn afresh from ``seed`` for every
    image, so a prompt re-run (or decoded without a cache) sees the same choice."""

    seed: int = 0

    def __call__(self, view: ImageView) -> Tensor:
        return torch.rand(view.features.shape[0], generator=torch.Generator().manual_seed(self.seed))


def patch_density(view: ImageView) -> Tensor:
    """TCC's information density of each crop ``(c,)``: the mean over tokens of ``1 - `` the cosine
    similarity to the most similar other token of the crop. Repetitive crops (blank margins, uniform
    background) score near 0; crops whose tokens all differ score high."""
    unit = F.normalize(view.features.float(), dim=-1)
    density = []
    for i in range(view.num_crops):
        crop = unit[view.crop(i)]
        similarity = crop @ crop.T
        similarity.fill_diagonal_(-1.0)
        density.append((1.0 - similarity.amax(dim=-1)).clamp_min(0).mean() if crop.shape[0] > 1 else crop.new_zeros(()))
    return torch.stack(density)


@dataclass
class ThumbnailAttention:
    """HiRED's crop weights: the thumbnail's attention in an early ViT ``layer``, summed over the region each
    tile covers; the thumbnail itself gets the mean of the tiles' weights. Without a thumbnail, or where the
    model does not say how its tiles are arranged, all crops weigh the same."""

    layer: int = 1

    @property
    def vision_layers(self) -> tuple[int, ...]:
        return (self.layer,)

    def __call__(self, view: ImageView) -> Tensor:
        equal = torch.ones(view.num_crops)
        if view.thumbnail is None or view.tiles is None or view.num_crops == 1:
            return equal
        rows, cols = view.tiles
        if rows * cols != view.num_crops - 1:
            return equal
        grid = view.grids[view.thumbnail]
        thumb = view.attention(self.layer)[view.crop(view.thumbnail)].float().view(grid)
        cells = F.adaptive_avg_pool2d(thumb[None, None], (rows, cols)).flatten().cpu()
        weights = cells.clone().tolist()
        weights.insert(view.thumbnail, float(cells.mean()))
        return torch.tensor(weights)
