"""Model-family specifics for vision-language models: where the vision tower, its layers and the
projector are, and how a ViT layer's [CLS] attention is formed. Sites and scorers read VLMs only here.

Supported: HF LLaVA-style models (``vlm.model.vision_tower`` + ``vlm.model.multi_modal_projector``,
``get_image_features``) whose vision tower is a CLIP ViT with a [CLS] token — LLaVA-1.5 and the reference
VLM. Towers without [CLS] (SigLIP) are refused by the methods that need it, with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from tokenomy._validation import TokenomyError


@dataclass(frozen=True)
class CropLayout:
    """How a sample's images map to crops: an optional thumbnail first, then a ``rows x cols`` grid.

    ``side`` is the number of patches along a crop's side. Methods that budget per crop (TCC, HiRED) and
    the pre-LLM site read it from ``vlm.config.crop_layout``; a plain single-image LLaVA is ``CropLayout()``.
    """

    thumbnail: bool = False
    rows: int = 1
    cols: int = 1
    side: int = 24

    @property
    def num_crops(self) -> int:
        return int(self.thumbnail) + self.rows * self.cols

    @property
    def tokens_per_crop(self) -> int:
        return self.side * self.side

    @classmethod
    def of(cls, config) -> "CropLayout":
        """The layout stored in a model config (``crop_layout``), or one crop of the vision tower's size."""
        stored = getattr(config, "crop_layout", None)
        if stored:
            return cls(**stored)
        vision = config.vision_config
        return cls(side=vision.image_size // vision.patch_size)


@dataclass
class VisionParts:
    """The pieces of a LLaVA-style VLM that visual-token sites touch."""

    model: nn.Module  # holds get_image_features (LlavaModel)
    tower: nn.Module
    projector: nn.Module
    layers: nn.ModuleList
    feature_layer: int
    drops_cls: bool
    image_token_id: int


def vision_parts(vlm: nn.Module) -> VisionParts:
    """Locate the vision tower, its encoder layers and the projector of ``vlm``, or explain why not."""
    inner = getattr(vlm, "model", vlm)
    tower = getattr(inner, "vision_tower", None)
    projector = getattr(inner, "multi_modal_projector", None)
    config = getattr(vlm, "config", None)
    if tower is None or projector is None or not hasattr(inner, "get_image_features"):
        raise TokenomyError(
            f"{type(vlm).__name__} is not a LLaVA-style VLM (vision_tower + multi_modal_projector); visual "
            "token methods support LLaVA models and tokenomy's reference VLM (tokenomy.load('reference-vlm'))"
        )
    vision_model = getattr(tower, "vision_model", tower)
    layers = getattr(getattr(vision_model, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TokenomyError(f"cannot find the encoder layers of the vision tower {type(tower).__name__}")
    feature_layer = config.vision_feature_layer
    if not isinstance(feature_layer, int):
        raise TokenomyError(f"vision_feature_layer must be a single layer, got {feature_layer!r}")
    return VisionParts(inner, tower, projector, layers, feature_layer,
                       config.vision_feature_select_strategy == "default", config.image_token_id)


def has_cls(parts: VisionParts) -> bool:
    """Whether the tower prepends a [CLS] token (CLIP does; SigLIP does not)."""
    embeddings = getattr(getattr(parts.tower, "vision_model", parts.tower), "embeddings", None)
    return hasattr(embeddings, "class_embedding")


def cls_attention(parts: VisionParts, hidden: Tensor, layer: int) -> Tensor:
    """[CLS]'s softmax attention over the patches in ViT layer ``layer``, averaged over heads.

    ``hidden`` is that layer's input ``(c, 1 + n, d)`` ([CLS] first). Returns ``(c, n)``: the [CLS] row of
    the attention map without its [CLS] column (so rows sum to at most 1).
    """
    if not has_cls(parts):
        raise TokenomyError("this method needs a vision tower with a [CLS] token (CLIP-style); this one has none")
    block = parts.layers[layer]
    attn = block.self_attn
    x = block.layer_norm1(hidden)
    c, length, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(c, 1, heads, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(c, length, heads, head_dim).transpose(1, 2)
    weights = torch.softmax((q @ k.transpose(-1, -2)).float() * attn.scale, dim=-1)  # (c, h, 1, 1 + n)
    return weights[:, :, 0, 1:].mean(dim=1)


def merging_forward(layer: nn.Module, state: dict, merge: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]):
    """A forward for one CLIP encoder layer that merges tokens between attention and MLP (ToMe's place).

    ``merge(hidden, keys, size) -> (hidden, size)`` gets the residual stream after attention, the layer's
    keys averaged over heads (the matching metric) and the token sizes ``(b, n, 1)`` kept in
    ``state["size"]`` (None: all ones). Attention adds ``log(size)`` to its logits (proportional attention).
    """
    attn = layer.self_attn

    def forward(hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
        b, n, _ = hidden_states.shape
        size = state["size"] if state["size"] is not None else hidden_states.new_ones(b, n, 1)
        x = layer.layer_norm1(hidden_states)
        if bool((size != 1).any()):  # a token of size s counts s times
            bias = size.log().transpose(1, 2).unsqueeze(1).to(x.dtype)  # (b, 1, 1, n)
            attention_mask = bias if attention_mask is None else attention_mask + bias
        out, _ = attn(hidden_states=x, attention_mask=attention_mask, **kwargs)
        keys = attn.k_proj(x).view(b, n, attn.num_heads, attn.head_dim).mean(dim=2)
        hidden, state["size"] = merge(hidden_states + out, keys, size)
        return hidden + layer.mlp(layer.layer_norm2(hidden))

    return forward


def dense_weights(module: nn.Module) -> int:
    """Parameters of the 2-D weight matrices in ``module`` (one multiply-add each per token)."""
    return sum(p.numel() for n, p in module.named_parameters() if n.endswith("weight") and p.ndim == 2)
