"""`tokenomy bench vision`: visual-token methods on the reference VLM, side by side on the same samples.

Samples: the synthetic VQA test split (`tokenomy.models.reference_vlm.scenes`; the validation split for
method development), indices ``seed * 1_000_000 + i``, question types in rotation. A method may carry
options (``"divprune:per_crop=True"``), so variants run side by side as rows of their own. Every sample
is answered by the full model, by the same model with the image blanked (white), and by every method at
every kept fraction, with greedy decoding of up to 4 tokens. Correct when the first word of the answer (lower case, punctuation stripped)
equals the expected word. Rows report accuracy, accuracy relative to full tokens on the same samples,
visual tokens reaching the LLM, analytical prefill FLOPs, measured prefill time (vision tower +
selection + projector + LLM prefill; median over ``repeats`` rounds in which every row runs once, in
turn, on the same ``timing`` samples) and the selection overhead as a share of that prefill.

With ``oracle``, a "label oracle" row per kept fraction answers with the visual tokens the generator's
labels say show an object or the large word: a selection no method can make (it reads the answer's
location), which shows how much of a method's loss is the selection's and how much the model's.
"""

from __future__ import annotations

import statistics
import string
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import tokenomy
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.vision_adapters import dense_weights, vision_parts
from tokenomy.registry import method_spec
from tokenomy.budget import kept_count
from tokenomy.sites.visual import Diverse, PreLLM, first_isolated

ORACLE = "label oracle"
RELEVANT_KINDS = (1, 2, 3, scenes.KIND_WORD)  # the shapes and the large word, not filler text

COLUMNS = [
    ("method", "method", ""),
    ("keep", "keep", ".2f"),
    ("accuracy", "accuracy", ".3f"),
    ("relative", "vs full", ".3f"),
    ("visual_tokens", "visual tokens", ".1f"),
    ("gflops", "prefill GFLOPs", ".2f"),
    ("prefill_ms", "prefill ms", ".1f"),
    ("speedup", "speedup", ".2f"),
    ("overhead", "selection share", ".3f"),
]


def first_word(text: str) -> str:
    words = text.strip().lower().split()
    return words[0].strip(string.punctuation) if words else ""


