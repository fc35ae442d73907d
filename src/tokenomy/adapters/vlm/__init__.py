"""VLM families: one adapter per family (`base.VLMAdapter`), looked up from the model's config."""

from __future__ import annotations

from torch import nn

from tokenomy._validation import TokenomyError
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter
from tokenomy.adapters.vlm.gemma3 import Gemma3Adapter
from tokenomy.adapters.vlm.idefics3 import Idefics3Adapter
from tokenomy.adapters.vlm.internvl import InternVLAdapter
from tokenomy.adapters.vlm.llava import LlavaAdapter
from tokenomy.adapters.vlm.llava_next import LlavaNextAdapter
from tokenomy.adapters.vlm.qwen2_vl import QwenVLAdapter

ADAPTERS: tuple[type[VLMAdapter], ...] = (LlavaAdapter, LlavaNextAdapter, QwenVLAdapter, Idefics3Adapter, Gemma3Adapter,
                                          InternVLAdapter)


def supported_families() -> list[str]:
    """The ``config.model_type`` values tokenomy's visual methods support."""
    return sorted(t for adapter in ADAPTERS for t in adapter.model_types)


def vlm_adapter(vlm: nn.Module) -> VLMAdapter:
    """The adapter for ``vlm``'s family; an unknown family names the supported ones."""
    model_type = getattr(getattr(vlm, "config", None), "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter(vlm)
    raise TokenomyError(f"{type(vlm).__name__} (model_type {model_type!r}) is not a vision-language model tokenomy "
                        f"supports; supported families: {', '.join(supported_families())}")


__all__ = ["ADAPTERS", "ImageTokens", "VLMAdapter", "supported_families", "vlm_adapter"]
