"""Visual-token methods on the trained reference VLM (real SmolLM2 inside)."""

import json
from contextlib import nullcontext

import pytest
import torch

import tokenomy
from tokenomy.models.reference_vlm.answers import answer, blank_like, first_word
from tokenomy.models.reference_vlm import scenes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reference():
    return tokenomy.load("reference-vlm")


def answers(vlm, processor, samples, method=None, keep=1.0):
    correct = []
    for s in samples:
        with nullcontext() if method is None else tokenomy.apply(vlm, method, keep=keep):
            text = answer(vlm, processor, processor(s.image, s.question))
        correct.append(first_word(text) == s.answer)
    return correct


def test_the_reference_vlm_reads_the_image(reference):
    vlm, processor = reference
    samples = [scenes.sample("val", i) for i in range(25)]  # every question type five times
    full = answers(vlm, processor, samples)
    diverse = answers(vlm, processor, samples, "divprune", keep=0.33)
    for s in samples:
        s.image = blank_like(s.image)
    blank = answers(vlm, processor, samples)
    assert sum(full) >= 22 and sum(blank) <= 12  # the bar: >= 85% with the image, <= 40% without
    assert sum(diverse) >= sum(full) - 4  # a third of the visual tokens keeps most of what it reads


def test_budget_reaches_the_language_model_exactly(reference):
    vlm, processor = reference
    s = scenes.sample("val", 3)
    inputs = processor(s.image, s.question)
    seen = []
    with torch.no_grad(), tokenomy.apply(vlm, "tcc", keep=0.11) as session:
        hook = vlm.model.language_model.register_forward_pre_hook(  # after the session's: sees what it hands on
            lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
        vlm(**inputs)
        hook.remove()
    assert seen == [inputs["input_ids"].shape[1] - 180 + 20]
    assert sum(session.stats.crop_counts[0]) == 20


def test_cli_bench_vision_writes_json_and_plot(tmp_path, capsys):
    from tokenomy.cli import main

    out = tmp_path / "vision.json"
    assert main(["bench", "vision", "--limit", "2", "--methods", "todre,tome,fastv,atp,divprune+fastv",
                 "--keep", "0.11", "--adaptive", "0.8", "--timing", "1", "--repeats", "1", "--oracle",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    rows = {(r["method"], r["target"]): r for r in payload["results"]}
    assert set(rows) == {("full", 1.0), ("blank image", 1.0), ("todre", 0.11), ("tome", 0.11), ("fastv", 0.11),
                         ("atp (0.8)", 0.8), ("divprune+fastv", 0.11), ("label oracle", 0.11)}
    oracle = rows[("label oracle", 0.11)]
    assert oracle["visual_tokens"] == 20 and oracle["prefill_ms"] is None  # exact budget; not timed
    assert rows[("todre", 0.11)]["visual_tokens"] == 20 and rows[("full", 1.0)]["visual_tokens"] == 180
    assert rows[("todre", 0.11)]["layer_fraction"] <= 20 / 180 + 1e-9  # stage 2 only removes more
    for matched in ("fastv", "divprune+fastv", "tome"):  # the same average per layer, within rounding
        assert abs(rows[(matched, 0.11)]["layer_fraction"] - 0.11) < 0.01
    assert rows[("fastv", 0.11)]["visual_tokens"] == 180  # every token reaches the LM; fewer pass layer 2
    assert rows[("todre", 0.11)]["gflops"] < rows[("full", 1.0)]["gflops"]
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "todre" in capsys.readouterr().out
