"""`tokenomy bench vision`: visual-token methods on the reference VLM, side by side on the same samples.

Samples: the synthetic VQA test split (`tokenomy.models.reference_vlm.scenes`; the validation split for
method development), indices ``seed * 1_000_000 + i``, question types in rotation. Every sample is answered by
the full model, by the same model with the image blanked (white), and by every row, greedy, at most 4 new
tokens; correct when the first word of the answer (lower case, punctuation stripped) is the expected word.

Rows are compared at the same **average number of visual tokens per decoder layer** (what the language
model's prefill FLOPs follow), one target per ``--keep`` value ``a``:

* a method before the language model keeps ``a`` of the visual tokens (every layer sees them);
* an in-LLM method with a fixed budget gets the fraction that makes its layer average ``a`` (FastV at K: the
  layers before K see all tokens, so the layers after see fewer than ``a``); likewise the in-LLM part of a
  stack (``"divprune+fastv:K=2"``), whose first part keeps ``min(1, 2a)``;
* a method whose budget adapts to each image (ATP's mass ``tau``, ToDRE's second stage) runs at the values
  of ``adaptive`` (ATP) or at ``a`` for its first stage (ToDRE); its measured average is reported.

Columns: accuracy, accuracy relative to full tokens on the same samples, visual tokens reaching the language
model, visual tokens per layer on average (and as a fraction), analytical prefill GFLOPs (ViT over every
crop, projector, and every decoder layer over the tokens it holds), measured prefill time (as ``generate``
runs it: vision tower, selection, language model, the next token's logits; median over ``repeats`` rounds in
which every row runs once, in turn, on the same ``timing`` samples), speedup over full,
and the selection overhead (scoring and choosing) as a share of that prefill.

With ``oracle``, a "label oracle" row per target answers with the visual tokens the generator's labels say
show an object or the large word: a selection no method can make, which shows how much of a method's loss is
the selection's and how much the model's.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.adapters.lm import decoder
from tokenomy.adapters.vlm import vlm_adapter
from tokenomy.adapters.vlm.base import dense_weights
from tokenomy.budget import Keep, kept_count
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.answers import answer, blank_like, first_word
from tokenomy.catalog import create_spec, get
from tokenomy.registry import method_spec
from tokenomy.sites.vision.prellm import Diverse, PreLLM, first_isolated
from tokenomy.sites.vision.session import VisualMethods
from tokenomy.bench.html import Axis, Figure, key

ORACLE = "label oracle"
RELEVANT_KINDS = (1, 2, 3, scenes.KIND_WORD)  # the shapes and the large word, not filler text
VISUAL_SITES = ("pre-llm", "vision-encoder", "in-llm")

COLUMNS = [
    ("method", "method", ""),
    ("target", "target", ".2f"),
    ("accuracy", "accuracy", ".3f"),
    ("relative", "vs full", ".3f"),
    ("visual_tokens", "visual tokens", ".1f"),
    ("layer_fraction", "per layer", ".3f"),
    ("gflops", "prefill GFLOPs", ".2f"),
    ("prefill_ms", "prefill ms", ".1f"),
    ("speedup", "speedup", ".2f"),
    ("overhead", "selection share", ".3f"),
]


@dataclass
class Row:
    """One row of the benchmark: a label, the target average, and what builds its methods."""

    label: str
    target: float
    build: Callable[[], VisualMethods] | None


def check_specs(specs: list[str]) -> None:
    """Refuse unknown or non-visual methods and bad options before loading anything."""
    for spec in specs:
        parts = spec.split("+")
        if len(parts) > 2:
            raise TokenomyError(f"a stack row is 'before+inside' (two methods), got {spec!r}")
        for part in parts:
            get(method_spec(part)[0], VISUAL_SITES)
            create_spec(part, keep=0.5)


def schedule_average(methods: VisualMethods, depth: int) -> float | None:
    """The average fraction of visual tokens per decoder layer a method's schedule implies, or None when its
    budget adapts to each image (then only a measurement tells)."""
    before = methods.before.keep if methods.before is not None else 1.0
    inside = methods.inside
    if inside is None:
        return before
    if not isinstance(inside.budget, Keep):
        return None
    stages = set(inside.stage_layers(depth))
    fraction, total = 1.0, 0.0
    for layer in range(depth):
        if layer in stages:
            fraction *= inside.budget.keep
        total += fraction
    return before * total / depth


def _solve(make: Callable[[float], VisualMethods], target: float, depth: int) -> float | None:
    """The keep whose schedule average is ``target`` (bisection; the average grows with keep), or None when
    even the smallest keep stays above it."""
    lo, hi = 1e-4, 1.0
    if schedule_average(make(lo), depth) > target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if schedule_average(make(mid), depth) > target:
            hi = mid
        else:
            lo = mid
    return lo


def rows_for(specs: list[str], targets: list[float], adaptive: list[float], depth: int) -> list[Row]:
    """The benchmark's rows (see the module docstring); a target a method cannot reach is left out."""
    rows = []
    for spec in specs:
        parts = spec.split("+")
        probe = _build(parts, (0.5,) * len(parts))
        if probe.before is None and schedule_average(probe, depth) is None:  # an adaptive budget all along
            rows += [Row(f"{spec} ({value:g})", value, partial(_build, parts, (value,))) for value in adaptive]
            continue
        for target in targets:
            if probe.inside is None or schedule_average(probe, depth) is None:  # before the LM (ToDRE: stage 1)
                keeps: tuple | None = (target,)
            elif len(parts) == 2:
                first = min(1.0, 2 * target)
                solved = _solve(lambda k, f=first: _build(parts, (f, k)), target, depth)
                keeps = None if solved is None else (first, solved)
            else:
                solved = _solve(lambda k: _build(parts, (k,)), target, depth)
                keeps = None if solved is None else (solved,)
            if keeps is not None:
                rows.append(Row(spec, target, partial(_build, parts, keeps)))
    return rows


