"""Visual-token methods on a tiny random-weight LLaVA (thumbnail + 2x2 crops of 4x4 patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import tokenomy
from tokenomy.budget import kept_count
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.processor import ReferenceProcessor, to_rgb_square
from tokenomy.models.vision_adapters import CropLayout
from tokenomy.score.vision import CropView, ThumbnailAttention, patch_density
from tokenomy.sites.visual import Diverse, PreLLM, first_isolated
from tokenomy.sites.vit import merge_schedule

IMAGE = 5
LAYOUT = CropLayout(thumbnail=True, rows=2, cols=2, side=4)
PATCHES = LAYOUT.num_crops * LAYOUT.tokens_per_crop
VISUAL = sorted(m.name for m in tokenomy.methods() if m.site in ("pre-llm", "vision-encoder"))


def tiny_vlm(seed: int = 0) -> LlavaForConditionalGeneration:
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=16, patch_size=4)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    config.crop_layout = {"thumbnail": True, "rows": 2, "cols": 2, "side": 4}
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(config).eval()


def prompt(question=(7, 8, 9), samples: int = 1, seed: int = 0):
    ids = torch.tensor([[1, 2] + [IMAGE] * PATCHES + list(question)] * samples)
    pixels = torch.randn(samples * LAYOUT.num_crops, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def llm_lengths(vlm):
    """Record the sequence length every language-model forward receives."""
    seen = []
    handle = vlm.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    return seen, handle


def test_every_visual_method_is_registered():
    assert VISUAL == ["avgpool", "divprune", "hired", "prumerge", "random-visual", "tcc", "todre", "tome", "vtc-cls"]


@pytest.mark.parametrize("method", VISUAL)
def test_keep_one_changes_nothing(method):
    vlm, inputs = tiny_vlm(), prompt()
    with torch.no_grad():
        reference = vlm(**inputs).logits
        expected = vlm.generate(**inputs, max_new_tokens=6, do_sample=False)
        with tokenomy.apply(vlm, method, keep=1.0) as session:
            logits = vlm(**inputs).logits
            out = vlm.generate(**inputs, max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
    assert torch.equal(out, expected)
    assert session.stats.tokens_kept == session.stats.tokens_seen == 2 * PATCHES


@pytest.mark.parametrize("method", VISUAL)
@pytest.mark.parametrize("keep", [0.11, 0.33, 0.6])
def test_budget_is_exact(method, keep):
    vlm, inputs = tiny_vlm(), prompt(samples=2)
    total = int(kept_count(keep, PATCHES))
    seen, handle = llm_lengths(vlm)
    with torch.no_grad(), tokenomy.apply(vlm, method, keep=keep) as session:
        vlm(**inputs)
    handle.remove()
    assert seen == [inputs["input_ids"].shape[1] - PATCHES + total]
    assert session.stats.tokens_kept == 2 * total
    assert all(sum(counts) == total and max(counts) <= LAYOUT.tokens_per_crop for counts in session.stats.crop_counts)
    if method not in ("tcc", "hired", "divprune", "todre"):  # the others share a budget evenly among crops
        assert all(max(c) - min(c) <= 1 for c in session.stats.crop_counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", VISUAL)
def test_methods_run_where_the_model_is(method):
    vlm, inputs = tiny_vlm().to("cuda"), {k: v.cuda() for k, v in prompt(samples=2).items()}
    total = int(kept_count(0.25, PATCHES))
    seen, handle = llm_lengths(vlm)
    with torch.no_grad(), tokenomy.apply(vlm, method, keep=0.25) as session:
        out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False)
    handle.remove()
    assert out.device.type == "cuda" and out.shape[1] == inputs["input_ids"].shape[1] + 4
    assert seen[0] == inputs["input_ids"].shape[1] - PATCHES + total and session.stats.tokens_kept == 2 * total


@pytest.mark.parametrize("method", VISUAL)
def test_generation_after_reduction_is_coherent(method):
    """generate() with its cache equals recomputing the whole reduced prompt at every step."""
    vlm, inputs = tiny_vlm(1), prompt(seed=3)
    with torch.no_grad(), tokenomy.apply(vlm, method, keep=0.25):
        out = vlm.generate(**inputs, max_new_tokens=6, do_sample=False)
        ids = inputs["input_ids"]
        for _ in range(6):
            logits = vlm(input_ids=ids, attention_mask=torch.ones_like(ids),
                         pixel_values=inputs["pixel_values"]).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 6  # the caller's prompt comes back whole


def test_left_padded_batch_matches_single_prompts():
    vlm = tiny_vlm(2)
    long, short = prompt((7, 8, 9, 10, 11), seed=1), prompt((7,), seed=2)
    width = long["input_ids"].shape[1]
    pad = width - short["input_ids"].shape[1]
    batch = {
        "input_ids": torch.cat([long["input_ids"], torch.cat([torch.zeros(1, pad, dtype=torch.long),
                                                              short["input_ids"]], 1)]),
        "attention_mask": torch.cat([long["attention_mask"], torch.cat([torch.zeros(1, pad, dtype=torch.long),
                                                                        short["attention_mask"]], 1)]),
        "pixel_values": torch.cat([long["pixel_values"], short["pixel_values"]]),
    }
    with torch.no_grad(), tokenomy.apply(vlm, "todre", keep=0.25):
        both = vlm.generate(**batch, max_new_tokens=5, do_sample=False)
        one = vlm.generate(**long, max_new_tokens=5, do_sample=False)
        two = vlm.generate(**short, max_new_tokens=5, do_sample=False)
    assert torch.equal(both[0, -5:], one[0, -5:]) and torch.equal(both[1, -5:], two[0, -5:])


def test_budget_smaller_than_the_number_of_crops():
    vlm, inputs = tiny_vlm(), prompt()
    with torch.no_grad(), tokenomy.apply(vlm, "vtc-cls", keep=0.02) as session:  # 2 tokens for 5 crops
        out = vlm.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert session.stats.crop_counts[0] == [1, 1, 0, 0, 0]
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_joint_diverse_selection_takes_one_token_of_a_blank_crop():
    features = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    features[0] = features[0, :1]  # a blank crop: every patch the same
    view = CropView(features, None, CropLayout(rows=1, cols=3, side=4), 1, lambda layer: None)
    chosen = Diverse(first_isolated).indices(view, None, 12)
    counts = torch.bincount(chosen // 16, minlength=3)
    assert counts.sum() == 12 and counts[0] <= 1 and bool((chosen.diff() > 0).all())
    even = [len(Diverse(first_isolated).indices(view, crop, 4)) for crop in range(3)]
    assert even == [4, 4, 4]


def test_label_oracle_reads_where_objects_are_in_token_order():
    from tokenomy.bench.vision import oracle_starts, relevance

    processor = ReferenceProcessor(None, CropLayout(thumbnail=True, rows=2, cols=2, side=6), 48, IMAGE)
    kind = np.full((96, 96), scenes.KIND_TEXT, np.uint8)  # filler text everywhere does not count
    kind[:48, :48] = 1  # a shape filling the top-left quadrant exactly
    sample = scenes.Sample(Image.new("RGB", (96, 96)), "", "", "colour", np.stack([kind] * 3), 1)
    grid = relevance(processor, sample).reshape(5, 6, 6)
    expected = torch.zeros(5, 6, 6)
    expected[0, :3, :3] = 1  # the thumbnail's top-left 3 x 3 tokens
    expected[1] = 1  # all of the top-left crop
    assert torch.allclose(grid, expected, atol=0.05)

    score = torch.zeros(20)
    score[[3, 11, 7]] = torch.tensor([0.5, 1.0, 0.05])  # token 7 is under the threshold
    assert oracle_starts(score, 1) == [11] and oracle_starts(score, 6) == [11, 3]
    assert oracle_starts(torch.zeros(20), 4) == []  # nothing relevant: the bench falls back to DivPrune's start


@pytest.mark.parametrize("per_crop, counts", [(True, [4, 4, 4, 4, 4]), (False, None)])
def test_divprune_per_crop_option(per_crop, counts):
    vlm, inputs = tiny_vlm(), prompt()
    with torch.no_grad(), tokenomy.apply(vlm, "divprune", keep=20 / PATCHES, per_crop=per_crop) as session:
        vlm(**inputs)
    assert sum(session.stats.crop_counts[0]) == 20
    assert counts is None or session.stats.crop_counts[0] == counts


def test_diverse_merge_folds_pruned_patches_into_kept_ones():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    kept = torch.tensor([0, 2])
    torch.testing.assert_close(Diverse(first_isolated, merge=True).take(features, kept),
                               torch.stack([features[:2].mean(0), features[2:].mean(0)]))
    assert torch.equal(Diverse(first_isolated).take(features, kept), features[kept])


@pytest.mark.parametrize("method", ["divprune", "todre"])
def test_merge_option_keeps_the_budget_and_changes_only_reduced_runs(method):
    vlm, inputs = tiny_vlm(), prompt()
    seen, handle = llm_lengths(vlm)
    with torch.no_grad():
        reference = vlm(**inputs).logits
        with tokenomy.apply(vlm, method, keep=1.0, merge=True):
            whole = vlm(**inputs).logits
        outputs = {}
        for merge in (False, True):
            with tokenomy.apply(vlm, method, keep=0.25, merge=merge):
                outputs[merge] = vlm(**inputs).logits
    handle.remove()
    torch.testing.assert_close(whole, reference, rtol=1e-4, atol=1e-5)
    total = int(kept_count(0.25, PATCHES))
    assert seen[-2:] == [inputs["input_ids"].shape[1] - PATCHES + total] * 2
    assert not torch.allclose(outputs[True], outputs[False])


def test_joint_selection_refuses_crop_weights():
    with pytest.raises(tokenomy.TokenomyError, match="joint"):
        PreLLM(0.5, Diverse(first_isolated), crop_weights=lambda view: torch.ones(5), joint=True)


def test_density_gives_repetitive_crops_fewer_tokens():
    features = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    features[0] = features[0, :1]  # a blank crop: every patch the same
    view = CropView(features, None, CropLayout(rows=1, cols=3, side=4), 1, lambda layer: None)
    density = patch_density(view)
    assert density[0] == pytest.approx(0, abs=1e-6) and bool((density[1:] > 0.1).all())


def test_thumbnail_attention_maps_onto_the_grid():
    attention = torch.zeros(5, 16)
    attention[0, 0] = 1.0  # the thumbnail looks only at its top-left patch
    view = CropView(torch.randn(5, 16, 8), None, LAYOUT, 2, lambda layer: attention)
    weights = ThumbnailAttention(layer=1)(view)
    assert weights.tolist() == pytest.approx([0.0625, 0.25, 0.0, 0.0, 0.0])


def test_tome_schedule_takes_every_merge_it_can():
    schedule = merge_schedule(16, 2, 3)
    assert sum(schedule) == 14 and schedule[-1] == 0
    tokens = 16
    for r in schedule[:-1]:
        assert r <= tokens // 2
        tokens -= r


@pytest.mark.parametrize("keep", [0, 1.5, "half", None])
def test_bad_keep_is_one_clear_error(keep):
    with pytest.raises(tokenomy.TokenomyError, match="keep"):
        tokenomy.apply(tiny_vlm(), "todre", keep=keep)


def test_bad_models_and_inputs_raise_clear_errors(model):
    with pytest.raises(tokenomy.TokenomyError, match="LLaVA"):
        tokenomy.apply(model, "todre", keep=0.5)
    vlm, inputs = tiny_vlm(), prompt()
    inputs["pixel_values"] = inputs["pixel_values"][:3]
    with tokenomy.apply(vlm, "todre", keep=0.5), pytest.raises(tokenomy.TokenomyError, match="crop"):
        vlm(**inputs)
    with tokenomy.apply(vlm, "tome", keep=0.5), pytest.raises(tokenomy.TokenomyError, match="already"):
        with tokenomy.apply(vlm, "todre", keep=0.5):
            pass
    with pytest.raises(tokenomy.TokenomyError, match="unknown method"):
        tokenomy.apply(vlm, "todr", keep=0.5)


@pytest.mark.parametrize("image", [
    Image.new("RGB", (30, 70), (10, 20, 30)),
    Image.new("L", (50, 20), 128),
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)),
    np.zeros((9, 13), dtype=np.uint8),
    np.zeros((9, 13, 3), dtype=np.uint8),
])
def test_any_image_becomes_the_crops_the_model_expects(image):
    processor = ReferenceProcessor(tokenizer=None, layout=LAYOUT, crop=16, image_token_id=IMAGE)
    pixels = processor.crops(image)
    assert pixels.shape == (5, 3, 16, 16) and float(pixels.min()) >= -1 and float(pixels.max()) <= 1


def test_transparent_pixels_become_white_and_aspect_is_kept():
    square = to_rgb_square(Image.new("RGBA", (40, 20), (255, 0, 0, 0)))
    assert square.size == (40, 40) and square.getpixel((20, 20)) == (255, 255, 255)
    with pytest.raises(tokenomy.TokenomyError, match="uint8"):
        to_rgb_square(np.zeros((4, 4), dtype=np.float32))


def test_scenes_are_deterministic_balanced_and_split():
    a, b = scenes.sample("test", 17), scenes.sample("test", 17)
    assert (a.question, a.answer) == (b.question, b.answer) and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(scenes.sample("train", 17).image), np.asarray(a.image))
    drawn = [scenes.sample("val", i) for i in range(100)]
    assert [s.qtype for s in drawn[:5]] == list(scenes.QUESTION_TYPES)
    counts = [s for s in drawn if s.qtype == "count"]
    assert len({s.answer for s in counts}) == 4
    with pytest.raises(ValueError, match="split"):
        scenes.sample("dev", 0)


def test_training_batches_do_not_depend_on_the_workers_rendering_them():
    from tokenomy.models.reference_vlm.model import CROP
    from tokenomy.models.reference_vlm.model import LAYOUT as REFERENCE
    from tokenomy.models.reference_vlm.train import _Batches

    batches = _Batches(ReferenceProcessor(None, REFERENCE, CROP, IMAGE), "encoder", steps=3, batch=2)
    parallel = list(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=2))
    assert len(parallel) == 3
    for step in (0, 2):
        for mine, theirs in zip(batches[step], parallel[step]):
            assert torch.equal(mine, theirs)
    assert not torch.equal(parallel[0][0], parallel[1][0])


@pytest.mark.parametrize("options, message", [
    ({"workers": -1}, "workers"), ({"batch": 0}, "batch"), ({"device": "tpu9"}, "device"),
    pytest.param({"device": "cuda"}, "no GPU", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_training_refuses_bad_settings_before_loading_anything(options, message):
    from tokenomy.models.reference_vlm.train import train

    with pytest.raises(tokenomy.TokenomyError, match=message):
        train("/nonexistent/weights.safetensors", **options)


def test_bench_method_specs_carry_options():
    from tokenomy.registry import method_spec

    assert method_spec("divprune") == ("divprune", {})
    assert method_spec("divprune:per_crop=True") == ("divprune", {"per_crop": True})
    assert method_spec("vtc-cls:layers=all") == ("vtc-cls", {"layers": "all"})
    assert method_spec("hired:budget_layer=2") == ("hired", {"budget_layer": 2})


@pytest.mark.parametrize("spec, message", [
    ("divprune:bogus=1", "no option 'bogus'"), ("divprune:per_crop", "name:option=value"),
    ("divprune:merge=2", "merge must be True or False"),
    ("divprune:keep=0.5", "--keep"), ("snapkv", "not a visual-token method"),
])
def test_bench_vision_refuses_bad_methods_before_loading(spec, message, capsys):
    from tokenomy.cli import main

    assert main(["bench", "vision", "--methods", spec]) == 2
    assert message in capsys.readouterr().err
