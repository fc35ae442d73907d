"""`tokenomy bench kv`: KV-cache methods side by side on long-context tasks, optionally against kvpress.

For every sample and setting the uncompressed prefill runs once, recording what each layer's scorers
need; every method then compresses its own copy of that cache (exactly what its hooks would do, which
a test checks) and decodes greedily. Methods whose scores are summed inside the prefill's attention
(H2O, VATP on SDPA) run their own prefill instead, and their overhead is its extra time over a plain
prefill timed just before it; KVzip, which replays the context through the model, also runs its own
prefill, and its overhead is the replay + scoring time it measures. Two settings:

* ``aware``: the question is inside the compressed prompt (SnapKV's original setting);
* ``agnostic``: the context is compressed before the question is known; the question is then appended
  to the compressed cache (kvpress's pipeline setting).

Accuracy: a sample is correct when one of its accepted answer strings appears in the greedy output.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from tokenomy import catalog
from tokenomy.registry import method_spec
from tokenomy._validation import check_choice, check_fraction
from tokenomy.bench.peers import (QUANTO_BITS, entries, import_kvpress, import_quanto, kvpress_cleanup,
                                  kvpress_matches, kvpress_prefill, quantized_cache_prefill)
from tokenomy.bench.report import table
from tokenomy.bench.prompts import Prompt, build_prompt, check_fits, greedy, stop_ids
from tokenomy.bench.tasks import Sample
from tokenomy.adapters.caches import cache_bytes, copy_cache
from tokenomy.sites.kv_cache import SITE
from tokenomy.sites.kv_recorder import PrefillRecorder
from tokenomy.sites.kv_session import KVStats, check_replay_fits
from tokenomy.bench.html import Axis, Figure, key

SETTINGS = ("aware", "agnostic")


@dataclass
class Row:
    """One method at one budget on one sample."""

    sample: int
    setting: str
    label: str  # "full", a method name, "kvpress:<method>" or "quanto:bits=<n>"
    keep: float
    prompt_tokens: int
    compressed_tokens: int
    correct: bool | None = None
    answer: str = ""
    nll: float | None = None  # perplexity task: mean NLL of the continuation
    kl: float | None = None  # perplexity task: mean KL(full || this)
    kept_fraction: float = 1.0
    kv_bytes: int = 0  # cache size right after compression
    peak_kv_bytes: int = 0  # largest cache size while decoding (below the end's with eviction while decoding)
    peak_memory_bytes: int | None = None  # accelerator peak during the row (None on CPU)
    prefill_seconds: float = 0.0
    scoring_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_tokens: int = 0
    reused_selections: float | None = None  # methods that select per step: share of layer selections reused
    error: str | None = None  # a peer that crashed on this sample (reported, not hidden)
    meta: dict = field(default_factory=dict)


@dataclass
class KVBenchConfig:
    methods: list[str]
    keeps: list[float]
    settings: list[str]
    max_new_tokens: int = 16
    compare: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.keeps = [check_fraction("keep", k) for k in self.keeps]
        for spec in self.methods:  # "name" or "name:option=value"; bad options fail here, before any work
            catalog.get(method_spec(spec)[0], SITE)
            catalog.create_spec(spec, keep=self.keeps[0])
        for s in self.settings:
            check_choice("setting", s, SETTINGS)
        for c in self.compare:
            check_choice("peer", c, PEERS)
        if "kvpress" in self.compare:  # a missing extra fails here, before any model loads
            import_kvpress()
        if "quanto" in self.compare:
            import_quanto()


PEERS = ["kvpress", "quanto"]  # libraries `--compare` runs side by side (`tokenomy.bench.peers`)
_BENCHES: dict[str, KVBench] = {}


def run_cell(payload: tuple) -> list[dict]:
    """One sample of a sweep (a `tokenomy.bench.sweep` cell, run here or in a Ray worker): ``(model name, config,
    sample index, sample)`` -> every row of the sample as a dict. The model loads once per process."""
    import dataclasses

    from tokenomy import load

    model_name, config, index, sample = payload
    key = f"{model_name}|{config!r}"
    if key not in _BENCHES:
        _BENCHES[key] = KVBench(*load(model_name), config)
    return [dataclasses.asdict(row) for row in _BENCHES[key].run_sample(index, sample)]


class KVBench:
    """Runs every configured method on samples; one `run_sample` call per sample."""

    def __init__(self, model, tokenizer, config: KVBenchConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.stops = stop_ids(model, tokenizer)
        self.kvpress = import_kvpress() if "kvpress" in config.compare else None
        self.peer_methods = kvpress_matches(config.methods) if self.kvpress else []
        self.quanto_bits = QUANTO_BITS if "quanto" in config.compare else ()

    @torch.no_grad()
    def _prefill(self, ids: torch.Tensor):
        recorder = PrefillRecorder(self.model)
        cache = DynamicCache()
        with recorder.record():
            logits, seconds = self._timed_prefill(ids, cache)
        return cache, logits, recorder.observations, seconds

    @torch.no_grad()
    def _timed_prefill(self, ids: torch.Tensor, cache) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        logits = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        return logits, time.perf_counter() - start

    @torch.no_grad()
    def _finish(self, row: Row, cache, logits, prompt: Prompt, setting: str, sample: Sample, position=None,
                chunk: int = 0) -> None:
        """Append the question when it came after compression, then decode (or score a continuation, fed
        ``chunk`` tokens per forward when the method evicts while decoding)."""
        start = time.perf_counter()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        kwargs = {} if position is None else {"position_ids": position + torch.arange(prompt.question.shape[1])[None]}
        if setting == "agnostic" and prompt.question.shape[1]:
            logits = self.model(input_ids=prompt.question, past_key_values=cache, use_cache=True, **kwargs).logits
            if position is not None:
                position += prompt.question.shape[1]
        if sample.continuation is not None:
            self._score_continuation(row, cache, logits, sample, position, chunk)
        else:
            tokens = greedy(self.model, cache, logits[:, -1:], self.config.max_new_tokens, self.stops, position)
            row.answer = self.tokenizer.decode(tokens, skip_special_tokens=True)
            row.correct = sample.judge(row.answer)
            row.decode_tokens = len(tokens)
        row.decode_seconds = time.perf_counter() - start
        row.peak_kv_bytes = cache_bytes(cache, peak=True)
        if torch.cuda.is_available():
            row.peak_memory_bytes = torch.cuda.max_memory_allocated()

    def _score_continuation(self, row: Row, cache, logits, sample: Sample, position, chunk: int = 0) -> None:
        """Teacher-force the continuation: its mean NLL, and the KL from the full model's distributions
        (the full row runs first and leaves them in ``self._reference``)."""
        ids = self.tokenizer.encode(sample.continuation, add_special_tokens=False, return_tensors="pt")
        step = chunk or ids.shape[1]
        parts = []
        for start in range(0, ids.shape[1], step):
            piece = ids[:, start : start + step]
            kwargs = {} if position is None else {"position_ids": position + start + torch.arange(piece.shape[1])[None]}
            parts.append(self.model(input_ids=piece, past_key_values=cache, use_cache=True, **kwargs).logits)
        out = torch.cat(parts, dim=1)[0, :-1]
        logp = F.log_softmax(out.float(), dim=-1)
        row.nll = float(-logp.gather(-1, ids[0, 1:, None]).mean())
        if row.label == "full":
            self._reference = logp
        row.kl = float((self._reference.exp() * (self._reference - logp)).sum(-1).mean())
        row.decode_tokens = ids.shape[1]

    def cells(self, sample: Sample) -> int:
        """How many rows `run_sample` makes of ``sample``: per setting, the full cache, transformers'
        quantized caches, and every method x keep (twice where kvpress runs the same method)."""
        settings = 1 if sample.continuation is not None else len(self.config.settings)
        runs = sum(len(self.config.keeps) * (2 if name in self.peer_methods else 1) for name in self.config.methods)
        return settings * (1 + len(self.quanto_bits) + runs)

    def check(self, samples: list[Sample]) -> None:
        """Refuse, before any prefill, a sample too long for the model, or for a method's replay of it."""
        methods = [catalog.create_spec(name, keep=self.config.keeps[0]) for name in self.config.methods]
        chunks = [method.replay_chunk for method in methods if method.replays]
        for index, sample in enumerate(samples):
            prompt = self._fitting_prompt(index, sample)
            settings = ["agnostic"] if sample.continuation is not None else self.config.settings
            longest = max((prompt.full if s == "aware" else prompt.context).shape[1] for s in settings)
            for chunk in chunks:
                check_replay_fits(self.model, longest, chunk, f"sample {index}'s")

    def _fitting_prompt(self, index: int, sample: Sample) -> Prompt:
        """``sample``'s prompt, refused (never truncated) when it and its reply exceed the model's window."""
        prompt = build_prompt(self.tokenizer, sample)
        extra = self.config.max_new_tokens if sample.continuation is None else len(
            self.tokenizer.encode(sample.continuation, add_special_tokens=False))
        check_fits(self.model, prompt, extra, f"sample {index}")
        return prompt

    def run_sample(self, index: int, sample: Sample, progress: Callable[[Row], Any] = lambda row: None
                   ) -> list[Row]:
        """Every row of one sample; ``progress(row)`` hears of each as it is done."""
        prompt = self._fitting_prompt(index, sample)
        settings = ["agnostic"] if sample.continuation is not None else self.config.settings
        rows = []
        for setting in settings:
            ids = prompt.full if setting == "aware" else prompt.context
            cache, logits, observations, prefill_s = self._prefill(ids)
            base = dict(sample=index, setting=setting, prompt_tokens=prompt.full.shape[1],
                        compressed_tokens=ids.shape[1])

            full = Row(label="full", keep=1.0, kv_bytes=cache_bytes(cache), prefill_seconds=prefill_s, **base)
            self._finish(full, copy_cache(cache), logits, prompt, setting, sample)
            rows.append(full)
            progress(full)
            for bits in self.quanto_bits:
                rows.append(self._run_peer(f"quanto:bits={bits}", 1.0, base, prefill_s, prompt, sample,
                                           lambda: quantized_cache_prefill(self.model, bits, ids)))
                progress(rows[-1])
            for name in self.config.methods:
                for keep in self.config.keeps:
                    rows.append(self._run_ours(name, keep, base, ids, cache, logits, observations, prefill_s, prompt,
                                               sample))
                    progress(rows[-1])
                    if name in self.peer_methods:
                        rows.append(self._run_kvpress(name, keep, base, ids, prefill_s, prompt, sample))
                        progress(rows[-1])
        for row in rows:
            row.meta.update(sample.meta)
        return rows

    @torch.no_grad()
    def _run_ours(self, name, keep, base, ids, cache, logits, observations, prefill_s, prompt, sample) -> Row:
        method = catalog.create_spec(name, keep=keep)
        if getattr(method, "sums_in_prefill", False):  # timed next to its own prefill: machine speed drifts
            prefill_s = self._timed_prefill(ids, DynamicCache())[1]
        with method.apply(self.model) as session:
            row = Row(label=name, keep=keep, **base)
            if session.sums_in_prefill or method.replays:  # scores summed inside a real prefill, or from a
                mine = DynamicCache()  # replay after it: time a real one
                logits, row.prefill_seconds = self._timed_prefill(ids, mine)
                summed = max(0.0, row.prefill_seconds - prefill_s)  # the extra time of the summing prefill
                row.scoring_seconds = session.stats.scoring_seconds if method.replays else summed  # replay: timed
            else:
                mine = copy_cache(cache)
                session.compress(mine, observations)
                row.scoring_seconds = session.stats.scoring_seconds
                row.prefill_seconds = prefill_s + row.scoring_seconds
            stats: KVStats = session.stats
            row.kept_fraction = stats.entries_kept / stats.entries_seen if stats.entries_seen else 1.0
            row.kv_bytes = stats.bytes_kept if stats.layers_compressed else cache_bytes(mine)
            self._finish(row, mine, logits, prompt, base["setting"], sample, chunk=method.evict_every)
            if stats.selections:
                row.reused_selections = stats.selections_reused / stats.selections
        return row

    def _run_kvpress(self, name, keep, base, ids, plain_prefill_s, prompt, sample) -> Row:
        try:
            return self._run_peer(f"kvpress:{name}", keep, base, plain_prefill_s, prompt, sample,
                                  lambda: kvpress_prefill(self.kvpress, self.model, name, keep, ids))
        finally:
            kvpress_cleanup(self.model)

    def _run_peer(self, label, keep, base, plain_prefill_s, prompt, sample, prefill: Callable[[], Any]) -> Row:
        """A peer library's row: ``prefill()`` gives its cache (a `PeerRun`), tokenomy's loop decodes."""
        row = Row(label=label, keep=keep, **base)
        try:
            run = prefill()
            row.prefill_seconds = run.prefill_seconds
            row.scoring_seconds = max(0.0, run.prefill_seconds - plain_prefill_s)
            row.kept_fraction = run.kept_entries / entries(self.model, base["compressed_tokens"])
            row.kv_bytes = run.bytes_kept
            self._finish(row, run.cache, run.logits, prompt, base["setting"], sample,
                         position=base["compressed_tokens"])
        except Exception as err:  # a peer's failure is a result to report, not a reason to stop
            row.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        return row


