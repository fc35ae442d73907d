"""The parts of visual-token methods on plain tensors and small inputs: scores, budgets, the site's token-axis
plumbing, the reference VLM's processor and data."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

import tokenomy
from tokenomy.budget import MassCoverage, RelevanceThreshold
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.processor import CropLayout, ReferenceProcessor, to_rgb_square
from tokenomy.score.in_llm import DecoderView, InstructionAttention, LastQueryAttention, RaterAttention
from tokenomy.score.vision import ImageView, ThumbnailAttention, cls_similarity, patch_density
from tokenomy.select import on_lattice, pool_representatives
from tokenomy.sites.vision.in_llm import AtFractions, EvenStages, FromLayer, Recycled, SpatiallyAugmented
from tokenomy.sites.vision.prellm import Diverse, Pooled, PreLLM, first_isolated
from tokenomy.sites.vision.tokens import build_mask, packed_columns, take, take_mask
from tokenomy.sites.vision.vit_merge import merge_schedule

IMAGE = 5


def view_of(features, grids, attention=None, **options) -> ImageView:
    return ImageView(features, grids, 2, attention or (lambda layer: torch.zeros(features.shape[0])), **options)


# -- scores and choices before the language model ----------------------------------------------------------------
def test_joint_diverse_selection_takes_one_token_of_a_blank_crop():
    features = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    features[0] = features[0, :1]  # a blank crop: every token the same
    view = view_of(features.flatten(0, 1), ((4, 4),) * 3)
    chosen = Diverse(first_isolated)(view, None, 12).kept
    counts = torch.bincount(chosen // 16, minlength=3)
    assert counts.sum() == 12 and counts[0] <= 1 and bool((chosen.diff() > 0).all())
    assert [len(Diverse(first_isolated)(view, crop, 4).kept) for crop in range(3)] == [4, 4, 4]


def test_diverse_merge_folds_pruned_tokens_into_kept_ones():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    view = view_of(features, ((2, 2),))
    merged = Diverse(lambda view, crop: 0, merge=True)(view, None, 2)
    assert merged.kept.tolist() == [0, 2]
    torch.testing.assert_close(merged.features, torch.stack([features[:2].mean(0), features[2:].mean(0)]))
    assert Diverse(lambda view, crop: 0)(view, None, 2).features is None


def test_pooling_places_each_pooled_token_where_its_window_starts():
    view = view_of(torch.arange(16.0).view(16, 1), ((4, 4),))
    pooled = Pooled()(view, 0, 4)
    assert pooled.kept.tolist() == [0, 2, 8, 10]
    assert pooled.features.flatten().tolist() == [2.5, 4.5, 10.5, 12.5]
    assert pool_representatives(5, 4, 4).tolist() == [0, 3, 6, 9, 12]  # 5 has no grid: raster order


def test_a_crop_rule_shares_the_budget_and_joint_selection_refuses_one():
    view = view_of(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), ((4, 4), (4, 4)))
    from tokenomy.adapters.vlm.base import ImageTokens

    image = ImageTokens(view, torch.arange(32), lambda x: x)
    split = PreLLM(0.25, Pooled(), crop_weights=lambda view: torch.tensor([3.0, 1.0])).reduce(image, 0, {})
    assert torch.bincount(split.kept // 16).tolist() == [6, 2]
    with pytest.raises(tokenomy.TokenomyError, match="joint"):
        PreLLM(0.5, Diverse(first_isolated), crop_weights=lambda view: torch.ones(2), joint=True)


def test_density_gives_repetitive_crops_fewer_tokens():
    features = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(0))
    features[0] = features[0, :1]
    density = patch_density(view_of(features.flatten(0, 1), ((4, 4),) * 3))
    assert density[0] == pytest.approx(0, abs=1e-6) and bool((density[1:] > 0.1).all())


def test_thumbnail_attention_maps_onto_the_tiles():
    attention = torch.zeros(5 * 16)
    attention[0] = 1.0  # the thumbnail looks only at its top-left token
    view = view_of(torch.randn(80, 4), ((4, 4),) * 5, lambda layer: attention, thumbnail=0, tiles=(2, 2))
    assert ThumbnailAttention(layer=1)(view).tolist() == pytest.approx([0.0625, 0.25, 0.0, 0.0, 0.0])
    unknown = view_of(torch.randn(80, 4), ((4, 4),) * 5, lambda layer: attention, thumbnail=4)
    assert ThumbnailAttention(layer=1)(unknown).tolist() == [1.0] * 5  # no arrangement: equal shares


def test_cls_similarity_falls_back_to_the_crop_mean_without_cls():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    no_cls = cls_similarity(view_of(features, ((1, 3),)))
    assert no_cls.tolist() == pytest.approx([0.8944, 0.8944, 0.4472], abs=1e-4)
    with_cls = cls_similarity(view_of(features, ((1, 3),), cls=torch.tensor([[0.0, 1.0]])))
    assert with_cls.tolist() == pytest.approx([0.0, 0.0, 1.0])


def test_tome_schedule_takes_every_merge_it_can():
    schedule = merge_schedule(16, 2, 3)
    assert sum(schedule) == 14 and schedule[-1] == 0
    tokens = 16
    for r in schedule[:-1]:
        assert r <= tokens // 2
        tokens -= r


# -- budgets ----------------------------------------------------------------------------------------------------
def test_mass_coverage_keeps_the_fewest_tokens_covering_tau():
    scores = torch.tensor([0.5, 0.1, 0.3, 0.1])
    assert MassCoverage(0.5).count(scores) == 1
    assert MassCoverage(0.8).count(scores) == 2
    assert MassCoverage(0.9).count(scores) == 3
    assert MassCoverage(1.0).count(scores) == 4
    assert MassCoverage(0.5).count(torch.zeros(3)) == 3  # nothing to go by: keep everything
    peaked, flat = torch.tensor([0.97, 0.01, 0.01, 0.01]), torch.full((4,), 0.25)
    assert MassCoverage(0.9).count(peaked) < MassCoverage(0.9).count(flat)  # easy images keep fewer
    with pytest.raises(tokenomy.TokenomyError, match="tau"):
        MassCoverage(0)


def test_relevance_threshold_keeps_all_or_nothing():
    assert RelevanceThreshold(0.2).count(torch.tensor([0.1, 0.15])) == 2
    assert RelevanceThreshold(0.2).count(torch.tensor([0.05, 0.1])) == 0
    with pytest.raises(tokenomy.TokenomyError, match="threshold"):
        RelevanceThreshold(-1)


def test_layer_schedules():
    assert EvenStages(4)(32) == (8, 16, 24)
    assert AtFractions((2 / 32, 6 / 32, 15 / 32))(32) == (2, 6, 15)
    assert FromLayer(2, 4)(16) == (2, 6, 10, 14)
    with pytest.raises(tokenomy.TokenomyError, match="stages"):
        EvenStages(40)(32)


# -- in-LLM scores and choices ----------------------------------------------------------------------------------
def decoder_view(probs: torch.Tensor, visual, hidden=None, grid=None) -> DecoderView:
    """A view whose attention rows are ``probs`` ``(b, n, n)`` (query position -> keys), one head."""
    b, n = visual.shape
    grid = grid if grid is not None else torch.full((b, n, 3), -1)
    hidden = hidden if hidden is not None else torch.randn(b, n, 4)
    image = torch.where(visual, 0, -1)
    return DecoderView(visual, image, torch.ones_like(visual), hidden, 2, 4, grid,
                       lambda queries: probs.gather(1, queries[..., None].expand(-1, -1, n))[:, None])


def test_last_query_and_instruction_attention_read_the_right_rows():
    visual = torch.tensor([[False, True, True, True, False, False]])
    probs = torch.zeros(1, 6, 6)
    probs[0, 4] = torch.tensor([0.0, 0.6, 0.2, 0.2, 0.0, 0.0])  # the question token looks at visual token 1
    probs[0, 5] = torch.tensor([0.0, 0.0, 0.1, 0.9, 0.0, 0.0])  # the last token at visual token 3
    view = decoder_view(probs, visual)
    assert LastQueryAttention()(view)[0].tolist() == pytest.approx([0, 0, 0.1, 0.9, 0, 0])
    assert InstructionAttention()(view)[0].tolist() == pytest.approx([0, 0.3, 0.15, 0.55, 0, 0])
    raters = RaterAttention()(view)[0]  # both look at the image equally: both rate
    assert raters.tolist() == pytest.approx([0, 0.3, 0.15, 0.55, 0, 0])


def test_spatial_augmentation_adds_a_lattice_and_recycling_keeps_the_budget():
    scores = torch.tensor([0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.8])
    cells = torch.stack([torch.zeros(9, dtype=torch.long), torch.arange(9) // 3, torch.arange(9) % 3], -1)
    visual = torch.ones(1, 9, dtype=torch.bool)
    view = decoder_view(torch.zeros(1, 9, 9), visual, grid=cells[None])
    chosen, merged = SpatiallyAugmented(stride=3)(scores, 1, view, 0, torch.arange(9))
    assert chosen.tolist() == [0, 4] and merged is None  # the best token, and the lattice's middle
    hidden = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 1], [1, 1], [1, 0.1]])
    view = decoder_view(torch.zeros(1, 9, 9), visual, hidden=hidden[None])
    chosen, (at, values) = Recycled(share=0.5)(scores, 4, view, 0, torch.arange(9))
    assert len(chosen) == 4 and {0, 8} <= set(chosen.tolist()) and set(at.tolist()) <= set(chosen.tolist())
    assert values.shape == (2, 2)


# -- token-axis plumbing ----------------------------------------------------------------------------------------
def test_packed_columns_right_align_what_each_row_keeps():
    keep = torch.tensor([[True, False, True, True], [False, True, False, False]])
    columns, valid = packed_columns(keep)
    assert columns.tolist() == [[0, 2, 3], [0, 0, 1]] and valid.tolist() == [[True, True, True], [False, False, True]]
    cos = torch.arange(8.0).view(1, 4, 2)  # a batch of one broadcasts
    assert take(cos, columns, -2)[1, :, 0].tolist() == [0.0, 0.0, 2.0]
    mrope = torch.arange(3 * 2 * 4).view(3, 2, 4)  # (axes, b, L)
    assert take(mrope, columns, -1)[2].tolist() == [[16, 18, 19], [20, 20, 21]]


def test_masks_over_kept_tokens():
    causal = torch.ones(4, 4, dtype=torch.bool).tril()[None, None].expand(2, 1, 4, 4)
    columns, valid = torch.tensor([[0, 2, 3], [0, 0, 1]]), torch.tensor([[True] * 3, [False, False, True]])
    taken = take_mask(causal, columns, columns, valid, valid)
    assert taken[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert taken[1, 0].tolist() == [[True, False, False], [False, True, False], [False, False, True]]
    window = build_mask(torch.tensor([[5]]), torch.tensor([[0, 2, 3, 4, 5]]), torch.ones(1, 5, dtype=torch.bool),
                        3, None)
    assert window[0, 0, 0].tolist() == [False, False, True, True, True]
    additive = build_mask(torch.tensor([[1]]), torch.tensor([[0, 1]]), torch.tensor([[False, True]]), None,
                          torch.float32)
    assert additive[0, 0, 0, 1] == 0 and additive[0, 0, 0, 0] == torch.finfo(torch.float32).min
    assert on_lattice(torch.tensor([1, 1, 2]), torch.tensor([1, 2, 1]), 3).tolist() == [True, False, False]


# -- the reference VLM's processor and data --------------------------------------------------------------------
LAYOUT = CropLayout(thumbnail=True, rows=2, cols=2, side=4)


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

    batches = _Batches([ReferenceProcessor(None, REFERENCE, CROP, IMAGE)], scenes.FLAT, "encoder", steps=3, batch=2)
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
        train("reference-vlm-v1", "/nonexistent/weights.safetensors", **options)


def test_bench_method_specs_carry_options():
    from tokenomy.registry import method_spec

    assert method_spec("divprune") == ("divprune", {})
    assert method_spec("divprune:per_crop=True") == ("divprune", {"per_crop": True})
    assert method_spec("vtc-cls:layers=all") == ("vtc-cls", {"layers": "all"})
    assert method_spec("hired:budget_layer=2") == ("hired", {"budget_layer": 2})


@pytest.mark.parametrize("spec, message", [
    ("divprune:bogus=1", "no option 'bogus'"), ("divprune:per_crop", "name:option=value"),
    ("divprune:merge=2", "merge must be True or False"),
    ("divprune:keep=0.5", "--keep"), ("snapkv", "works at site 'kv-cache'"),
])
def test_bench_vision_refuses_bad_methods_before_loading(spec, message, capsys):
    from tokenomy.cli import main

    assert main(["bench", "vision", "--methods", spec]) == 2
    assert message in capsys.readouterr().err


# -- the tower's attention, as the adapters read it ------------------------------------------------------------
@pytest.mark.parametrize("name, with_cls", [("llava", True), ("reference_v2", True), ("gemma3", False),
                                            ("internvl", True), ("qwen2_vl", False)])
def test_tower_attention_matches_the_towers_own_attention_weights(name, with_cls, monkeypatch):
    """[CLS]'s attention row, or the mean row every patch pays (tiny towers: every patch asks), equals what the
    tower's eager attention computes."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from vlm_families import FAMILIES

    from tokenomy.adapters.vlm import vlm_adapter

    build, make = FAMILIES[name]
    model = build()
    inputs = make(model, "one")
    adapter = vlm_adapter(model)
    assert adapter.has_cls == with_cls
    record: dict = {}
    handles = adapter.capture(record, {len(adapter.layers) - 1})
    with torch.no_grad():
        model(**inputs)
    for handle in handles:
        handle.remove()
    image = adapter.images(record, inputs)[0]
    mine = image.view.attention(-1)
    assert mine.shape == (image.view.features.shape[0],)
    assert torch.isfinite(mine).all() and bool((mine >= 0).all())
    if name in ("llava", "reference_v2"):  # CLIP's (DINOv2's) own weights: [CLS] row, CLS column out, head mean
        weights = _last_layer_eager_weights(model, inputs, monkeypatch)
        expected = weights[:, :, 0, 1:].mean(1).flatten()
    elif name == "internvl":  # [CLS] row of every tile, summed over each token's pixel-shuffle window
        weights = _last_layer_eager_weights(model, inputs, monkeypatch)
        received = weights[:, :, 0, 1:].mean(1).view(-1, 1, adapter.side, adapter.side)
        expected = torch.nn.functional.avg_pool2d(received, adapter.scale).flatten() * adapter.scale**2
    elif name == "gemma3":  # the mean over every patch as a query, summed over each token's 2x2 pooling window
        weights = _last_layer_eager_weights(model, inputs, monkeypatch)
        expected = torch.nn.functional.avg_pool2d(weights.mean(dim=(1, 2))[0].view(1, 1, 4, 4), 2).flatten() * 4
    else:  # qwen2_vl: the mean over every patch of its image as a query, summed over each merged 2x2 block
        weights = _last_layer_eager_weights(model, inputs, monkeypatch, block=adapter.blocks[-1].attn)
        expected = weights.mean(dim=(1, 2))[0].view(-1, 4).sum(-1)  # one image: a single segment
    torch.testing.assert_close(mine, expected, rtol=1e-4, atol=1e-6)


def _last_layer_eager_weights(model, inputs, monkeypatch, block=None):
    """The attention weights the vision tower's last layer computes under eager attention: through
    ``output_attentions`` where the tower returns them, else (``block``: an attention module that drops them)
    recorded from its module's ``eager_attention_forward``."""
    tower = model.model.vision_tower if block is None else block
    monkeypatch.setattr(tower.config, "_attn_implementation", "eager")
    if block is None:
        with torch.no_grad():
            return tower(inputs["pixel_values"], output_attentions=True).attentions[-1]
    module = sys.modules[type(block).__module__]
    eager, seen = module.eager_attention_forward, []

    def recording(*args, **kwargs):
        out, weights = eager(*args, **kwargs)
        seen.append(weights)
        return out, weights

    monkeypatch.setattr(module, "eager_attention_forward", recording)
    with torch.no_grad():
        model(**inputs)
    return seen[-1]