def _build(parts: list[str], keeps: tuple[float, ...]) -> VisualMethods:
    """One method (``parts`` of one), or a stack: the first's part before the LM, the second's inside it."""
    built = [create_spec(part, keep=keep).as_visual() for part, keep in zip(parts, keeps)]
    if len(built) == 1:
        return built[0]
    return VisualMethods(built[0].before, built[1].inside)


def prefill_flops(vlm, text_tokens: int, layer_visual: list[float], patches: int, per_crop: int) -> float:
    """Multiply-adds x 2 of one prefill: ViT over every crop of ``per_crop`` patches, the projector over every
    patch token, and each decoder layer over the tokens it holds (its weights, and causal attention)."""
    stack = decoder(vlm)
    text = vlm.config.text_config
    llm = 0.0
    for layer, visual in zip(stack.layers, layer_visual):
        n = text_tokens + visual
        llm += 2 * n * dense_weights(layer) + 2 * n * n * text.hidden_size
    vision = vlm.config.vision_config
    layers = vlm_adapter(vlm).layers
    crops, tokens = patches // per_crop, per_crop + 1  # + [CLS]
    vit = 2 * crops * tokens * dense_weights(layers) + 4 * crops * tokens**2 * vision.hidden_size * len(layers)
    return float(llm + vit + 2 * patches * dense_weights(vlm.model.multi_modal_projector))


def relevance(processor, sample: scenes.Sample) -> Tensor:
    """Fraction of each visual token's pixels showing an object or the large word, ``(crops * patches,)`` in
    the model's token order: the generator's labels cut into crops exactly as the processor cuts the image."""
    mask = np.isin(sample.labels[0], RELEVANT_KINDS).astype(np.uint8) * 255
    crops = processor.crops(Image.fromarray(mask))[:, 0] * processor.std[0] + processor.mean[0]  # in [0, 1]
    side = processor.layout.side
    patch = processor.crop // side
    return crops.reshape(-1, side, patch, side, patch).mean((2, 4)).flatten()


def oracle_starts(relevance: Tensor, k: int, threshold: float = 0.1) -> list[int]:
    """The label oracle's tokens: those covering most object / word pixels (at least ``threshold`` of a
    token), best first, at most ``k``; DivPrune's traversal (`Diverse`) continues from them to ``k``."""
    relevant = int((relevance >= threshold).sum())
    return torch.argsort(relevance, descending=True, stable=True)[: min(k, relevant)].tolist()


