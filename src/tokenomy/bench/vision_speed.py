"""`tokenomy bench vision-speed`: what visual-token methods buy in prefill time on real VLM shapes.

No pretrained VLM can be had offline, and speed does not depend on the weights: the benchmark builds
random-weight models with the shapes of real ones and times one prefill of a prompt whose image gives
``visual`` placeholders, for the full model and every method, rows alternating, median over ``repeats``:

* ``smolvlm-256m``: SmolVLM-256M-Instruct's shapes — SmolLM2-135M (30 layers, width 576) and a SigLIP-B/16
  tower at 512 px whose pixel shuffle (scale 4) gives 64 tokens per tile; ``visual`` is rounded to whole
  tiles (576 = 2x4 tiles + the whole image; 1088 = 4x4 + 1).
* ``qwen2-vl-2b``: Qwen2-VL-2B-Instruct's shapes — a 1.5B Qwen2 language model (28 layers, width 1536,
  12 query / 2 KV heads) with M-RoPE, and a 32-layer, width-1280 ViT whose 2x2 merger gives one token per
  4 patches of 14 px; ``visual`` is rounded to an image grid.

Depth can be cut (``llm_layers``, ``vit_layers``) where the 2-core CPU forces it; the table says what ran.
Columns: the language model's prefill (the decoder's forward, the site's selection included — what the
methods shorten), the whole prefill as ``generate`` runs it (vision tower included, which no method here
shortens; logits of the last position only), their speedups over the full model, and the selection overhead
as a share of the language model's prefill.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch

from tokenomy._validation import TokenomyError, check_choice
from tokenomy.adapters.lm import decoder
from tokenomy.catalog import create_spec
from tokenomy.bench.html import Axis, Figure, key

SHAPES = ("smolvlm-256m", "qwen2-vl-2b")
COLUMNS = [
    ("shape", "shape", ""),
    ("layers", "LM / ViT layers", ""),
    ("visual", "visual tokens", "d"),
    ("method", "method", ""),
    ("keep", "keep", ".2f"),
    ("llm_ms", "LM prefill ms", ".1f"),
    ("llm_speedup", "LM speedup", ".2f"),
    ("total_ms", "prefill ms", ".1f"),
    ("total_speedup", "prefill speedup", ".2f"),
    ("overhead", "selection share", ".3f"),
]
IMAGE, START, GLOBAL, ROW = 49190, 49189, 49152, 49153  # SmolVLM's <image>, <fake_token_around_image>, ...


def smolvlm(visual: int, llm_layers: int | None, vit_layers: int | None) -> tuple[Any, dict]:
    """A SmolVLM-256M-shaped model and a prompt whose image is split into tiles giving ``visual`` tokens."""
    from transformers import LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration

    text = LlamaConfig(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=llm_layers or 30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, tie_word_embeddings=True)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=vit_layers or 12, num_attention_heads=12,
                  image_size=512, patch_size=16)
    config = SmolVLMConfig(text_config=text.to_dict(), vision_config=vision, scale_factor=4, image_token_id=IMAGE)
    model = SmolVLMForConditionalGeneration(config).eval()
    tiles = max(1, round(visual / 64))
    rows = max(1, int(math.sqrt(tiles - 1))) if tiles > 1 else 0
    cols = (tiles - 1) // rows if rows else 0
    ids: list[int] = []
    for i in range(rows * cols):
        ids += [START, ROW + i] + [IMAGE] * 64
    ids += [START, GLOBAL] + [IMAGE] * 64 + [START]
    tiles = rows * cols + 1
    prompt = [1] + list(range(100, 110)) + ids + list(range(200, 220))
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
              "pixel_values": torch.randn(1, tiles, 3, 512, 512, generator=generator)}
    return model, inputs


def qwen2_vl(visual: int, llm_layers: int | None, vit_layers: int | None) -> tuple[Any, dict]:
    """A Qwen2-VL-2B-shaped model and a prompt with one image of about ``visual`` tokens."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=llm_layers or 28,
                num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]})
    vision = dict(depth=vit_layers or 32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=1536, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=151655, video_token_id=151656,
                           vision_start_token_id=151652, vision_end_token_id=151653)
    model = Qwen2VLForConditionalGeneration(config).eval()
    side = 2 * max(1, round(math.sqrt(visual)))  # patches per side (even): (side / 2) ** 2 tokens
    prompt = [151644] + list(range(100, 110)) + [151652] + [151655] * (side * side // 4) + [151653] + \
        list(range(200, 220))
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long),
              "pixel_values": torch.randn(side * side, 3 * 2 * 14 * 14, generator=generator),
              "image_grid_thw": torch.tensor([[1, side, side]])}
    return model, inputs


