"""`tokenomy bench kv-decode`: what a compressed KV cache saves while decoding — bytes resident and tokens/s.

For each context length, a stretch of the packaged *Alice* (a random start per ``seed``) is prefilled once per
row — the uncompressed cache ("full") and every method at ``keep`` — and each cache is then decoded greedily
for ``steps`` tokens, ``repeats`` times, rows alternating, each time from a copy of the cache as the prefill
left it. One more row, "full, in place", decodes the uncompressed cache's entries from tokenomy's rectangular
layer, which appends in place where HF's copies the whole cache at every step: between it and "full" lies what
not copying buys, between it and a method what holding fewer entries buys. Columns: bytes of keys + values
resident (summed over layers, what the layers really store: padding included where a layout pads) and their
share of the full cache's, decode ms per token and tokens/s (medians over every step of every repeat), the
speed-up over the full cache, the prefill with its compression, and how many of the greedy tokens equal the
full cache's (a quality hint, not a benchmark).
"""

from __future__ import annotations

import random
import statistics
import time
from contextlib import nullcontext
from typing import Any, Callable

import torch

from tokenomy.bench.html import Axis, Figure, key
from tokenomy.bench.tasks import haystack_paragraphs
from tokenomy.catalog import create_spec
from tokenomy.adapters.caches import cache_bytes, copy_cache
from tokenomy.sites.kv_layers import held_in_place
from tokenomy.sites.kv_session import check_replay_fits

IN_PLACE = "full, in place"

COLUMNS = [
    ("length", "context", "d"),
    ("method", "method", ""),
    ("keep", "keep", ".2f"),
    ("resident_mb", "resident MB", ".1f"),
    ("resident_share", "resident share", ".3f"),
    ("decode_ms", "ms / token", ".1f"),
    ("tokens_per_s", "tokens/s", ".1f"),
    ("speedup", "decode speed-up", ".2f"),
    ("prefill_s", "prefill + compress s", ".1f"),
    ("same_tokens", "tokens as full", ".2f"),
]


def context_ids(tokenizer, length: int, seed: int) -> torch.Tensor:
    """``(1, length)`` token ids of *Alice*, from a paragraph chosen by ``seed`` (wrapping round the book)."""
    paragraphs = haystack_paragraphs()
    ids: list[int] = []
    index = random.Random(seed).randrange(len(paragraphs))
    while len(ids) < length:
        ids += tokenizer.encode(paragraphs[index % len(paragraphs)] + "\n", add_special_tokens=False)
        index += 1
    return torch.tensor([ids[:length]])


def _decode(model, cache, first: torch.Tensor, steps: int) -> tuple[list[float], list[int]]:
    """Greedy decoding of ``steps`` tokens from ``cache``: each step's seconds and the tokens."""
    token, seconds, tokens = first, [], []
    for _ in range(steps):
        start = time.perf_counter()
        logits = model(token, past_key_values=cache, use_cache=True).logits
        token = logits[:, -1:].argmax(-1)
        seconds.append(time.perf_counter() - start)
        tokens.append(int(token))
    return seconds, tokens


def run(model, tokenizer, lengths: list[int], specs: list[str], keep: float, steps: int, repeats: int, seed: int,
        progress: Callable[[int], Any] = lambda n: None) -> list[dict]:
    """One record per (length, row, repeat): see the module docstring."""
    methods = {spec: create_spec(spec, keep=keep) for spec in specs}  # bad specs fail before any prefill
    for method in methods.values():
        if method.replays:  # a replay past the model's window: refused before any prefill too
            for length in lengths:
                check_replay_fits(model, length, method.replay_chunk)
    records = []
    for length in lengths:
        ids = context_ids(tokenizer, length, seed)
        prepared = {}
        for label, method in [("full", None), *methods.items()]:
            session = nullcontext() if method is None else method.apply(model)
            with torch.inference_mode(), session:
                start = time.perf_counter()
                out = model(ids, use_cache=True)
                prepared[label] = (method, out.past_key_values, out.logits[:, -1:].argmax(-1),
                                   time.perf_counter() - start)
            progress(1)
        full = prepared.pop("full")
        _, cache, first, prefill = full  # any KV session decodes the in-place row; at keep 1 none evicts
        in_place = (create_spec("streamingllm", keep=1.0), held_in_place(cache), first, prefill)
        prepared = {"full": full, IN_PLACE: in_place, **prepared}
        for repeat in range(repeats):
            for label, (method, cache, first, prefill) in prepared.items():
                session = nullcontext() if method is None else method.apply(model)
                with torch.inference_mode(), session:
                    grown = copy_cache(cache)
                    seconds, tokens = _decode(model, grown, first, steps)
                records.append({"length": length, "method": label, "keep": keep if label in methods else 1.0,
                                "repeat": repeat, "resident_bytes": cache_bytes(cache), "prefill": prefill,
                                "step_seconds": seconds, "tokens": tokens})
                progress(1)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """Medians per (length, row), against the full cache of the same length."""
    out = []
    for length, method in dict.fromkeys((r["length"], r["method"]) for r in records):
        mine = [r for r in records if (r["length"], r["method"]) == (length, method)]
        full = [r for r in records if (r["length"], r["method"]) == (length, "full")]
        step = statistics.median(s for r in mine for s in r["step_seconds"])
        full_step = statistics.median(s for r in full for s in r["step_seconds"])
        reference, tokens = full[0]["tokens"], mine[0]["tokens"]
        out.append({"length": length, "method": method, "keep": mine[0]["keep"],
                    "resident_mb": mine[0]["resident_bytes"] / 1e6,
                    "resident_share": mine[0]["resident_bytes"] / full[0]["resident_bytes"],
                    "decode_ms": step * 1e3, "tokens_per_s": 1 / step, "speedup": full_step / step,
                    "prefill_s": mine[0]["prefill"],
                    "same_tokens": sum(a == b for a, b in zip(tokens, reference)) / len(reference)})
    return out


def render(payload: dict, markdown: bool = False) -> str:
    from tokenomy.bench.report import table

    return table(payload["results"], COLUMNS, markdown=markdown)


FIGURES = [Figure("decode speed-up vs cache bytes resident", Axis(key("resident_share"), "bytes resident (share)", "low"),
                  Axis(key("speedup"), "decode speed-up over the full cache", "high"),
                  series=lambda r: f"{r['method']} · {r['length']} tokens")]
