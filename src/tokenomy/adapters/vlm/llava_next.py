"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`) and LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`).

AnyRes: each image is a base crop (the whole image, resized) plus a grid of crops at full resolution; a
CLIP (NeXT, [CLS] dropped) or SigLIP (OneVision) tower and a per-token MLP projector, then the family's
``pack_image_features`` arranges the grid crops into one map, removes the rows or columns that only show the
padding, (OneVision) downsamples large maps bilinearly, and ends every row with an ``image_newline`` token.
The language model reads ``[base tokens][packed rows, each + newline]``. tokenomy sees two crops: the base
(the thumbnail) and the packed map (its rows and columns after unpadding); which placeholder carries which
token is read off the family's own packing run on token indices. Newline placeholders are separators.
A OneVision map downsampled bilinearly mixes several projected tokens into one: the view's features mix the
tower features with the same weights, and a merged token is projected from such a mixture.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from tokenomy.adapters.vlm.base import ImageTokens
from tokenomy.adapters.vlm.llava import LlavaAdapter
from tokenomy.score.vision import ImageView


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT and LLaVA-OneVision (see the module docstring): LLaVA's tower and projector, AnyRes packing."""

    model_types = ("llava_next", "llava_onevision")
    one_token_per_patch = False  # unpadding and OneVision's downsampling drop or mix tokens

    def __init__(self, vlm):
        super().__init__(vlm)
        self.inner = vlm.model

    def _crops(self, inputs: dict) -> list[int]:
        """Crops per image, as the model counts them (OneVision: one when a prompt holds several images)."""
        sizes = inputs["image_sizes"]
        counts = inputs.get("batch_num_images")
        patching = [True] * len(sizes) if counts is None else [int(n) == 1 for n in counts for _ in range(int(n))]
        return [image_size_to_num_patches(image_size=size, grid_pinpoints=self.config.image_grid_pinpoints,
                                          patch_size=self.config.vision_config.image_size) if patch else 1
                for size, patch in zip(sizes, patching)]

    def _packing(self, crops: int, size: Tensor, tokens: int) -> Tensor:
        """How the family packs one image: ``(rows, crops * tokens)`` weights of each placeholder row over the
        crops' tokens (one-hot, or bilinear mixtures), all zero for a newline row."""
        if self.config.model_type == "llava_next":
            options = {"vision_feature_select_strategy": self.config.vision_feature_select_strategy}
        else:
            options = {"vision_aspect_ratio": self.config.vision_aspect_ratio}
        n = crops * tokens
        with torch.no_grad():
            index = torch.arange(n, dtype=torch.float64).view(crops, tokens, 1)
            packed = self.inner.pack_image_features([index], size[None], image_newline=torch.tensor([-1.0],
                                                    dtype=torch.float64), **options)[0][0][:, 0]
            if torch.equal(packed, packed.round()):
                source = packed.long()
                weights = torch.zeros(source.numel(), n, dtype=torch.float32)
                rows = (source >= 0).nonzero().flatten()
                weights[rows, source[rows]] = 1.0
                return weights
            onehot = torch.eye(n, dtype=torch.float64).view(crops, tokens, n)
            return self.inner.pack_image_features([onehot], size[None], image_newline=torch.zeros(n, dtype=torch.float64),
                                                  **options)[0][0].float()

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        features = record["features"]
        tokens = features.shape[1]
        hidden = record["tower"].hidden_states[self.feature_layer]
        project = lambda x: self.projector(x.unsqueeze(0))[0]  # noqa: E731
        images, start = [], 0
        for crops, size in zip(self._crops(inputs), inputs["image_sizes"]):
            rows = slice(start, start + crops)
            start += crops
            weights = self._packing(crops, size.cpu(), tokens)
            content = weights.sum(-1) > 0
            mix = weights[content].to(features.device, features.dtype)  # (n, crops * tokens)
            slots = torch.full((weights.shape[0],), -1, dtype=torch.long)
            slots[content] = torch.arange(int(content.sum()))
            rest = weights.shape[0] - tokens
            lines = int((~content[tokens:]).sum())
            grids = ((self.side, self.side),) + (((lines, (rest - lines) // lines),) if rest > lines else ())

            def attention(layer, rows=rows, mix=mix):
                return mix @ self.tower_attention(record, layer, rows).flatten().to(mix.dtype)

            cls = None
            if self.has_cls:
                own = hidden[rows, 0]
                cls = own[:1] if len(grids) == 1 else torch.stack([own[0], own[1:].mean(0)])
            view = ImageView(mix @ features[rows].flatten(0, 1), grids, len(self.layers), attention, cls=cls,
                             thumbnail=0 if len(grids) > 1 else None)
            images.append(ImageTokens(view, slots, project))
        return images
