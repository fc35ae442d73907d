"""Tiny random-weight models of every VLM family tokenomy supports, and their inputs built by hand (no
processor, nothing downloaded): ``FAMILIES[name] = (build(seed) -> model, inputs(model, kind) -> dict)``.

``kind="one"``: one prompt with one image. ``kind="two"``: two left-padded prompts whose images differ in size
(or tile count) where the family allows it, so rows carry different numbers of visual tokens. Placeholder
layouts follow each family's processor.
"""

from __future__ import annotations

import math

import torch
from transformers import (
    CLIPVisionConfig,
    Dinov2Config,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    InternVLConfig,
    InternVLForConditionalGeneration,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

VOCAB, PAD, BOS, EOS = 160, 0, 1, 2
IMAGE, VIDEO, START, END = 150, 151, 152, 153  # the image placeholder, and a family's image start/end tokens
NEWLINE = 10
TEXT = (3, 100)


def _text(generator, n):
    return torch.randint(*TEXT, (n,), generator=generator).tolist()


def _left_pad(rows):
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids, mask


def _text_config(cls=LlamaConfig, layers=4, **extra):
    return cls(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD,
               bos_token_id=BOS, eos_token_id=EOS, **extra)


def _vision(cls, **extra):
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=16,
               patch_size=4, **extra)


def _finish(model):
    model.eval()
    config = model.generation_config
    config.pad_token_id, config.bos_token_id, config.eos_token_id, config.do_sample = PAD, BOS, None, False
    return model


# -- LLaVA-1.5 and the reference VLM's layout ------------------------------------------------------------------
def llava(seed=0):
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=_vision(CLIPVisionConfig), text_config=_text_config(), image_token_id=IMAGE,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    return _finish(LlavaForConditionalGeneration(config))


def reference_like(seed=0):
    """The reference VLM's shape: a thumbnail and 2x2 crops per image, CLIP reading its last layer."""
    torch.manual_seed(seed)
    config = LlavaConfig(vision_config=_vision(CLIPVisionConfig), text_config=_text_config(), image_token_id=IMAGE,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    config.crop_layout = {"thumbnail": True, "rows": 2, "cols": 2, "side": 4}
    return _finish(LlavaForConditionalGeneration(config))


def reference_v2_like(seed=0):
    """The second reference VLM's shape: a DINOv2 tower ([CLS], layer scale, no attention mask) read at its last
    layer, one crop per image."""
    torch.manual_seed(seed)
    vision = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, image_size=16,
                          patch_size=4)
    config = LlavaConfig(vision_config=vision, text_config=_text_config(), image_token_id=IMAGE,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    return _finish(LlavaForConditionalGeneration(config))


def _llava_inputs(crops):
    def inputs(model, kind="one", seed=0):
        g = torch.Generator().manual_seed(seed)
        texts = [(3, 4)] if kind == "one" else [(2, 3), (5, 6)]
        ids, mask = _left_pad([[BOS] + _text(g, a) + [IMAGE] * (16 * crops) + _text(g, b) for a, b in texts])
        return {"input_ids": ids, "attention_mask": mask,
                "pixel_values": torch.randn(len(texts) * crops, 3, 16, 16, generator=g)}
    return inputs


# -- LLaVA-NeXT / OneVision ------------------------------------------------------------------------------------
NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]
OV_PINPOINTS = [[16 * i, 16 * j] for i in range(1, 7) for j in range(1, 7)]


def llava_next(seed=0):
    torch.manual_seed(seed)
    config = LlavaNextConfig(vision_config=_vision(CLIPVisionConfig), text_config=_text_config(),
                             image_token_index=IMAGE, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS)
    return _finish(LlavaNextForConditionalGeneration(config))


def llava_onevision(seed=0):
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(vision_config=_vision(SiglipVisionConfig, vision_use_head=False),
                                  text_config=_text_config(Qwen2Config), image_token_index=IMAGE,
                                  video_token_index=VIDEO, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                  image_grid_pinpoints=OV_PINPOINTS)
    return _finish(LlavaOnevisionForConditionalGeneration(config))


