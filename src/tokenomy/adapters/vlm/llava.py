"""LLaVA-1.5 (`LlavaForConditionalGeneration`) and tokenomy's reference VLM, which is one.

A CLIP tower with [CLS] (or a SigLIP one without), the patch features of one layer (``vision_feature_layer``,
[CLS] dropped by the ``default`` strategy), a per-token MLP projector: every patch becomes one language-model
token, in raster order. The reference VLM's ``config.crop_layout`` adds a thumbnail and a grid of crops
(each crop a row of ``pixel_values``, the thumbnail first).
"""

from __future__ import annotations

import torch

from tokenomy._validation import TokenomyError
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, merging_forward
from tokenomy.score.vision import ImageView


class LlavaAdapter(VLMAdapter):
    """LLaVA-1.5 and the reference VLM (see the module docstring)."""

    model_types = ("llava",)
    one_token_per_patch = True

    def __init__(self, vlm):
        super().__init__(vlm)
        inner = vlm.model
        self.tower, self.projector = inner.vision_tower, inner.multi_modal_projector
        self.features_at = self.projector
        vision_model = getattr(self.tower, "vision_model", self.tower)
        self.layers = vision_model.encoder.layers
        self.has_cls = hasattr(getattr(vision_model, "embeddings", None), "class_embedding")
        self.drops_cls = self.config.vision_feature_select_strategy == "default"
        if self.has_cls and not self.drops_cls:
            raise TokenomyError("LLaVA models that hand [CLS] to the language model (vision_feature_select_strategy="
                                "'full' on a tower with [CLS]) are not supported")
        layer = self.config.vision_feature_layer
        self.feature_layer = layer if isinstance(layer, int) else layer[-1]
        layout = getattr(self.config, "crop_layout", None) or {}
        vision = self.config.vision_config
        self.side = layout.get("side", vision.image_size // vision.patch_size)
        self.thumbnail = 0 if layout.get("thumbnail") else None
        self.tiles = (layout["rows"], layout["cols"]) if layout else None
        self.crops = (self.thumbnail is not None) + (layout["rows"] * layout["cols"] if layout else 1)

    def extra_capture(self, record: dict) -> list:
        def tower(module, args, output):  # its hidden states hold each crop's [CLS]
            record["tower"] = output

        return [self.tower.register_forward_hook(tower)]

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        features = record["features"]  # (images * crops, patches, d)
        c, n = self.crops, features.shape[1]
        if features.shape[0] % c or n != self.side * self.side:
            raise TokenomyError(f"each image must come as {c} crop(s) of {self.side} x {self.side} patches; got "
                                f"{features.shape[0]} crops of {n} patches")
        hidden = record["tower"].hidden_states[self.feature_layer]
        project = lambda x: self.projector(x.unsqueeze(0))[0]  # noqa: E731
        images = []
        for start in range(0, features.shape[0], c):
            rows = slice(start, start + c)

            view = ImageView(features[rows].flatten(0, 1), ((self.side, self.side),) * c, len(self.layers),
                             lambda layer, rows=rows: self.tower_attention(record, layer, rows).flatten(),
                             cls=hidden[rows, 0] if self.has_cls else None, thumbnail=self.thumbnail, tiles=self.tiles)
            images.append(ImageTokens(view, torch.arange(c * n), project))
        return images

    def merging_layers(self):
        depth = self.feature_layer % (len(self.layers) + 1)  # the layers whose output the model reads
        return self.layers, merging_forward, depth, self.crops, int(self.has_cls)
