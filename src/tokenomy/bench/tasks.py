"""Benchmark tasks for KV-cache compression: long contexts with a question asked about them.

Every sample is a context (the part compressed in the query-agnostic setting), a question appended after
it, accepted answers, and an optional answer prefix that opens the model's reply (RULER's format, which
gives the uncompressed SmolLM2 its best accuracy). Built-in tasks are generated deterministically from a
seed over a public-domain haystack shipped with the package; ``--data`` reads the same fields from JSONL.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from tokenomy._validation import TokenomyError


@dataclass
class Sample:
    """One benchmark item. ``continuation`` is set for perplexity tasks (no question then)."""

    context: str
    question: str
    answers: list[str]
    answer_prefix: str = ""
    continuation: str | None = None
    meta: dict = field(default_factory=dict)
    every_answer: bool = False  # the reply must hold every one of ``answers`` (RULER's multi-value, multi-query)

    def judge(self, reply: str) -> bool:
        """Whether ``reply`` answers: it holds one accepted answer, or all of them with ``every_answer`` (case
        ignored)."""
        reply = reply.lower()
        return (all if self.every_answer else any)(a.lower() in reply for a in self.answers)


@lru_cache(maxsize=1)
def haystack_paragraphs() -> tuple[str, ...]:
    """Paragraphs of *Alice's Adventures in Wonderland* (packaged, public domain), one line each."""
    raw = resources.files("tokenomy").joinpath("data/alice29.txt.gz").read_bytes()
    text = gzip.decompress(raw).decode("ascii").replace("\r\n", "\n")
    paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
    return tuple(p for p in paragraphs if len(p) > 40)


def _fill(tokenizer, rng: random.Random, n_tokens: int) -> list[str]:
    """Consecutive paragraphs from a random start (wrapping) totalling about ``n_tokens`` tokens."""
    paragraphs = haystack_paragraphs()
    start = rng.randrange(len(paragraphs))
    chosen, total = [], 0
    while total < n_tokens:
        paragraph = paragraphs[(start + len(chosen)) % len(paragraphs)]
        chosen.append(paragraph)
        total += len(tokenizer.encode(paragraph, add_special_tokens=False)) + 1
    return chosen


_WORDS = (
    "amber basil cedar delta ember fable garnet harbor indigo jasper kestrel lantern meadow nectar "
    "onyx pepper quartz raven saffron tundra umber velvet willow xenon yarrow zephyr cobalt falcon "
    "glacier hazel ivory juniper lotus marble nutmeg orchid pebble quill russet sierra thistle"
).split()


def _key(rng: random.Random) -> str:
    return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"


def _keys(rng: random.Random, count: int) -> list[str]:
    """``count`` different keys, sorted."""
    keys = set()
    while len(keys) < count:
        keys.add(_key(rng))
    return sorted(keys)


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _grid(lengths: list[int], limit: int) -> list[tuple[int, float]]:
    """``limit`` (length, depth) pairs: lengths cycle, depths sweep 0..1 evenly within each length."""
    per_length = math.ceil(limit / len(lengths))
    pairs = []
    for i in range(limit):
        j = i // len(lengths)
        depth = j / (per_length - 1) if per_length > 1 else 0.5
        pairs.append((lengths[i % len(lengths)], depth))
    return pairs


def _insert(paragraphs: list[str], depth: float, sentence: str) -> list[str]:
    position = round(depth * len(paragraphs))
    return paragraphs[:position] + [sentence] + paragraphs[position:]


_NIAH_INSTRUCTION = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n"
)


def _needle_question(key: str, number: str, paragraphs: list[str], meta: dict) -> Sample:
    return Sample(
        context=_NIAH_INSTRUCTION + "\n".join(paragraphs),
        question=f"\nWhat is the special magic number for {key} mentioned in the provided text?",
        answers=[number],
        answer_prefix=f"The special magic number for {key} mentioned in the provided text is",
        meta=meta,
    )


def niah(tokenizer, lengths: list[int], limit: int, seed: int) -> list[Sample]:
    """RULER's single needle: one "special magic number" hidden at a depth, asked for by its key."""
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        key, number = _key(rng), _number(rng)
        needle = f"The special magic number for {key} is: {number}."
        paragraphs = _insert(_fill(tokenizer, rng, length), depth, needle)
        samples.append(_needle_question(key, number, paragraphs, {"length": length, "depth": round(depth, 3)}))
    return samples