def _session(row: Row | str, vlm, processor=None, sample: scenes.Sample | None = None):
    if isinstance(row, str):  # "full", "blank image"
        return nullcontext()
    if row.label == ORACLE:
        patches = processor.layout.num_crops * processor.layout.tokens_per_crop
        starts = oracle_starts(relevance(processor, sample), int(kept_count(row.target, patches)))
        start = (lambda view, crop: starts) if starts else first_isolated  # nothing relevant: DivPrune
        return PreLLM(row.target, Diverse(start), joint=True).apply(vlm)
    return row.build().apply(vlm)


def _record(session) -> dict:
    stats = getattr(session, "stats", None)
    if stats is None:
        return {}
    return {"visual_tokens": stats.tokens_kept, "layer_tokens": list(stats.layer_tokens),
            "placeholders": stats.tokens_seen}


def configurations(rows: list[Row], oracle: list[float] | None = None) -> list:
    """What every sample is answered with: the full model, a blanked image, every row, a label oracle per target."""
    return ["full", "blank image", *rows, *(Row(ORACLE, target, None) for target in oracle or ())]


def draw(split: str, seed: int, index: int, style: scenes.Style) -> scenes.Sample:
    """Sample ``index`` of a run (the same for every process and machine)."""
    return scenes.sample(split, seed * 1_000_000 + index, style)


def answer_sample(vlm, processor, configs: list, index: int, s: scenes.Sample,
                  progress: Callable[[int], Any] = lambda n: None) -> list[dict]:
    """Sample ``index``'s records: its question answered with every configuration."""
    patches = processor.layout.num_crops * processor.layout.tokens_per_crop
    depth = len(decoder(vlm).layers)
    records = []
    for config in configs:
        image = blank_like(s.image) if config == "blank image" else s.image
        inputs = processor(image, s.question)
        with _session(config, vlm, processor, s) as session:
            text = answer(vlm, processor, inputs)
        label, target = (config, 1.0) if isinstance(config, str) else (config.label, config.target)
        seen = _record(session) or {"visual_tokens": patches, "layer_tokens": [patches] * depth,
                                    "placeholders": patches}
        records.append({"sample": index, "qtype": s.qtype, "objects": s.count, "method": label, "target": target,
                        "answer": s.answer, "output": text, "correct": first_word(text) == s.answer,
                        "text_tokens": int(inputs["input_ids"].shape[1]) - patches, **seen})
        progress(1)
    return records


_MODELS: dict[str, tuple] = {}


def run_cell(payload: tuple) -> list[dict]:
    """One sample of a sweep (a `tokenomy.bench.sweep` cell, run here or in a Ray worker): ``(model name, configs,
    split, seed, index)`` -> its records. The model loads once per process."""
    import tokenomy
    from tokenomy.models.reference_vlm import variant

    name, configs, split, seed, index = payload
    if name not in _MODELS:
        _MODELS[name] = tokenomy.load(name)
    vlm, processor = _MODELS[name]
    return answer_sample(vlm, processor, configs, index, draw(split, seed, index, variant(name).style))


def time_prefills(vlm, processor, configs: list, samples: list[scenes.Sample], repeats: int,
                  progress: Callable[[int], Any] = lambda n: None) -> list[dict]:
    """Time the prefill of ``samples`` with every configuration but the blank image's and the oracle's (theirs is
    the full model's and a method's), ``repeats`` rounds, in this process."""
    timings = []
    timed = [c for c in configs if c != "blank image" and not (isinstance(c, Row) and c.label == ORACLE)]
    for _ in range(repeats):
        for config in timed:
            for s in samples:
                inputs = processor(s.image, s.question)
                with _session(config, vlm) as session, torch.no_grad():
                    tic = time.perf_counter()
                    vlm(**inputs, logits_to_keep=1)  # a generation prefill: the next token's logits only
                    seconds = time.perf_counter() - tic
                label, target = (config, 1.0) if isinstance(config, str) else (config.label, config.target)
                timings.append({"method": label, "target": target, "seconds": seconds,
                                "selection_seconds": session.stats.selection_seconds if session else 0.0})
                progress(1)
    return timings


