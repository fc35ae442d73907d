"""Scores for visual tokens: what a pre-LLM method knows about one sample's crops, and how much each
patch (or crop) matters. Model-agnostic: the site fills a `CropView`; [CLS] attention is formed by the
VLM adapter. Higher scores mean "keep"; crop weights are relative shares of a sample's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy.models.vision_adapters import CropLayout


@dataclass
class CropView:
    """One sample's crops as the vision tower saw them.

    features: ``(c, n, d)`` patch features handed to the projector (no [CLS]), crops in layout order.
    cls: ``(c, d)`` the [CLS] token of the same layer, or None for towers without one.
    layout: how crops are arranged (thumbnail first, then the grid).
    attention_fn: ViT layer index -> ``(c, n)`` [CLS] attention over the patches in that layer.
    """

    features: Tensor
    cls: Tensor | None
    layout: CropLayout
    num_layers: int
    attention_fn: Callable[[int], Tensor] = field(repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def remember(self, key, compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per view and ``key`` (scores are shared by all crops of a sample)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def attention(self, layer: int) -> Tensor:
        """[CLS] attention over patches ``(c, n)`` in ViT layer ``layer`` (negative counts from the end)."""
        layer = layer % self.num_layers
        return self.remember(("attention", layer), lambda: self.attention_fn(layer))


@dataclass
class ClsAttention:
    """[CLS] attention over patches, averaged over ``layers`` (None: every ViT layer, VTC-CLS's ensemble)."""

    layers: tuple[int, ...] | None = (-1,)

    def __call__(self, view: CropView) -> Tensor:
        layers = range(view.num_layers) if self.layers is None else self.layers
        return torch.stack([view.attention(layer) for layer in layers]).mean(0)


def cls_similarity(view: CropView) -> Tensor:
    """Cosine similarity of every patch feature with its crop's [CLS] feature ``(c, n)`` (TCC's sampling)."""
    if view.cls is None:
        raise ValueError("cls_similarity needs a [CLS] token")
    return F.cosine_similarity(view.features.float(), view.cls.float().unsqueeze(1), dim=-1)


@dataclass
class RandomScore:
    """Uniform random scores, the baseline every method must beat. Drawn afresh from ``seed`` for every
    sample, so a prompt re-run (or decoded without a cache) sees the same choice."""

    seed: int = 0

    def __call__(self, view: CropView) -> Tensor:
        return torch.rand(view.features.shape[:2], generator=torch.Generator().manual_seed(self.seed))


def patch_density(view: CropView) -> Tensor:
    """TCC's information density of each crop ``(c,)``: the mean over patches of ``1 - `` the cosine
    similarity to the most similar other patch of the crop. Repetitive crops (blank margins, uniform
    background) score near 0; crops whose patches all differ score high."""
    unit = F.normalize(view.features.float(), dim=-1)
    similarity = unit @ unit.transpose(1, 2)
    similarity.diagonal(dim1=1, dim2=2).fill_(-1.0)
    return (1.0 - similarity.amax(dim=-1)).clamp_min(0).mean(dim=-1)


@dataclass
class ThumbnailAttention:
    """HiRED's crop weights: the thumbnail's [CLS] attention in an early ViT ``layer``, summed over the
    region each grid crop covers; the thumbnail itself gets the mean of the grid crops' weights. Layouts
    without a thumbnail weigh all crops equally."""

    layer: int = 1

    def __call__(self, view: CropView) -> Tensor:
        layout = view.layout
        if not layout.thumbnail or layout.num_crops == 1:
            return torch.ones(layout.num_crops)
        thumb = view.attention(self.layer)[0].view(layout.side, layout.side)
        cells = F.adaptive_avg_pool2d(thumb[None, None], (layout.rows, layout.cols)).flatten()
        return torch.cat([cells.mean().view(1), cells])
