"""`tokenomy bench ensemble`: single models against their ensembles, on the same samples in one run.

Tasks (``alice`` is packaged; the others are read in place from ../shared/data; or ``--data FILE.jsonl`` with
``prompt`` and ``answers``):
- ``alice``: LAMBADA's format on the packaged *Alice in Wonderland*: a paragraph's last word (punctuation around
  it dropped), the text before it (up to 600 characters, from a word boundary) as the prompt; scored as lambada.
- ``lambada``: LAMBADA's last word. Prompt: the passage up to its last space; correct when the first word
  generated (leading spaces skipped, ending at whitespace or punctuation) equals the target exactly.
- ``squad``: SQuAD 2.0 dev, answerable questions with contexts up to 1,200 characters. Prompt:
  ``{context}\\n\\nQuestion: {question}\\nAnswer:``; decoding stops at a newline; correct when a gold answer,
  normalised (lower case, no punctuation or articles), is contained in the normalised output.
- custom JSONL: the squad rule (a normalised accepted answer inside the normalised output).
Samples are a seeded shuffle, identical for every row. Rows: each model alone on its own tokens (plain
greedy decoding) and as an exact byte-level model, then every alignment x strategy, without and with
CoRE. Each row reports accuracy, accuracy relative to the better single model, the share of steps where
CoRE changed the decision, decoding throughput (bytes/s and model tokens run per byte; prompt
conditioning timed apart) and the largest probability share the byte-level pruning dropped.
"""

from __future__ import annotations

import json
import random
import re
import statistics
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenomy._validation import TokenomyError
from tokenomy.bench.tasks import haystack_paragraphs, read_records, shared_data_dir
from tokenomy.bench.html import Axis, Figure, key

TASKS = ("alice", "lambada", "squad")
CLOZE = ("alice", "lambada")  # tasks scored on the first generated word


@dataclass
class Item:
    prompt: str
    answers: list[str]
    task: str


def _need(relative: str) -> Path:
    root = shared_data_dir()
    if root is None or not (root / relative).is_file():
        raise TokenomyError(f"task data {relative} not found under ../shared/data; give --data FILE.jsonl "
                            "(one JSON object per line with prompt and answers)")
    return root / relative


def lambada(limit: int, seed: int) -> list[Item]:
    rows = [json.loads(line) for line in _need("lambada/lambada_test.jsonl").open()]
    random.Random(seed).shuffle(rows)
    items = []
    for row in rows[:limit]:
        head, word = row["text"].rsplit(" ", 1)
        items.append(Item(head, [word], "lambada"))
    return items


def alice(limit: int, seed: int, context_chars: int = 600) -> list[Item]:
    paragraphs = []
    for text in haystack_paragraphs():
        head, _, last = text.rpartition(" ")
        word = last.strip(string.punctuation)
        if len(head) > 200 and word.isalpha():
            prompt = head[-context_chars:]
            paragraphs.append(Item(prompt[prompt.index(" ") + 1:] if len(head) > context_chars else prompt, [word],
                                   "alice"))
    random.Random(seed).shuffle(paragraphs)
    return paragraphs[:limit]


def squad(limit: int, seed: int, max_context: int = 1200) -> list[Item]:
    data = json.loads(_need("squad/dev-v2.0.json").read_text())
    items = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            if len(paragraph["context"]) > max_context:
                continue
            for qa in paragraph["qas"]:
                answers = sorted({a["text"] for a in qa["answers"]})
                if answers and not qa.get("is_impossible"):
                    prompt = f"{paragraph['context']}\n\nQuestion: {qa['question'].strip()}\nAnswer:"
                    items.append(Item(prompt, answers, "squad"))
    random.Random(seed).shuffle(items)
    return items[:limit]


def read_jsonl(path: str, limit: int, seed: int) -> list[Item]:
    items = [Item(row["prompt"], row["answers"], "data") for _, row in read_records(path, ("prompt", "answers"))]
    random.Random(seed).shuffle(items)
    return items[:limit]


_WORD = re.compile(rb"\s*([^\s.,;:!?\"'()\[\]]+)[\s.,;:!?\"'()\[\]]")


def first_word_done(out: bytes) -> bool:
    return _WORD.match(out) is not None


def first_word(text: str) -> str:
    match = _WORD.match(text.encode("utf-8", errors="replace") + b" ")
    return match.group(1).decode("utf-8", errors="replace") if match else ""


def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(w for w in text.split() if w not in {"a", "an", "the"})


def correct(item: Item, output: str) -> bool:
    if item.task in CLOZE:
        return first_word(output) == item.answers[0]
    said = normalise(output)
    return any(normalise(a) and normalise(a) in said for a in item.answers)


def decoding(task: str) -> dict:
    """Per task: byte budget, stop strings and an early-stop rule (none of them look at the answer)."""
    if task in CLOZE:
        return {"max_new_bytes": 32, "stop": [b"\n"], "until": first_word_done}
    return {"max_new_bytes": 48, "stop": [b"\n"], "until": None}