def aggregate(rows: list[Row]) -> list[dict]:
    """Per (setting, method, keep): quality relative to the full model on the same samples, budgets,
    medians of timings."""
    full = {(r.sample, r.setting): r for r in rows if r.label == "full"}
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.setting, r.label, r.keep), []).append(r)
    out = []
    for (setting, label, keep), rows_ in groups.items():
        group = [r for r in rows_ if r.error is None]
        entry = {"setting": setting, "method": label, "keep": keep, "samples": len(group),
                 "errors": len(rows_) - len(group)}
        if not group:
            out.append(entry | {"error": rows_[0].error})
            continue
        refs = [full[(r.sample, r.setting)] for r in group]
        entry |= {
            "kept_fraction": statistics.fmean(r.kept_fraction for r in group),
            "kv_bytes_median": statistics.median(r.kv_bytes for r in group),
            "bytes_fraction": statistics.fmean(r.kv_bytes / ref.kv_bytes for r, ref in zip(group, refs)),
            "peak_kv_bytes_median": statistics.median(r.peak_kv_bytes for r in group),
            "peak_kv_mib_median": statistics.median(r.peak_kv_bytes for r in group) / 2**20,
            "prefill_seconds_median": statistics.median(r.prefill_seconds for r in group),
            "scoring_seconds_median": statistics.median(r.scoring_seconds for r in group),
            "scoring_overhead_median": statistics.median(
                r.scoring_seconds / ref.prefill_seconds for r, ref in zip(group, refs)
            ),
            "decode_tokens_per_second_median": statistics.median(
                r.decode_tokens / r.decode_seconds for r in group if r.decode_seconds > 0
            ),
        }
        reused = [r.reused_selections for r in group if r.reused_selections is not None]
        if reused:
            entry["reused_selections"] = statistics.fmean(reused)
        if group[0].correct is not None:
            accuracy = statistics.fmean(r.correct for r in group)
            reference = statistics.fmean(ref.correct for ref in refs)
            entry.update(accuracy=accuracy, full_accuracy=reference,
                         relative_accuracy=accuracy / reference if reference else None)
        else:
            nll = statistics.fmean(r.nll for r in group)
            ref_nll = statistics.fmean(ref.nll for ref in refs)
            entry.update(perplexity=math.exp(nll), full_perplexity=math.exp(ref_nll),
                         perplexity_ratio=math.exp(nll - ref_nll), kl=statistics.fmean(r.kl for r in group))
        out.append(entry)
    order = {s: i for i, s in enumerate(SETTINGS)}
    return sorted(out, key=lambda e: (order[e["setting"]], -e["keep"], e["method"] != "full", e["method"]))


