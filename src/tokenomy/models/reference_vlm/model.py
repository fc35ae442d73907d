"""The reference VLM: a small ViT trained from scratch, LLaVA's MLP projector, and the real SmolLM2.

It is a plain `transformers.LlavaForConditionalGeneration` (CLIP vision tower, [CLS] token, patch
features of the last layer without [CLS], two-layer GELU projector), so adapters written for it are
the ones real LLaVA models use. The language model is SmolLM2-135M-Instruct, frozen during training
except for a rank-8 LoRA on its attention's query/value projections whose deltas are merged into the
weights at load time; the image placeholder reuses SmolLM2's unused special token
``<empty_output>`` so no embedding row is added. Only the vision tower, projector and LoRA deltas (a few MB,
fp16) ship with the package; the language model comes from the packaged GGUF like everywhere else.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from tokenomy._validation import TokenomyError
from tokenomy.models.reference_vlm.processor import CropLayout, ReferenceProcessor

WEIGHTS = Path(__file__).with_name("weights.safetensors")
CROP, PATCH = 48, 8
LAYOUT = CropLayout(thumbnail=True, rows=2, cols=2, side=CROP // PATCH)
IMAGE_TOKEN = "<empty_output>"
LORA_PREFIX = "lora."


def vision_config(**overrides) -> CLIPVisionConfig:
    """The reference ViT: 6 layers, width 128, 4 heads, 48-pixel crops of 8-pixel patches (36 tokens)."""
    settings = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=6, num_attention_heads=4,
                    image_size=CROP, patch_size=PATCH, projection_dim=128)
    settings.update(overrides)
    return CLIPVisionConfig(**settings)


def build(language_model, tokenizer, vision=None, layout: CropLayout = LAYOUT):
    """A LLaVA around ``language_model`` (a causal LM, reused in place) with a fresh vision tower.

    Returns ``(vlm, processor)``.
    """
    vision = vision or vision_config()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id is None or image_token_id == tokenizer.unk_token_id:
        raise TokenomyError(f"the tokenizer has no {IMAGE_TOKEN!r} token to use as the image placeholder")
    config = LlavaConfig(
        vision_config=vision,
        text_config=language_model.config,
        image_token_id=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.crop_layout = {"thumbnail": layout.thumbnail, "rows": layout.rows, "cols": layout.cols,
                          "side": layout.side}
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(config)
    vlm.model.language_model = language_model.model
    vlm.lm_head = language_model.lm_head
    torch.manual_seed(0)
    vlm.model.vision_tower = AutoModel.from_config(config.vision_config)
    vlm.model.multi_modal_projector = LlavaMultiModalProjector(config)
    vlm.generation_config = language_model.generation_config
    vlm.eval()
    processor = ReferenceProcessor(tokenizer, layout, vision.image_size, image_token_id)
    return vlm, processor


def trained_parameters(vlm) -> dict[str, torch.Tensor]:
    """The parameters training changes (vision tower and projector), by state-dict name."""
    return {k: v for k, v in vlm.state_dict().items() if not k.startswith(("model.language_model", "lm_head"))}


def load_reference_vlm(weights: str | Path | None = None, dtype=torch.float32):
    """The trained reference VLM and its processor: ``vlm, processor = load_reference_vlm()``."""
    from safetensors.torch import load_file

    from tokenomy.models.loader import load

    path = Path(weights) if weights is not None else WEIGHTS
    if not path.exists():
        raise TokenomyError(
            f"no reference VLM weights at {path}; train them with `tokenomy train-vlm` (the shipped recipe, "
            "with --encoder-steps 1000 --align-steps 2000 --batch 64, takes about 8 min on one GPU)"
        )
    language_model, tokenizer = load("smollm2-135m")
    vlm, processor = build(language_model, tokenizer)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing = set(trained_parameters(vlm)) - set(state)
    if missing:
        raise TokenomyError(f"{path} is not a reference VLM checkpoint (missing {sorted(missing)[:3]} ...)")
    with torch.no_grad():
        for key in [k[: -len(".A")] for k in state if k.startswith(LORA_PREFIX) and k.endswith(".A")]:
            layer, name = key[len(LORA_PREFIX):].split(".")
            delta = state.pop(f"{key}.B") @ state.pop(f"{key}.A")
            getattr(language_model.model.layers[int(layer)].self_attn, name).weight += delta
    vlm.load_state_dict(state, strict=False)
    return vlm.to(dtype).eval(), processor