def summarize(rows: list[dict], names: list[str]) -> list[dict]:
    """Aggregate per (task, system): accuracy, relative to the better single model, CoRE changes, speed."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == task]
        systems = list(dict.fromkeys(r["system"] for r in mine))
        accuracy = {s: statistics.fmean(r["correct"] for r in mine if r["system"] == s) for s in systems}
        best_single = max(accuracy.get(f"{n} (tokens)", 0.0) for n in names)
        for s in systems:
            got = [r for r in mine if r["system"] == s]
            steps = sum(r["steps"] for r in got)
            nbytes = sum(r["bytes"] for r in got)
            out.append({
                "task": task, "system": s, "samples": len(got), "accuracy": accuracy[s],
                "vs_best_single": accuracy[s] / best_single if best_single else None,
                "core_changed": sum(r["core_changed"] for r in got) / steps if "CoRE" in s and steps else None,
                "bytes_per_second": nbytes / sum(r["seconds"] for r in got) if nbytes else None,
                "tokens_per_byte": sum(r["decode_tokens"] for r in got) / nbytes if nbytes else None,
                "pruned_mass": max(r["pruned_mass"] for r in got),
            })
    return out


COLUMNS = [("task", "task", ""), ("system", "system", ""), ("samples", "n", "d"), ("accuracy", "accuracy", ".3f"),
           ("vs_best_single", "vs best single", ".3f"), ("core_changed", "CoRE changed", ".3f"),
           ("bytes_per_second", "bytes/s", ".1f"), ("tokens_per_byte", "model tok/byte", ".2f"),
           ("pruned_mass", "pruned", ".1e")]


def render(payload: dict, markdown: bool = False) -> str:
    from tokenomy.bench.report import table

    return table(payload["results"], COLUMNS, markdown=markdown)


def systems(members: list, names: list[str], *, alignments: list[str], strategies: list[str],
            weights: list[float] | None, core: list[bool], byte_options: dict | None = None) -> list[tuple]:
    """Every system a sample is decoded with, as (label, alignment, combiner): each model alone on its tokens
    and as an exact byte-level model, then every alignment x strategy, without and with CoRE."""
    from tokenomy.ensemble import Combiner, Core, Strategy
    from tokenomy.ensemble.align import ByteAlignment, TokenAlignment, UnionAlignment

    byte_options = byte_options or {}
    out: list[tuple[str, object, Combiner]] = []
    plain = Combiner(Strategy())
    for name, member in zip(names, members):
        out.append((f"{name} (tokens)", TokenAlignment(member), plain))
        out.append((f"{name} (bytes)", ByteAlignment([member], **byte_options), plain))
    for alignment in alignments:
        aligned = ByteAlignment(members, **byte_options) if alignment == "bytes" else UnionAlignment(members)
        for strategy in strategies:
            chosen = Strategy(strategy, tuple(weights) if weights and strategy == "weighted" else None)
            for with_core in core:
                label = f"ensemble {alignment} {strategy}" + (" + CoRE" if with_core else "")
                out.append((label, aligned, Combiner(chosen, Core() if with_core else None)))
    return out


def run_item(chosen: list[tuple], number: int, item: Item, progress: Callable[[int], None] | None = None
             ) -> list[dict]:
    """Decode sample ``number`` with every system of ``chosen`` (`systems`); one row per system."""
    from tokenomy.ensemble import decode

    options = decoding(item.task)
    rows = []
    for label, alignment, combiner in chosen:
        out = decode(alignment, combiner, item.prompt.encode("utf-8"), **options)
        rows.append({
            "task": item.task, "sample": number, "system": label, "output": out.text,
            "answers": item.answers, "correct": correct(item, out.text), "steps": out.steps,
            "core_changed": out.core_changed, "bytes": len(out.data), "seconds": out.seconds,
            "prompt_seconds": out.prompt_seconds, "decode_tokens": out.forwarded_tokens,
            "pruned_mass": out.pruned_mass, "respelled": out.respelled, "stopped": out.stopped,
        })
        if progress is not None:
            progress(1)
    return rows


_SYSTEMS: dict[str, list[tuple]] = {}


def run_cell(payload: tuple, progress: Callable[[int], None] | None = None) -> list[dict]:
    """One sample of a sweep (a `tokenomy.bench.sweep` cell, run here or in a Ray worker): ``(model names,
    options for `systems`, index, item)`` -> its rows. The models load once per process, when first needed."""
    from tokenomy.ensemble.generate import member

    names, options, number, item = payload
    key = repr((names, options))
    if key not in _SYSTEMS:
        _SYSTEMS[key] = systems([member(n) for n in names], names, **options)
    return run_item(_SYSTEMS[key], number, item, progress)


FIGURES = [Figure("accuracy vs decoding speed (every task)", Axis(key("bytes_per_second"), "bytes/s", "high", log=True),
                  Axis(key("accuracy"), "accuracy", "high"), series=lambda r: r["system"])]