def _anyres_tokens(config, size):
    """The processor's placeholder count for an image of ``size`` (H, W): base crop + unpadded grid + newlines."""
    side = config.vision_config.image_size
    p = side // config.vision_config.patch_size
    best_h, best_w = select_best_resolution(list(size), config.image_grid_pinpoints)
    h, w = p * (best_h // side), p * (best_w // side)
    if size[1] / size[0] > w / h:
        h -= ((h - int(round(size[0] * (w / size[1]), 7))) // 2) * 2
    else:
        w -= ((w - int(round(size[1] * (h / size[0]), 7))) // 2) * 2
    lines = h
    if config.model_type == "llava_onevision":
        ratio = math.sqrt(h * w / (int(config.vision_aspect_ratio.strip("anyres_max_")) * p**2))
        if ratio > 1.1:
            h, w, lines = int(h // ratio), int(w // ratio), int(h // ratio)
    return p * p + h * w + lines


def _anyres_inputs(sizes):
    def inputs(model, kind="one", seed=0):
        g = torch.Generator().manual_seed(seed)
        config = model.config
        chosen, texts = (sizes[:1], [(3, 4)]) if kind == "one" else (sizes, [(2, 3), (5, 6)])
        rows = [[BOS] + _text(g, a) + [IMAGE] * _anyres_tokens(config, s) + _text(g, b)
                for s, (a, b) in zip(chosen, texts)]
        ids, mask = _left_pad(rows)
        crops = [image_size_to_num_patches(s, config.image_grid_pinpoints, 16) for s in chosen]
        pixels = torch.zeros(len(chosen), max(crops), 3, 16, 16)
        for i, c in enumerate(crops):
            pixels[i, :c] = torch.randn(c, 3, 16, 16, generator=g)
        out = {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels,
               "image_sizes": torch.tensor(chosen, dtype=torch.long)}
        if config.model_type == "llava_onevision":
            out["batch_num_images"] = torch.ones(len(chosen), dtype=torch.long)
        return out
    return inputs


# -- Qwen2-VL / Qwen2.5-VL / Qwen3-VL ----------------------------------------------------------------------------
QWEN_SPECIAL = dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
MROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}


def _qwen_text(**extra):
    return dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=5, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS,
                bos_token_id=BOS, **extra)


def qwen2_vl(seed=0):
    torch.manual_seed(seed)
    config = Qwen2VLConfig(text_config=_qwen_text(rope_parameters=MROPE), vision_config=dict(
        depth=2, embed_dim=32, num_heads=2, mlp_ratio=2, hidden_size=64, patch_size=2, temporal_patch_size=2,
        spatial_merge_size=2), tie_word_embeddings=False, **QWEN_SPECIAL)
    return _finish(Qwen2VLForConditionalGeneration(config))


def qwen2_5_vl(seed=0):
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(text_config=_qwen_text(rope_parameters=MROPE), vision_config=dict(
        depth=3, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=2,
        temporal_patch_size=2, spatial_merge_size=2, window_size=8, fullatt_block_indexes=[2], tokens_per_second=2),
        tie_word_embeddings=False, **QWEN_SPECIAL)
    return _finish(Qwen2_5_VLForConditionalGeneration(config))


def qwen3_vl(seed=0):
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    config = Qwen3VLConfig(text_config=_qwen_text(head_dim=16, rope_parameters=rope), vision_config=dict(
        depth=3, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64, patch_size=2,
        temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        tie_word_embeddings=False, **QWEN_SPECIAL)
    return _finish(Qwen3VLForConditionalGeneration(config))


def _qwen_patches(image, patch=2, temporal=2, merge=2):
    """An image ``(C, H, W)`` as the processor flattens it: rows in (t, h/2, w/2, 2, 2) order."""
    frames = image[None].expand(temporal, -1, -1, -1)
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    x = frames.reshape(1, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    return x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, c * temporal * patch * patch), (1, gh, gw)


def qwen_inputs(model, kind="one", seed=0):
    g = torch.Generator().manual_seed(seed)
    grids, texts = ([(6, 8)], [4]) if kind == "one" else ([(4, 6), (8, 4)], [3, 6])
    pixels, thw, rows = [], [], []
    for (gh, gw), n in zip(grids, texts):
        patches, grid = _qwen_patches(torch.rand(3, gh * 2, gw * 2, generator=g) * 2 - 1)
        pixels.append(patches)
        thw.append(grid)
        rows.append([BOS] + _text(g, 3) + [START] + [IMAGE] * (gh * gw // 4) + [END] + _text(g, n))
    ids, mask = _left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels),
            "image_grid_thw": torch.tensor(thw, dtype=torch.long)}


# -- Idefics3 / SmolVLM ----------------------------------------------------------------------------------------
def _idefics3_like(model_cls, config_cls):
    def build(seed=0):
        torch.manual_seed(seed)
        config = config_cls(text_config=_text_config().to_dict(), vision_config=_vision_dict(), scale_factor=2,
                            image_token_id=IMAGE, pad_token_id=PAD, tie_word_embeddings=False)
        return _finish(model_cls(config))
    return build


def _vision_dict(**extra):
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=16,
                patch_size=4, **extra)


def idefics3_inputs(model, kind="one", seed=0):
    """Tiles of a split image (rows x cols) then the whole image, each tile's 4 tokens behind its own tokens."""
    g = torch.Generator().manual_seed(seed)
    tokens = model.model.image_seq_len
    layouts, texts = ([(1, 2)], [(3, 4)]) if kind == "one" else ([(2, 2), (0, 0)], [(2, 3), (5, 6)])
    rows, tiles = [], []
    for (r, c), (a, b) in zip(layouts, texts):
        image = []
        for i in range(r * c):
            image += [START, 110 + i] + [IMAGE] * tokens
        image += [START, END] + [IMAGE] * tokens + [START]
        rows.append([BOS] + _text(g, a) + image + _text(g, b))
        tiles.append(r * c + 1)
    ids, mask = _left_pad(rows)
    pixels = torch.zeros(len(rows), max(tiles), 3, 16, 16)
    for i, n in enumerate(tiles):
        pixels[i, :n] = torch.randn(n, 3, 16, 16, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


# -- Gemma 3 -----------------------------------------------------------------------------------------------------
def gemma3(seed=0):
    torch.manual_seed(seed)
    text = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=256,
                sliding_window=8, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    config = Gemma3Config(text_config=text, vision_config=_vision_dict(vision_use_head=False), mm_tokens_per_image=4,
                          image_token_index=IMAGE, boi_token_index=START, eoi_token_index=END)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # initialised to zeros: every image would look the same
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return _finish(model)


def gemma3_inputs(model, kind="one", seed=0):
    g = torch.Generator().manual_seed(seed)
    block = [NEWLINE, START] + [IMAGE] * model.config.mm_tokens_per_image + [END, NEWLINE]
    if kind == "one":
        rows, images = [[BOS] + _text(g, 3) + block + _text(g, 4)], 1
    else:  # pan and scan: the image and two crops, each an image of its own; then a single image
        rows = [[BOS] + _text(g, 2) + block + _text(g, 2) + block + block + _text(g, 3),
                [BOS] + _text(g, 4) + block + _text(g, 2)]
        images = 4
    ids, mask = _left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": (ids == IMAGE).long(),
            "pixel_values": torch.randn(images, 3, 16, 16, generator=g)}


# -- InternVL ----------------------------------------------------------------------------------------------------
def internvl(seed=0):
    torch.manual_seed(seed)
    config = InternVLConfig(text_config=_text_config(Qwen2Config).to_dict(), vision_config=_vision_dict(),
                            image_token_id=IMAGE, image_seq_length=4, downsample_ratio=0.5, vision_feature_layer=-1,
                            vision_feature_select_strategy="default", tie_word_embeddings=False)
    return _finish(InternVLForConditionalGeneration(config))


def internvl_inputs(model, kind="one", seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = model.config.image_seq_length
    tiles, texts = ([3], [(3, 4)]) if kind == "one" else ([5, 1], [(2, 3), (5, 6)])
    rows = [[BOS] + _text(g, a) + [START] + [IMAGE] * (tokens * t) + [END, NEWLINE] + _text(g, b)
            for t, (a, b) in zip(tiles, texts)]
    ids, mask = _left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.randn(sum(tiles), 3, 16, 16, generator=g)}


FAMILIES = {
    "llava": (llava, _llava_inputs(1)),
    "reference": (reference_like, _llava_inputs(5)),
    "reference_v2": (reference_v2_like, _llava_inputs(1)),
    "llava_next": (llava_next, _anyres_inputs([(8, 40), (40, 30)])),
    "llava_onevision": (llava_onevision, _anyres_inputs([(16, 40), (64, 60)])),
    "qwen2_vl": (qwen2_vl, qwen_inputs),
    "qwen2_5_vl": (qwen2_5_vl, qwen_inputs),
    "qwen3_vl": (qwen3_vl, qwen_inputs),
    "idefics3": (_idefics3_like(Idefics3ForConditionalGeneration, Idefics3Config), idefics3_inputs),
    "smolvlm": (_idefics3_like(SmolVLMForConditionalGeneration, SmolVLMConfig), idefics3_inputs),
    "gemma3": (gemma3, gemma3_inputs),
    "internvl": (internvl, internvl_inputs),
}
