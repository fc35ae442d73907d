"""InternVL (`InternVLForConditionalGeneration`).

InternViT (with [CLS], dropped by the ``default`` strategy) sees each tile of an image — a grid of crops
plus a thumbnail, last, when there is more than one — at a fixed size; a pixel shuffle turns every ``s x s``
block of patches into one token (features side by side) and a LayerNorm + MLP projector maps it. All tiles
of an image sit in one run of ``<IMG_CONTEXT>`` placeholders between ``<img>`` and ``</img>``: each run is an
image. The processor's tile arrangement does not reach the model, so tiles have no known arrangement.
"""

from __future__ import annotations

import torch

from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, pool_to_tokens
from tokenomy.score.vision import ImageView


class InternVLAdapter(VLMAdapter):
    """InternVL (see the module docstring)."""

    model_types = ("internvl",)
    has_cls = True
    attention_name = "attention"

    def __init__(self, vlm):
        super().__init__(vlm)
        inner = vlm.model
        self.tower = inner.vision_tower
        self.layers = self.tower.encoder.layer
        self.projector = self.features_at = inner.multi_modal_projector
        self.scale = round(1 / self.config.downsample_ratio)
        vision = self.config.vision_config
        self.side = vision.image_size[0] // vision.patch_size[0]

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        features = record["features"]  # (tiles, tokens, 4 d)
        tokens = features.shape[1]
        grid = (self.side // self.scale,) * 2
        images, start = [], 0
        for length in _run_lengths(self.placeholders(inputs["input_ids"])):
            tiles = length // tokens
            rows = slice(start, start + tiles)
            start += tiles

            def attention(layer, rows=rows):
                return pool_to_tokens(self.tower_attention(record, layer, rows), self.side, self.side,
                                      self.scale).flatten()

            view = ImageView(features[rows].flatten(0, 1), (grid,) * tiles, len(self.layers), attention,
                             thumbnail=tiles - 1 if tiles > 1 else None)
            images.append(ImageTokens(view, torch.arange(tiles * tokens), self.projector))
        return images


def _run_lengths(placeholder) -> list[int]:
    """Lengths of the runs of consecutive placeholders ``(b, L)``, row by row."""
    lengths = []
    for row in placeholder:
        columns = row.nonzero().flatten()
        if columns.numel():
            breaks = (columns.diff() > 1).nonzero().flatten() + 1
            bounds = torch.cat([columns.new_zeros(1), breaks, columns.new_tensor([columns.numel()])])
            lengths += bounds.diff().tolist()
    return lengths