def multikey(tokenizer, lengths: list[int], limit: int, seed: int, needles: int = 4) -> list[Sample]:
    """RULER's multi-key needles: ``needles`` magic numbers with different keys; one is asked for."""
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        keys = _keys(rng, needles)
        numbers = [_number(rng) for _ in keys]
        asked = rng.randrange(needles)
        paragraphs = _fill(tokenizer, rng, length)
        for i, (key, number) in enumerate(zip(keys, numbers)):
            if i != asked:
                paragraphs = _insert(paragraphs, rng.random(), f"The special magic number for {key} is: {number}.")
        needle = f"The special magic number for {keys[asked]} is: {numbers[asked]}."
        paragraphs = _insert(paragraphs, depth, needle)
        meta = {"length": length, "depth": round(depth, 3), "needles": needles}
        samples.append(_needle_question(keys[asked], numbers[asked], paragraphs, meta))
    return samples


def multivalue(tokenizer, lengths: list[int], limit: int, seed: int, values: int = 4) -> list[Sample]:
    """RULER's multi-value needles: one key with ``values`` magic numbers spread through the text; the reply
    must name them all."""
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        key, numbers = _key(rng), sorted({_number(rng) for _ in range(values)})
        paragraphs = _fill(tokenizer, rng, length)
        places = [depth] + [rng.random() for _ in numbers[1:]]  # the first at the swept depth, the rest anywhere
        for number, place in zip(numbers, places):
            paragraphs = _insert(paragraphs, place, f"One of the special magic numbers for {key} is: {number}.")
        samples.append(Sample(
            context=_NIAH_INSTRUCTION + "\n".join(paragraphs),
            question=f"\nWhat are all the special magic numbers for {key} mentioned in the provided text?",
            answers=numbers, every_answer=True,
            answer_prefix=f"The special magic numbers for {key} mentioned in the provided text are",
            meta={"length": length, "depth": round(depth, 3), "values": len(numbers)}))
    return samples


def multiquery(tokenizer, lengths: list[int], limit: int, seed: int, queries: int = 4) -> list[Sample]:
    """RULER's multi-query needles: ``queries`` keys, each with its magic number somewhere in the text, all asked
    at once; the reply must name every number."""
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        keys = _keys(rng, queries)
        numbers = [_number(rng) for _ in keys]
        paragraphs = _fill(tokenizer, rng, length)
        places = [depth] + [rng.random() for _ in keys[1:]]
        for key, number, place in zip(keys, numbers, places):
            paragraphs = _insert(paragraphs, place, f"The special magic number for {key} is: {number}.")
        asked = ", ".join(keys[:-1]) + f" and {keys[-1]}"
        samples.append(Sample(
            context=_NIAH_INSTRUCTION + "\n".join(paragraphs),
            question=f"\nWhat are all the special magic numbers for {asked} mentioned in the provided text?",
            answers=numbers, every_answer=True,
            answer_prefix=f"The special magic numbers for {asked} mentioned in the provided text are",
            meta={"length": length, "depth": round(depth, 3), "queries": queries}))
    return samples


def vartrack(tokenizer, lengths: list[int], limit: int, seed: int, hops: int = 2) -> list[Sample]:
    """RULER-style variable tracking: ``VAR A = 12345`` then ``VAR B = VAR A`` ... spread through the
    haystack; the question asks for the value of the last variable of the chain."""
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        names = []
        while len(names) < hops + 1:
            name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
            if name not in names:
                names.append(name)
        value = str(rng.randint(10_000, 99_999))
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        paragraphs = _fill(tokenizer, rng, length)
        # The chain starts at `depth` and its links follow, in order, over the rest of the text.
        positions = sorted(depth + (1 - depth) * rng.random() * i / hops for i in range(hops + 1))
        for statement, position in reversed(list(zip(statements, positions))):
            paragraphs = _insert(paragraphs, position, statement)
        samples.append(
            Sample(
                context="Memorize and track the chain of variable assignments hidden in the following text.\n"
                + "\n".join(paragraphs),
                question=f"\nWhat is the value of VAR {names[-1]}? Follow the chain of assignments.",
                answers=[value],
                answer_prefix=f"The value of VAR {names[-1]} is",
                meta={"length": length, "depth": round(depth, 3), "hops": hops},
            )
        )
    return samples


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """Distinct lowercase words of four letters or more from the packaged haystack, in order of appearance."""
    seen: dict[str, None] = {}
    for paragraph in haystack_paragraphs():
        for word in paragraph.split():
            word = word.strip(".,;:!?'\"()-_*`").lower()
            if len(word) >= 4 and word.isalpha():
                seen.setdefault(word)
    return tuple(seen)