@torch.no_grad()
def answer(vlm, processor, inputs: dict[str, torch.Tensor]) -> str:
    """The model's greedy reply (at most 4 new tokens) to a processed image + question, on its device."""
    inputs = {k: v.to(vlm.device) for k, v in inputs.items()}
    out = vlm.generate(**inputs, max_new_tokens=4, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def prefill_flops(vlm, text_tokens: int, visual_tokens: int, patches: int) -> float:
    """Multiply-adds x 2 of one prefill: ViT over every crop, projector and LLM over the kept tokens."""
    parts = vision_parts(vlm)
    language_model = vlm.model.language_model
    text, vision = vlm.config.text_config, vlm.config.vision_config
    n = text_tokens + visual_tokens
    llm = 2 * n * (dense_weights(language_model) - language_model.embed_tokens.weight.numel())
    llm += 2 * n * n * text.hidden_size * text.num_hidden_layers  # causal QK^T and AV
    per_crop = (vision.image_size // vision.patch_size) ** 2
    crops, tokens = patches // per_crop, per_crop + 1  # + [CLS]
    vit = 2 * crops * tokens * dense_weights(parts.layers)
    vit += 4 * crops * tokens**2 * vision.hidden_size * len(parts.layers)
    return float(llm + vit + 2 * visual_tokens * dense_weights(parts.projector))


def blank_like(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, (255, 255, 255))


def relevance(processor, sample: scenes.Sample) -> Tensor:
    """Fraction of each visual token's pixels showing an object or the large word, ``(crops * patches,)`` in
    the model's token order: the generator's labels cut into crops exactly as the processor cuts the image."""
    mask = np.isin(sample.labels[0], RELEVANT_KINDS).astype(np.uint8) * 255
    crops = (processor.crops(Image.fromarray(mask))[:, 0] + 1) / 2  # (crops, crop, crop) in [0, 1]
    side = processor.layout.side
    patch = processor.crop // side
    return crops.reshape(-1, side, patch, side, patch).mean((2, 4)).flatten()


def oracle_starts(relevance: Tensor, k: int, threshold: float = 0.1) -> list[int]:
    """The label oracle's tokens: those covering most object / word pixels (at least ``threshold`` of a
    token), best first, at most ``k``; DivPrune's traversal (`Diverse`) continues from them to ``k``."""
    relevant = int((relevance >= threshold).sum())
    return torch.argsort(relevance, descending=True, stable=True)[: min(k, relevant)].tolist()


def _session(method: str, keep: float, vlm, processor=None, sample: scenes.Sample | None = None):
    if method in ("full", "blank image"):
        return nullcontext()
    if method == ORACLE:
        patches = processor.layout.num_crops * processor.layout.tokens_per_crop
        starts = oracle_starts(relevance(processor, sample), int(kept_count(keep, patches)))
        start = (lambda view, crop: starts) if starts else first_isolated  # nothing relevant: DivPrune
        return PreLLM(keep, Diverse(start), joint=True).apply(vlm)
    name, options = method_spec(method)
    return tokenomy.apply(vlm, name, keep=keep, **options)


def run(vlm, processor, methods: list[str], keeps: list[float], limit: int, seed: int, repeats: int,
        timing: int, progress: Callable[[int], Any] = lambda n: None,
        split: str = "test", oracle: bool = False) -> tuple[list[dict], list[dict]]:
    """Answer every sample with every row; then time the prefills (not the blank image's or the oracle's:
    theirs is the full model's and a method's). Returns (per-sample rows, timings)."""
    samples = [scenes.sample(split, seed * 1_000_000 + i) for i in range(limit)]
    configs = [("full", 1.0), ("blank image", 1.0)] + [(m, k) for m in methods for k in keeps]
    configs += [(ORACLE, k) for k in keeps] if oracle else []
    patches = processor.layout.num_crops * processor.layout.tokens_per_crop
    rows = []
    for index, s in enumerate(samples):
        for method, keep in configs:
            image = blank_like(s.image) if method == "blank image" else s.image
            inputs = processor(image, s.question)
            with _session(method, keep, vlm, processor, s) as session:
                text = answer(vlm, processor, inputs)
            visual = session.stats.tokens_kept if session is not None else patches
            rows.append({"sample": index, "qtype": s.qtype, "method": method, "keep": keep, "answer": s.answer,
                         "output": text, "correct": first_word(text) == s.answer, "visual_tokens": visual,
                         "text_tokens": int(inputs["input_ids"].shape[1]) - patches})
            progress(1)
    timings = []
    for _ in range(repeats):
        for method, keep in [c for c in configs if c[0] not in ("blank image", ORACLE)]:
            for s in samples[:timing]:
                inputs = processor(s.image, s.question)
                with _session(method, keep, vlm) as session, torch.no_grad():
                    tic = time.perf_counter()
                    vlm(**inputs)
                    seconds = time.perf_counter() - tic
                timings.append({"method": method, "keep": keep, "seconds": seconds,
                                "selection_seconds": session.stats.selection_seconds if session else 0.0})
                progress(1)
    return rows, timings


def summarize(vlm, processor, rows: list[dict], timings: list[dict]) -> list[dict]:
    full = {r["sample"]: r["correct"] for r in rows if r["method"] == "full"}
    full_accuracy = sum(full.values()) / len(full)
    patches = processor.layout.num_crops * processor.layout.tokens_per_crop

    def median_time(method, keep, key="seconds"):
        values = [t[key] for t in timings if t["method"] == method and t["keep"] == keep]
        return statistics.median(values) if values else None

    full_ms = median_time("full", 1.0)
    out = []
    for method, keep in dict.fromkeys((r["method"], r["keep"]) for r in rows):
        mine = [r for r in rows if r["method"] == method and r["keep"] == keep]
        accuracy = sum(r["correct"] for r in mine) / len(mine)
        visual = statistics.mean(r["visual_tokens"] for r in mine)
        text = statistics.mean(r["text_tokens"] for r in mine)
        seconds = median_time(method, keep)
        selection = median_time(method, keep, "selection_seconds")
        out.append({
            "method": method, "keep": keep, "accuracy": accuracy,
            "relative": accuracy / full_accuracy if full_accuracy else None,
            "visual_tokens": visual, "gflops": prefill_flops(vlm, round(text), round(visual), patches) / 1e9,
            "prefill_ms": None if seconds is None else seconds * 1e3,
            "speedup": None if seconds is None or not full_ms else full_ms / seconds,
            "overhead": None if seconds is None or method == "full" else selection / seconds,
            "by_type": {q: sum(r["correct"] for r in mine if r["qtype"] == q)
                        / max(1, sum(r["qtype"] == q for r in mine)) for q in scenes.QUESTION_TYPES},
        })
    return out


def plot(results: list[dict], path: Path, split: str = "test") -> Path:
    """Accuracy against kept fraction, one line per method; full and blank-image accuracy as guides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    guides = {r["method"]: r["accuracy"] for r in results if r["method"] in ("full", "blank image")}
    for method in dict.fromkeys(r["method"] for r in results if r["method"] not in guides):
        points = sorted((r["keep"], r["accuracy"]) for r in results if r["method"] == method)
        ax.plot(*zip(*points), marker="o", label=method)
    for name, style in (("full", "-"), ("blank image", ":")):
        if name in guides:
            ax.axhline(guides[name], color="black", linestyle=style, linewidth=1, label=f"{name} ({guides[name]:.2f})")
    ax.set_xlabel("fraction of visual tokens reaching the LLM")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reference VLM, synthetic VQA {split} split")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def render(payload: dict, markdown: bool = False) -> str:
    from tokenomy.bench.report import table

    return table(payload["results"], COLUMNS, markdown=markdown)
