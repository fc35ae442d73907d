"""The reference VLM: a LLaVA tokenomy trains itself (small ViT + projector + SmolLM2) so visual-token
methods can be measured offline, and the synthetic VQA data it is trained and tested on."""

from tokenomy.models.reference_vlm.model import LAYOUT, VARIANTS, build, load_reference_vlm, variant
from tokenomy.models.reference_vlm.processor import ReferenceProcessor

__all__ = ["LAYOUT", "VARIANTS", "ReferenceProcessor", "build", "load_reference_vlm", "variant"]