def cwe(tokenizer, lengths: list[int], limit: int, seed: int, common: int = 5, common_count: int = 30,
        rare_count: int = 3) -> list[Sample]:
    """RULER's common-words extraction (aggregation, no needle): a numbered list of words in which ``common``
    words appear ``common_count`` times each (fewer in short contexts: the common words fill at most about a
    quarter of the list, and appear at least twice as often as the others) and every other word ``rare_count``
    times, shuffled, enough to fill the length; the reply must name every common word."""
    rng = random.Random(seed)
    vocabulary = _vocabulary()
    samples = []
    for length, _ in _grid(lengths, limit):
        words = rng.sample(vocabulary, len(vocabulary))
        frequent, rare = words[:common], iter(words[common:])
        repeats = max(2 * rare_count, min(common_count, length // (16 * common)))  # a numbered word: ~4 tokens
        entries = [w for w in frequent for _ in range(repeats)]
        while True:  # rare words until the list fills the length (its tokens counted, not guessed)
            order = rng.sample(entries, len(entries))
            listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(order))
            missing = length - len(tokenizer.encode(listing, add_special_tokens=False))
            if missing <= 0:
                break
            for _ in range(missing // (4 * rare_count) + 1):  # a numbered word takes about four tokens
                entries += [next(rare)] * rare_count
        samples.append(Sample(
            context="Below is a numbered list of words. In these words, some appear more often than others. "
                    f"Memorize the ones that appear most often.\n{listing}",
            question=f"\nQuestion: What are the {common} most common words in the above list?",
            answers=sorted(frequent), every_answer=True,
            answer_prefix=f"Answer: The top {common} words that appear most often in the list are:",
            meta={"length": length, "common": common, "repeats": repeats, "entries": len(order)}))
    return samples


def squad(tokenizer, lengths: list[int], limit: int, seed: int) -> list[Sample]:
    """RULER's QA: a SQuAD 2.0 question (``../shared/data/squad``) whose paragraph sits at a depth among paragraphs
    of other articles, enough of them to fill the length; the reply must hold one of the accepted answers."""
    articles = json.loads(shared_file("squad/dev-v2.0.json").read_text())["data"]
    rng = random.Random(seed)
    samples = []
    for length, depth in _grid(lengths, limit):
        while True:
            a = rng.randrange(len(articles))
            paragraph = rng.choice(articles[a]["paragraphs"])
            pool = [q for q in paragraph["qas"] if not q["is_impossible"]]
            if pool:
                break
        question = rng.choice(pool)
        documents, total = [], len(tokenizer.encode(paragraph["context"], add_special_tokens=False))
        while total < length:
            other = rng.choice([i for i in range(len(articles)) if i != a])
            documents.append(rng.choice(articles[other]["paragraphs"])["context"])
            total += len(tokenizer.encode(documents[-1], add_special_tokens=False)) + 4
        documents.insert(round(depth * len(documents)), paragraph["context"])
        samples.append(Sample(
            context=_QA_INSTRUCTION + "\n\n".join(f"Document {k + 1}:\n{d}" for k, d in enumerate(documents)),
            question=f"\n\n{_QA_INSTRUCTION}Question: {question['question']}",
            answers=sorted({x["text"] for x in question["answers"]}), answer_prefix="Answer:",
            meta={"length": length, "depth": round(depth, 3)}))
    return samples


_QA_INSTRUCTION = "Answer the question based on the given documents. Only give the answer, in a few words.\n\n"


def perplexity(tokenizer, lengths: list[int], limit: int, seed: int, continuation_tokens: int = 64) -> list[Sample]:
    """A stretch of text: its first ``length`` tokens are the context, the next ones the continuation
    whose perplexity (and KL to the uncompressed model) is measured."""
    rng = random.Random(seed)
    samples = []
    for length, _ in _grid(lengths, limit):
        paragraphs = _fill(tokenizer, rng, length + continuation_tokens + 64)
        ids = tokenizer.encode("\n".join(paragraphs), add_special_tokens=False)
        context = tokenizer.decode(ids[:length])
        continuation = tokenizer.decode(ids[length : length + continuation_tokens])
        samples.append(Sample(context, "", [], continuation=continuation, meta={"length": length}))
    return samples


TASKS: dict[str, Callable[..., list[Sample]]] = {
    "niah": niah,
    "multikey": multikey,
    "multivalue": multivalue,
    "multiquery": multiquery,
    "cwe": cwe,
    "vartrack": vartrack,
    "squad": squad,
    "ppl": perplexity,
}


def shared_data_dir() -> Path | None:
    """``../shared/data`` (next to the working directory or to this checkout) when it exists."""
    for root in (Path.cwd() / "../shared/data", Path(__file__).resolve().parents[4] / "../shared/data"):
        if root.is_dir():
            return root.resolve()
    return None


def shared_file(relative: str) -> Path:
    """A file under ``../shared/data``; its absence fails naming it and what runs without it."""
    root = shared_data_dir()
    path = None if root is None else root / relative
    if path is None or not path.exists():
        raise TokenomyError(f"this task reads ../shared/data/{relative}, which is not here; use --task niah or "
                            "--data FILE.jsonl")
    return path


def read_records(path: str | Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank JSONL line, checked to hold ``required`` fields, string
    values for the other text fields and a non-empty list of strings for ``answers``; errors name the file
    and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TokenomyError(f"cannot read --data file {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise TokenomyError(f"{path} is not UTF-8 text: {err}") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise TokenomyError(f"{where}: not valid JSON ({err.msg})") from err
        if not isinstance(item, dict):
            raise TokenomyError(f"{where}: expected a JSON object, got {type(item).__name__}")
        missing = [k for k in required if k not in item]
        if missing:
            raise TokenomyError(f"{where}: missing field(s) {', '.join(missing)}")
        answers = item["answers"]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
            raise TokenomyError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
        for key in ("context", "question", "answer_prefix", "prompt", "template"):
            if key in item and not isinstance(item[key], str):
                raise TokenomyError(f"{where}: {key!r} must be a string")
        records.append((number, item))
    if not records:
        raise TokenomyError(f"{path} holds no samples")
    return records


QUESTION_TEMPLATE = "\n{question}"  # how every built-in task's question follows its context: on a new line


def read_jsonl(path: str | Path, template: str | None = None) -> list[Sample]:
    """Samples from JSONL: one object per line with ``context``, ``question``, ``answers`` (a list of
    accepted strings) and optionally ``answer_prefix`` and ``template``. The question follows the context as in
    the built-in tasks, on a new line; a row's ``template``, else ``template``, else `QUESTION_TEMPLATE` places
    it (``{question}`` marks where, e.g. ``"\\n\\nQuestion: {question}"``)."""
    samples = []
    for number, item in read_records(path, ("context", "question", "answers")):
        form = item.get("template", template or QUESTION_TEMPLATE)
        if form.count("{question}") != 1:
            raise TokenomyError(f"{path}:{number}: a template holds {{question}} exactly once, got {form!r}")
        samples.append(Sample(context=item["context"], question=form.replace("{question}", item["question"]),
                              answers=item["answers"], answer_prefix=item.get("answer_prefix", ""),
                              meta={"line": number}))
    return samples


def missing_prefix_note(samples: list[Sample]) -> str | None:
    """A line for the table when --data rows have no ``answer_prefix`` (the reply is then judged from the
    model's first words, which a prefix would steer), else None."""
    bare = sum(not s.answer_prefix for s in samples)
    if not bare:
        return None
    return (f"{bare} of {len(samples)} --data rows have no answer_prefix: replies are judged as the model starts "
            "them (a prefix such as \"The access code is\" steers short answers)")




REPLY_TOKENS = {"multivalue": 64, "multiquery": 64, "cwe": 64}  # tasks whose replies list several items; others: 16