BUILDERS: dict[str, Callable] = {"smolvlm-256m": smolvlm, "qwen2-vl-2b": qwen2_vl}


def _time(model, inputs: dict, method) -> tuple[float, float, float]:
    """Seconds of one whole forward, of its language-model prefill, and of the site's selection."""
    stack = decoder(model)
    marks: dict[str, float] = {}

    def mark(name):
        def hook(*args):
            marks[name] = time.perf_counter()
        return hook

    session = method.apply(model) if method is not None else None
    with torch.no_grad():
        if session is not None:
            session.__enter__()
        handles = [stack.register_forward_pre_hook(mark("start"), with_kwargs=True, prepend=True),
                   stack.register_forward_hook(mark("stop"), with_kwargs=True)]
        try:
            tic = time.perf_counter()
            model(**inputs, logits_to_keep=1)  # a generation prefill: the next token's logits only
            total = time.perf_counter() - tic
        finally:
            for handle in handles:
                handle.remove()
            if session is not None:
                session.__exit__(None, None, None)
    selection = session.stats.selection_seconds if session is not None else 0.0
    return total, marks["stop"] - marks["start"], selection


def run(shapes: list[str], visual: list[int], specs: list[str], keep: float, repeats: int,
        llm_layers: int | None, vit_layers: int | None, progress: Callable[[int], Any] = lambda n: None
        ) -> list[dict]:
    """Time every row on every shape and visual-token count (see the module docstring); per-repeat records."""
    for shape in shapes:
        check_choice("shape", shape, SHAPES)
    methods = {spec: create_spec(spec, keep=keep) for spec in specs}  # bad specs fail before any model is built
    records = []
    for shape in shapes:
        for count in visual:
            torch.manual_seed(0)
            model, inputs = BUILDERS[shape](count, llm_layers, vit_layers)
            placeholders = int((inputs["input_ids"] == (IMAGE if shape == "smolvlm-256m" else 151655)).sum())
            layers = f"{len(decoder(model).layers)} / {_vit_depth(model)}"
            rows = [("full", None), *methods.items()]
            _time(model, inputs, None)  # warm-up: allocator and kernels
            for repeat in range(repeats):
                for label, method in rows:
                    total, llm, selection = _time(model, inputs, method)
                    records.append({"shape": shape, "layers": layers, "visual": placeholders, "method": label,
                                    "keep": 1.0 if method is None else keep, "repeat": repeat, "total": total,
                                    "llm": llm, "selection": selection})
                    progress(1)
            del model
    return records


def _vit_depth(model) -> int:
    vision = model.config.vision_config
    return getattr(vision, "num_hidden_layers", None) or vision.depth


def summarize(records: list[dict]) -> list[dict]:
    out = []
    for shape, layers, visual, method, keep in dict.fromkeys(
            (r["shape"], r["layers"], r["visual"], r["method"], r["keep"]) for r in records):
        mine = [r for r in records if (r["shape"], r["visual"], r["method"]) == (shape, visual, method)]
        full = [r for r in records if (r["shape"], r["visual"], r["method"]) == (shape, visual, "full")]
        llm, total = statistics.median(r["llm"] for r in mine), statistics.median(r["total"] for r in mine)
        out.append({"shape": shape, "layers": layers, "visual": visual, "method": method, "keep": keep,
                    "llm_ms": llm * 1e3, "total_ms": total * 1e3,
                    "llm_speedup": statistics.median(r["llm"] for r in full) / llm,
                    "total_speedup": statistics.median(r["total"] for r in full) / total,
                    "overhead": None if method == "full" else statistics.median(r["selection"] for r in mine) / llm})
    return out


def render(payload: dict, markdown: bool = False) -> str:
    from tokenomy.bench.report import table

    return table(payload["results"], COLUMNS, markdown=markdown)


def check_visual(visual: list[int]) -> list[int]:
    if not visual or any(isinstance(v, bool) or not isinstance(v, int) or v < 64 for v in visual):
        raise TokenomyError(f"--visual must be integers >= 64 (visual tokens of the prompt's image), got {visual}")
    return visual


FIGURES = [Figure("LLM speed-up vs visual tokens kept", Axis(key("keep"), "visual tokens kept (share)", "low"),
                  Axis(key("llm_speedup"), "language model prefill speed-up", "high"),
                  series=lambda r: f"{r['method']} · {r['shape']} · {r['visual']} tokens")]
