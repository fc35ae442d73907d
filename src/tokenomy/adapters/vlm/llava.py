"""LLaVA-1.5 (`LlavaForConditionalGeneration`) and tokenomy's reference VLMs, which are ones.

A CLIP tower with [CLS] (or a SigLIP one without, or DINOv2 with [CLS] as in the second reference VLM), the
patch features of one layer (``vision_feature_layer``,
[CLS] dropped by the ``default`` strategy), a per-token MLP projector: every patch becomes one language-model
token, in raster order. The reference VLM's ``config.crop_layout`` adds a thumbnail and a grid of crops
(each crop a row of ``pixel_values``, the thumbnail first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenomy._validation import TokenomyError
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, merging, merging_forward
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
        self.dinov2 = self.config.vision_config.model_type == "dinov2"
        self.layers = vision_model.encoder.layer if self.dinov2 else vision_model.encoder.layers
        self.has_cls = self.dinov2 or hasattr(getattr(vision_model, "embeddings", None), "class_embedding")
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

    def attention_parts(self, layer: int) -> tuple[nn.Module, nn.Module, int, float]:
        if not self.dinov2:
            return super().attention_parts(layer)
        attention = self.layers[layer].attention.attention
        return attention.query, attention.key, attention.num_attention_heads, attention.scaling

    def merging_layers(self):
        depth = self.feature_layer % (len(self.layers) + 1)  # the layers whose output the model reads
        forward = dinov2_merging_forward if self.dinov2 else merging_forward
        return self.layers, forward, depth, self.crops, int(self.has_cls)


def dinov2_merging_forward(layer: nn.Module, state: dict, merge):
    """`merging_forward` for a DINOv2 layer: layer scale on both branches; its attention takes no mask, so the
    proportional-attention bias goes through SDPA on the layer's own projections."""
    attn, output = layer.attention.attention, layer.attention.output

    def attend(hidden_states: torch.Tensor, bias: torch.Tensor | None, *args, **kwargs):
        b, n, _ = hidden_states.shape
        x = layer.norm1(hidden_states)
        q, k, v = (proj(x).view(b, n, attn.num_attention_heads, -1).transpose(1, 2)
                   for proj in (attn.query, attn.key, attn.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scaling)
        out = output.dense(out.transpose(1, 2).reshape(b, n, -1))
        return hidden_states + layer.layer_scale1(out), k.mean(dim=1)

    return merging(state, merge, attend, lambda hidden: hidden + layer.layer_scale2(layer.mlp(layer.norm2(hidden))))
