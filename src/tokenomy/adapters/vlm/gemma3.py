"""Gemma 3 (`Gemma3ForConditionalGeneration`).

A SigLIP tower without [CLS] sees each image (each pan-and-scan crop is an image of its own) at a fixed size;
the projector average-pools ``k x k`` patches into each of ``mm_tokens_per_image`` tokens, normalises them and
maps them with one matrix. Placeholders of one image are bidirectional among themselves, which the model
builds into its attention masks from ``token_type_ids``: for a shortened prompt the adapter rebuilds those
masks the family's way over the kept tokens, so sliding windows are measured as decoding measures them.
"""

from __future__ import annotations

import torch

from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter, pool_to_tokens
from tokenomy.score.vision import ImageView


class Gemma3Adapter(VLMAdapter):
    """Gemma 3 (see the module docstring)."""

    model_types = ("gemma3",)

    def __init__(self, vlm):
        super().__init__(vlm)
        inner = vlm.model
        self.tower = inner.vision_tower
        self.layers = self.tower.vision_model.encoder.layers
        self.projector = inner.multi_modal_projector
        self.features_at = self.projector.mm_soft_emb_norm  # its input: the pooled features
        self.patches = self.projector.patches_per_image
        self.pool = self.projector.kernel_size

    def _project(self, x):
        return torch.matmul(self.projector.mm_soft_emb_norm(x), self.projector.mm_input_projection_weight).type_as(x)

    def images(self, record: dict, inputs: dict) -> list[ImageTokens]:
        features = record["features"]  # (images, tokens, d): pooled, before the norm
        tokens = features.shape[1]
        side = self.patches // self.pool
        images = []
        for index in range(features.shape[0]):
            def attention(layer, index=index):
                received = self.tower_attention(record, layer, slice(index, index + 1))
                return pool_to_tokens(received, self.patches, self.patches, self.pool).flatten()

            view = ImageView(features[index], ((side, side),), len(self.layers), attention)
            images.append(ImageTokens(view, torch.arange(tokens), self._project))
        return images

    def prefill_mask(self, inputs: dict, kwargs: dict, columns, valid):
        from transformers.models.gemma3.modeling_gemma3 import create_causal_mask_mapping

        types = inputs.get("token_type_ids")
        if types is not None:
            types = types.to(columns.device).gather(1, columns) * valid
        return create_causal_mask_mapping(self.config, kwargs["inputs_embeds"], valid.long(), kwargs["cache_position"],
                                          kwargs.get("past_key_values"), kwargs.get("position_ids"), types,
                                          is_first_iteration=True)