def by_length(rows: list[Row]) -> dict[int, list[dict]]:
    """The aggregate split by the samples' context length (for per-length claims, e.g. overhead at 2k)."""
    lengths = sorted({r.meta.get("length") for r in rows if r.meta.get("length") is not None})
    return {n: aggregate([r for r in rows if r.meta.get("length") == n]) for n in lengths}


REFERENCE = "full"  # the row every other is measured against (`tokenomy report --docs`' draws tables)
DRAW_COLUMNS = [("kept_fraction", "kept", ".3f"), ("bytes_fraction", "bytes", ".3f"),
                ("decode_tokens_per_second_median", "decode tok/s", ".1f")]  # shown per draws-table row


def columns(perplexity: bool) -> list[tuple[str, str, str]]:
    """The summary table's columns (accuracy tasks or the perplexity task)."""
    quality = [("perplexity", "ppl", ".3f"), ("kl", "KL", ".4f"), ("peak_kv_mib_median", "peak KV MiB", ".2f")] \
        if perplexity else [("accuracy", "acc", ".3f"), ("relative_accuracy", "rel", ".3f")]
    return [
        ("setting", "setting", ""), ("method", "method", ""), ("keep", "keep", ".2f"), *quality,
        ("kept_fraction", "kept", ".3f"), ("bytes_fraction", "bytes", ".3f"),
        ("prefill_seconds_median", "prefill s", ".3f"),
        ("scoring_overhead_median", "overhead", ".1%"),
        ("decode_tokens_per_second_median", "decode tok/s", ".1f"),
    ]