def summarize(vlm, processor, records: list[dict], timings: list[dict]) -> list[dict]:
    full = {r["sample"]: r["correct"] for r in records if r["method"] == "full"}
    full_accuracy = sum(full.values()) / len(full)
    patches = processor.layout.num_crops * processor.layout.tokens_per_crop

    def median_time(method, target, key="seconds"):
        values = [t[key] for t in timings if t["method"] == method and t["target"] == target]
        return statistics.median(values) if values else None

    full_ms = median_time("full", 1.0)
    out = []
    for method, target in dict.fromkeys((r["method"], r["target"]) for r in records):
        mine = [r for r in records if r["method"] == method and r["target"] == target]
        accuracy = sum(r["correct"] for r in mine) / len(mine)
        layers = [statistics.mean(values) for values in zip(*(r["layer_tokens"] for r in mine))]
        text = statistics.mean(r["text_tokens"] for r in mine)
        seconds = median_time(method, target)
        selection = median_time(method, target, "selection_seconds")
        out.append({
            "method": method, "target": target, "accuracy": accuracy,
            "relative": accuracy / full_accuracy if full_accuracy else None,
            "visual_tokens": statistics.mean(r["visual_tokens"] for r in mine),
            "layer_tokens": layers, "layer_fraction": statistics.mean(layers) / patches,
            "gflops": prefill_flops(vlm, round(text), layers, patches, processor.layout.tokens_per_crop) / 1e9,
            "prefill_ms": None if seconds is None else seconds * 1e3,
            "speedup": None if seconds is None or not full_ms else full_ms / seconds,
            "overhead": None if seconds is None or method == "full" else selection / seconds,
            "by_type": {q: sum(r["correct"] for r in mine if r["qtype"] == q)
                        / max(1, sum(r["qtype"] == q for r in mine)) for q in scenes.QUESTION_TYPES},
        })
    return out


def plot(results: list[dict], records: list[dict], path: Path, split: str = "test",
         model: str = "reference-vlm") -> Path:
    """Left: accuracy against the average fraction of visual tokens per decoder layer, one line per method
    (full and blank-image accuracy as guides). Right: visual tokens entering each decoder layer for every
    adaptive row, averaged over easy images (scenes of one or two objects) and dense ones (pages of text)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, layers_ax) = plt.subplots(1, 2, figsize=(13, 5))
    guides = {r["method"]: r["accuracy"] for r in results if r["method"] in ("full", "blank image")}
    colours = plt.get_cmap("tab20").colors
    for index, method in enumerate(dict.fromkeys(r["method"].split(" (")[0] for r in results
                                                 if r["method"] not in guides)):
        mine = [r for r in results if r["method"].split(" (")[0] == method]
        points = sorted((r["layer_fraction"], r["accuracy"]) for r in mine)
        inside = any(r["layer_tokens"][-1] < r["layer_tokens"][0] for r in mine)  # tokens leave between layers
        ax.plot(*zip(*points), marker="os^Dv"[index % 5], color=colours[index % len(colours)],
                linestyle="--" if inside else "-", label=method)
    for name, style in (("full", "-"), ("blank image", ":")):
        if name in guides:
            ax.axhline(guides[name], color="black", linestyle=style, linewidth=1, label=f"{name} ({guides[name]:.2f})")
    ax.set_xlabel("visual tokens per decoder layer (fraction, average over layers; dashed: in-LLM)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{model}, synthetic VQA {split} split")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    adaptive = [r["method"] for r in results if " (" in r["method"]]
    for method in adaptive:
        for kind, picks, style in (("easy", lambda r: 0 < r["objects"] <= 2, "-"),
                                   ("dense", lambda r: r["qtype"] == "word", "--")):
            mine = [r["layer_tokens"] for r in records if r["method"] == method and picks(r)]
            if mine:
                layers_ax.plot([statistics.mean(v) for v in zip(*mine)], style, label=f"{method}, {kind}")
    layers_ax.set_xlabel("decoder layer")
    layers_ax.set_ylabel("visual tokens entering the layer")
    layers_ax.set_title("adaptive methods: easy vs dense images")
    if layers_ax.lines:
        layers_ax.legend(fontsize=7)
    layers_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(payload: dict, markdown: bool = False) -> str:
    from tokenomy.bench.report import table

    return table(payload["results"], COLUMNS, markdown=markdown)


_ACCURACY = Axis(key("relative"), "accuracy / all tokens'", "high")
FIGURES = [
    Figure(title, x, _ACCURACY, series=lambda r: r["method"])
    for title, x in [("accuracy vs visual tokens kept",
                      Axis(key("layer_fraction"), "visual tokens per decoder layer (share)", "low")),
                     ("accuracy vs prefill time", Axis(key("prefill_ms", 1e-3), "prefill, s (median)", "low"))]
]
