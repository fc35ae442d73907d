"""Idefics3 (`Idefics3ForConditionalGeneration`) and SmolVLM (`SmolVLMForConditionalGeneration`).

A SigLIP-like tower without [CLS] sees each tile of an image (a grid of crops plus the whole image, last) at
a fixed size; the connector's pixel shuffle turns every ``s x s`` block of patches into one token (their
features side by side) and a linear projection maps it. The prompt spells each tile as its own run of
placeholders behind ``<row_r_col_c>`` / ``<global-img>`` tokens, which the model's config does not name: tokenomy
treats the tiles of one prompt as the crops of one image (one budget per prompt), without a known
arrangement. Padded patches of a tile are left out of the attention scores.
"""

from __future__ import annotations

import torch

from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, pool_to_tokens
from tokenomy.score.vision import ImageView


class Idefics3Adapter(VLMAdapter):
    """Idefics3 and SmolVLM (see the module docstring)."""

    model_types = ("idefics3", "smolvlm")

    def __init__(self, vlm):
        super().__init__(vlm)
        inner = vlm.model
        self.tower = inner.vision_model
        self.layers = self.tower.encoder.layers
        self.projection = self.features_at = inner.connector.modality_projection
        self.scale = self.config.scale_factor
        vision = self.config.vision_config
        self.side = vision.image_size // vision.patch_size

    def extra_capture(self, record: dict) -> list:
        def patches(module, args, kwargs):  # which patches of each tile are real
            record["patch_mask"] = kwargs.get("patch_attention_mask")

        return [self.tower.register_forward_pre_hook(patches, with_kwargs=True)]

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        features = record["features"]  # (tiles, tokens, d * s * s)
        tokens = features.shape[1]
        grid = (self.side // self.scale,) * 2
        per_row = self.placeholders(inputs["input_ids"]).sum(1).tolist()
        mask = record.get("patch_mask")
        images, start = [], 0
        for count in per_row:
            if count == 0:
                continue
            tiles = count // tokens
            rows = slice(start, start + tiles)
            start += tiles

            def attention(layer, rows=rows):
                received = self.tower_attention(record, layer, rows, None if mask is None else mask[rows].flatten(1))
                return pool_to_tokens(received, self.side, self.side, self.scale).flatten()

            view = ImageView(features[rows].flatten(0, 1), (grid,) * tiles, len(self.layers), attention)
            images.append(ImageTokens(view, torch.arange(tiles * tokens), self.projection))
        return images