def _quality(row: dict) -> float | None:
    """Accuracy relative to the full cache, or for perplexity rows the full cache's perplexity over this one's
    (1: nothing lost either way)."""
    if row.get("relative_accuracy") is not None:
        return row["relative_accuracy"]
    return None if row.get("perplexity_ratio") is None else 1 / row["perplexity_ratio"]


def _seconds(row: dict) -> float | None:
    prefill, scoring = row.get("prefill_seconds_median"), row.get("scoring_seconds_median") or 0.0
    return None if prefill is None else prefill + scoring


_QUALITY = Axis(_quality, "quality / full cache's", "high")
FIGURES = [
    Figure(title, x, _QUALITY, series=lambda r: f"{r['method']} ({r['setting']})",
           peer=lambda r: r["method"].split(":")[0] in PEERS, rows=lambda payload: payload["aggregate"])
    for title, x in [("quality vs KV entries kept", Axis(key("kept_fraction"), "share of KV entries kept", "low")),
                     ("quality vs time", Axis(_seconds, "prefill + scoring, s (median)", "low"))]
]


def notes(summary: list[dict]) -> list[str]:
    """Lines for rows whose columns read differently: decode-time selection (TokenSelect) evicts nothing."""
    return [f"{e['method']} ({e['setting']}) at keep {e['keep']:.2f} stores every entry (kept 1.000); each decoding "
            f"forward attends to {e['keep']:.0%} of them ({e['reused_selections']:.0%} of its layer selections reused)"
            for e in summary if "reused_selections" in e]


def render(payload: dict, markdown: bool = False) -> str:
    """The tables of a `tokenomy bench kv` JSON: overall, then per context length."""
    perplexity = any("perplexity" in e for e in payload["aggregate"])
    parts = [table(payload["aggregate"], columns(perplexity), markdown), *notes(payload["aggregate"])]
    for length, rows in payload.get("aggregate_by_length", {}).items():
        parts.append(f"\ncontext length {length} tokens:\n")
        parts.append(table(rows, columns(perplexity), markdown))
    return "\n".join(parts)
