"""The prompt site: text in, text out — tokens removed before the model ever sees them, no model surgery.

A method (`PromptCompression`) is a score, a budget and a selection:

1. The context is cut into **units** that are kept or dropped whole: words (runs of non-space characters), and
   single characters in scripts written without spaces (CJK), so a kept unit is always the original text —
   never a re-decoded token fragment, never a garbled character. Each unit's score is the mean of the
   scores of the compressor tokens it holds.
2. Optional coarse stage (``coarse``): whole documents (the context's paragraphs, or the list given) are
   ranked and kept, most informative first, until ``min(1, coarse_share * rate)`` of the context; with
   ``reorder`` the kept documents come most relevant first (LongLLMLingua), else in their order.
3. Token stage: units are kept by score until the prompt holds ``rate`` of its tokens, question included
   (the question is never compressed). Forced units — those with a digit, or holding a ``force_tokens``
   string, and with ``question_words`` the question's rarer words — are kept first (and dropped last when they
   alone exceed the budget). With ``segment``, the
   score is taken segment by segment, each conditioned on what was kept before it (LLMLingua's iterative
   compression); ``dynamic`` gives higher-ranked documents more of the budget (LongLLMLingua's dynamic
   compression ratio).

Selection counts the compressor's tokens; the rendered prompt is then measured with the tokenizer of the model
that will read it (``target_tokenizer``, default the compressor's) and trimmed, weakest words first, until it
holds at most ``floor(rate * original + 1/2)`` of them — the achieved ratio is what that model pays.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_bool, check_fraction, check_int
from tokenomy.adapters.lm import attention_from_last, decoder
from tokenomy.score.prompt import PromptView
from tokenomy.select.repeats import repeated_spans

SITE = "prompt"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_UNITS = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


@dataclass
class CompressedPrompt:
    """What a compressor returns (LLMLingua's field names where they exist)."""

    compressed_prompt: str  # the compressed context, then the question
    compressed_context: str
    origin_tokens: int  # prompt tokens (context + question) before, in the target's tokenizer
    compressed_tokens: int  # and after
    kept: list[bool]  # per compressor token of the original context: kept or not
    windows: int = 1  # compressor windows the context needed (long contexts are scored in windows)
    forced_missing: list[str] = field(default_factory=list)  # force_tokens that occur nowhere in the context
    method: str = ""

    @property
    def ratio(self) -> float:
        """Compression ratio, ``origin_tokens / compressed_tokens`` (3.0 = three times fewer)."""
        return self.origin_tokens / max(1, self.compressed_tokens)

    @property
    def rate(self) -> float:
        """Achieved rate, ``compressed_tokens / origin_tokens``."""
        return self.compressed_tokens / max(1, self.origin_tokens)


@dataclass
class _Units:
    """The context cut into units: character spans, and which compressor tokens each holds."""

    text: str
    spans: list[tuple[int, int]]
    token_unit: Tensor  # (n_tokens,) the unit each compressor token belongs to
    ids: Tensor  # (n_tokens,) the compressor's token ids
    offsets: Tensor  # (n_tokens, 2) each token's character span in ``text``

    @classmethod
    def of(cls, text: str, tokenizer) -> _Units:
        spans = [m.span() for m in _UNITS.finditer(text)]
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts = torch.tensor([s for s, _ in spans] or [0])
        last = torch.tensor([max(s, e - 1) for s, e in encoded["offset_mapping"]] or [0])  # a token's last character
        unit = (torch.searchsorted(starts, last, right=True) - 1).clamp_min(0)
        n = len(encoded["input_ids"])
        offsets = torch.tensor(encoded["offset_mapping"], dtype=torch.long).view(n, 2)
        return cls(text, spans, unit[:n], torch.tensor(encoded["input_ids"], dtype=torch.long), offsets)

    def costs(self) -> Tensor:
        """Compressor tokens per unit (a unit holding none costs nothing)."""
        return torch.bincount(self.token_unit, minlength=len(self.spans))

    def unit_scores(self, token_scores: Tensor) -> Tensor:
        """Mean token score per unit (units without a token of their own: their token's score)."""
        n = len(self.spans)
        total = torch.zeros(n).index_add_(0, self.token_unit, token_scores.float())
        counts = self.costs().clamp_min(1)
        scores = total / counts
        empty = self.costs() == 0
        if bool(empty.any()):
            scores[empty] = scores[(torch.cumsum(~empty, 0) - 1).clamp_min(0)[empty]]
        return scores

    def render(self, keep: Tensor) -> str:
        """The kept units in order, with the original text between neighbours that were both kept; where units
        were dropped, a gap that held a line break becomes one, any other gap one space (none in CJK)."""
        out, last = [], None
        for index in torch.nonzero(keep).flatten().tolist():
            start, end = self.spans[index]
            if last is not None:
                gap = self.text[self.spans[last][1]:start]
                out.append(gap if index == last + 1 else "\n" if "\n" in gap else " " if gap else "")
            out.append(self.text[start:end])
            last = index
        return "".join(out)


def _documents(context: str | list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The context as one text and the character spans of its documents: the paragraphs (split at blank
    lines) of a string, or the strings of a list joined by blank lines."""
    if isinstance(context, str):
        text = context
        cuts = [0, *(i for m in re.finditer(r"\n[ \t]*\n", text) for i in m.span()), len(text)]
        pieces = list(zip(cuts[::2], cuts[1::2]))
    else:
        if not all(isinstance(d, str) for d in context):
            raise TokenomyError("the context must be a string or a list of strings")
        text, pieces, at = "\n\n".join(context), [], 0
        for document in context:
            pieces.append((at, at + len(document)))
            at += len(document) + 2
    spans = []
    for a, b in pieces:  # without their surrounding whitespace
        piece = text[a:b]
        if piece.strip():
            spans.append((a + len(piece) - len(piece.lstrip()), b - (len(piece) - len(piece.rstrip()))))
    return text, spans


def _join(text: str, spans: list[tuple[int, int]], order: list[int], rendered: dict[int, str]) -> str:
    """Documents in ``order``: the original text around and between documents that stay neighbours, a blank
    line elsewhere."""
    out, last = [], None
    for index in order:
        if not rendered[index]:
            continue
        if last is None:
            out.append(text[: spans[index][0]] if index == 0 else "")
        else:
            out.append(text[spans[last][1]:spans[index][0]] if index == last + 1 else "\n\n")
        out.append(rendered[index])
        last = index
    if last is not None and last == len(spans) - 1:
        out.append(text[spans[last][1]:])
    return "".join(out)


def _counter(tokenizer) -> Callable[[str], int]:
    """Tokens ``tokenizer`` makes of a text (no special tokens)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def _forced(units: _Units, force_tokens: tuple[str, ...], digits: bool, asked: set[str], around: int) -> Tensor:
    words = [units.text[s:e] for s, e in units.spans]
    forced = torch.tensor([(digits and any(c.isdigit() for c in w)) or any(f in w for f in force_tokens)
                           for w in words], dtype=torch.bool)
    for index, word in enumerate(words):  # a question word, with `around` words on each side
        if _word(word) in asked:
            forced[max(0, index - around):index + around + 1] = True
    return forced


def _word(text: str) -> str:
    return text.strip(string.punctuation + "\u201c\u201d\u2018\u2019").lower()


def _question_words(question: str, documents: list[_Units], budget: int) -> set[str]:
    """The question's words (four letters or more) that the context holds, rarest in the context first, as
    many as half the budget pays for wherever they occur."""
    asked = {_word(w) for w in _UNITS.findall(question)}
    asked = {w for w in asked if len(w) >= 4}
    cost: dict[str, int] = {}
    for units in documents:
        costs = units.costs().tolist()
        for (s, e), c in zip(units.spans, costs):
            word = _word(units.text[s:e])
            if word in asked:
                cost[word] = cost.get(word, 0) + c
    chosen, spent = set(), 0
    for word in sorted(cost, key=lambda w: (cost[w], w)):
        if spent + cost[word] > budget // 2:
            break
        chosen.add(word)
        spent += cost[word]
    return chosen


def _choose(scores: Tensor, costs: Tensor, forced: Tensor, budget: int) -> Tensor:
    """Units kept: forced ones first, then by score while the budget allows (a unit that does not fit is
    skipped, a smaller later one may)."""
    keep = forced.clone()
    spent = int(costs[keep].sum())
    for index in torch.argsort(scores.masked_fill(forced, torch.inf), descending=True, stable=True).tolist():
        if keep[index]:
            continue
        cost = int(costs[index])
        if spent + cost <= budget:
            keep[index] = True
            spent += cost
    return keep


@dataclass
class PromptCompression:
    """A prompt-compression method (see the module docstring). ``score(view) -> (n,)`` rates the context's
    compressor tokens; ``coarse.rank(view, documents) -> (d,)`` rates whole documents."""

    score: Callable[[PromptView], Tensor]
    rate: float = 0.33  # share of the prompt's tokens (context and question) kept
    coarse: object | None = None  # document stage: ``rank(view, documents)``; None keeps every document
    coarse_share: float = 2.0  # the document stage keeps min(1, coarse_share * rate) of the context
    reorder: bool = False  # kept documents most relevant first
    segment: int | None = None  # score segment by segment, conditioned on what was kept (None: one pass)
    dynamic: float = 0.0  # how much more budget better-ranked documents get, in [0, 1)
    force_digits: bool = True  # words holding a digit are always kept
    question_words: bool = False  # the question's rarer words are kept wherever the context holds them
    question_window: int = 0  # and this many words on each side of them
    window: int = 2048  # the longest run of tokens the compressor model reads at once

    def __post_init__(self):
        self.rate = check_fraction("rate", self.rate)
        for switch in ("reorder", "force_digits", "question_words"):
            check_bool(switch, getattr(self, switch))
        if self.segment is not None:
            check_int("segment", self.segment, minimum=8)
        check_int("window", self.window, minimum=64)
        check_int("question_window", self.question_window)
        if not 0 <= self.dynamic < 1:
            raise TokenomyError(f"dynamic must be in [0, 1), got {self.dynamic!r}")
        if not self.coarse_share >= 1:
            raise TokenomyError(f"coarse_share must be >= 1, got {self.coarse_share!r}")

    def compress(self, context: str | list[str], question: str = "", *, model, tokenizer, target_tokenizer=None,
                 force_tokens: tuple[str, ...] = (), name: str = "") -> CompressedPrompt:
        """Compress ``context`` for a prompt that asks ``question`` after it (see the module docstring)."""
        text, spans = _documents(context)
        if not spans:
            raise TokenomyError("the prompt is empty: nothing to compress")
        documents = [text[a:b] for a, b in spans]
        force_tokens = tuple(force_tokens)
        count = _counter(target_tokenizer or tokenizer)
        question_ids = torch.tensor(tokenizer(question, add_special_tokens=False).input_ids, dtype=torch.long)
        per_document = [_Units.of(d, tokenizer) for d in documents]
        context_tokens = sum(u.ids.numel() for u in per_document)
        budget = int(torch.floor(torch.tensor(self.rate * (context_tokens + question_ids.numel()) + 0.5)))
        budget -= question_ids.numel()
        if budget < 1:
            raise TokenomyError(f"the question alone is {question_ids.numel()} tokens, the whole budget at rate "
                                f"{self.rate} of this {context_tokens + question_ids.numel()}-token prompt; "
                                "raise the rate or shorten the question")

        attention, depth = partial(attention_from_last, model), len(decoder(model).layers)

        def view(ids: Tensor, prefix: Tensor | None = None, text: str = "", spans: Tensor | None = None) -> PromptView:
            prefix = torch.zeros(0, dtype=torch.long) if prefix is None else prefix
            return PromptView(model, tokenizer, ids, question_ids, prefix, self.window, text, spans, attention, depth)

        order = list(range(len(documents)))
        kept_documents = [True] * len(documents)
        ranking = torch.zeros(len(documents))
        if self.coarse is not None and len(documents) > 1:
            ranking = self.coarse.rank(view(torch.zeros(0, dtype=torch.long)), [u.ids for u in per_document])
            order = torch.argsort(ranking, descending=True, stable=True).tolist()
            allowed = min(context_tokens, self.coarse_share * budget)
            kept_documents, spent = [False] * len(documents), 0
            for index in order:
                if spent < max(allowed, 1):
                    kept_documents[index] = True
                    spent += per_document[index].ids.numel()
            if not self.reorder or self.rate >= 1:  # rate 1 changes nothing, the order included
                order = sorted(order)
        order = [i for i in order if kept_documents[i]]
        budgets = self._document_budgets(order, per_document, budget, ranking)
        asked = _question_words(question, [per_document[i] for i in order], budget) if self.question_words else set()

        keeps, scores, forced_units = {}, {}, {}
        prefix = torch.zeros(0, dtype=torch.long)
        windows = 1
        for index, share in zip(order, budgets):
            units = per_document[index]
            forced = forced_units[index] = _forced(units, force_tokens, self.force_digits, asked, self.question_window)
            keep = keeps[index] = torch.zeros(len(units.spans), dtype=torch.bool)
            scores[index] = torch.zeros(len(units.spans))
            pieces = self._segments(units) if self.segment else [torch.arange(len(units.spans))]
            costs = units.costs()
            total = max(1, int(costs.sum()))
            for piece in pieces:
                tokens = torch.isin(units.token_unit, piece)
                token_scores = self.score(view(units.ids[tokens], prefix, units.text, units.offsets[tokens]))
                windows = max(windows, -(-int(tokens.sum()) // self.window))
                local = _Units(units.text, [units.spans[i] for i in piece.tolist()],
                               torch.searchsorted(piece, units.token_unit[tokens]), units.ids[tokens],
                               units.offsets[tokens])
                scores[index][piece] = local.unit_scores(token_scores)
                piece_budget = round(share * int(costs[piece].sum()) / total)
                chosen = _choose(scores[index][piece], costs[piece], forced[piece], piece_budget)
                keep[piece[chosen]] = True
                if self.segment:
                    prefix = torch.cat([prefix, units.ids[tokens][chosen[local.token_unit]]])

        ask = "\n\n" + question if question else ""
        original = count(text + ask)
        unit_costs = {i: per_document[i].costs().tolist() for i in order}
        allowed = int(torch.floor(torch.tensor(self.rate * original + 0.5)))
        for _ in range(16):  # the rendered prompt (separators, the target's tokens) may exceed: trim the weakest,
            # forced words last (when they alone exceed the budget, the budget wins)
            compressed_context = _join(text, spans, order, {i: per_document[i].render(keeps[i]) for i in order})
            excess = count(compressed_context + ask) - allowed
            weakest = sorted((bool(forced_units[i][u]), float(scores[i][u]), i, u) for i in order
                             for u in torch.nonzero(keeps[i]).flatten().tolist())
            if excess <= 0 or not weakest:
                break
            dropped = 0
            for _, _, i, u in weakest:
                keeps[i][u] = False
                dropped += int(unit_costs[i][u])
                if dropped >= excess:
                    break
        kept = [flag for i in range(len(documents))
                for flag in (keeps[i][per_document[i].token_unit].tolist() if i in keeps
                             else [False] * per_document[i].ids.numel())]
        missing = [f for f in force_tokens if not any(f in d for d in documents)]
        return CompressedPrompt(compressed_context + ask, compressed_context, original,
                                count(compressed_context + ask), kept, windows, missing, name)

    def _document_budgets(self, order: list[int], per_document: list[_Units], budget: int,
                          ranking: Tensor) -> list[float]:
        """Tokens each kept document may keep: proportional to its length, tilted by ``dynamic`` towards the
        better-ranked ones (the best gets ``1 + dynamic`` times its share, the worst ``1 - dynamic``)."""
        lengths = torch.tensor([float(per_document[i].ids.numel()) for i in order])
        weights = lengths
        if len(order) > 1 and self.dynamic:
            place = torch.argsort(torch.argsort(ranking[order], descending=True, stable=True))  # 0 = best
            weights = lengths * torch.linspace(1 + self.dynamic, 1 - self.dynamic, len(order))[place]
        share = torch.zeros_like(lengths)
        open_ = torch.ones_like(lengths, dtype=torch.bool)
        while bool(open_.any()):  # what a full document cannot take goes to the others
            left = budget - float(share.sum())
            share[open_] += weights[open_] / weights[open_].sum() * left
            full = open_ & (share >= lengths)
            share = torch.minimum(share, lengths)
            if not bool(full.any()):
                break
            open_ &= ~full
        return share.tolist()

    def _segments(self, units: _Units) -> list[Tensor]:
        """Consecutive runs of units holding about ``segment`` compressor tokens each."""
        costs = units.costs()
        pieces, current, size = [], [], 0
        for index, cost in enumerate(costs.tolist()):
            current.append(index)
            size += cost
            if size >= self.segment:
                pieces.append(torch.tensor(current))
                current, size = [], 0
        if current:
            pieces.append(torch.tensor(current))
        return pieces


_REFERENCE = re.compile(r"<@(\d+),(\d+)>")


def restore(text: str) -> str:
    """The exact inverse of `MetaTokens`: every reference ``<@D,L>`` replaced by the ``L`` characters that
    start ``D`` characters back in the restored text (copies may overlap what they produce), ``<@@`` by ``<@``."""
    out: list[str] = []
    size, i = 0, 0
    while True:
        at = text.find("<@", i)
        if at < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:at])
        size += at - i
        if text.startswith("<@@", at):
            out.append("<@")
            size, i = size + 2, at + 3
            continue
        match = _REFERENCE.match(text, at)
        if match is None:
            raise TokenomyError(f"not a tokenomy lossless prompt: stray '<@' at character {at}")
        back, length = int(match.group(1)), int(match.group(2))
        if not 0 < back <= size or length < 1:
            raise TokenomyError(f"not a tokenomy lossless prompt: reference {match.group(0)} at character {at} "
                                f"points outside the {size} characters before it")
        restored = "".join(out)
        piece = []
        for k in range(length):  # overlapping copies repeat what they copy
            source = size - back + k
            piece.append(restored[source] if source < size else piece[source - size])
        out = [restored, "".join(piece)]
        size += length
        i = match.end()


@dataclass
class MetaTokens:
    """Lossless compression: every repeated span of at least ``min_tokens`` compressor tokens becomes a
    reference ``<@D,L>`` (copy ``L`` characters from ``D`` back) when that costs fewer of the target's tokens —
    LZ77 over token ids, spans on character boundaries; literal ``<@`` is written ``<@@``. `restore` inverts
    it exactly; the model must read the references it was never trained on (the benchmark reports what that
    costs). From "Lossless Token Sequence Compression via Meta-Tokens" (2025)."""

    min_tokens: int = 8

    def __post_init__(self):
        check_int("min_tokens", self.min_tokens, minimum=2)

    def compress(self, context: str | list[str], question: str = "", *, model=None, tokenizer, target_tokenizer=None,
                 force_tokens: tuple[str, ...] = (), name: str = "") -> CompressedPrompt:
        text = _documents(context)[0]
        if not text.strip():
            raise TokenomyError("the prompt is empty: nothing to compress")
        count = _counter(target_tokenizer or tokenizer)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        starts = [s for s, _ in offsets] + [len(text)]
        clean = [k == 0 or offsets[k][0] >= offsets[k - 1][1] for k in range(len(ids))] + [True]

        def allowed(start: int, length: int, source: int) -> bool:
            if not (clean[start] and clean[start + length] and clean[source] and clean[source + length]):
                return False
            a, b = starts[start], starts[start + length]
            c = starts[source]
            return b > a and text[a:b] == text[c:c + b - a]

        def cheaper(start: int, length: int, source: int) -> bool:
            a, b, c = starts[start], starts[start + length], starts[source]
            return count(f"<@{a - c},{b - a}>") < count(text[a:b])

        out, last = [], 0
        for start, length, source in repeated_spans(ids, self.min_tokens, allowed, cheaper):
            a, b, c = starts[start], starts[start + length], starts[source]
            out.append(text[last:a].replace("<@", "<@@"))
            out.append(f"<@{a - c},{b - a}>")
            last = b
        out.append(text[last:].replace("<@", "<@@"))
        compressed = "".join(out)
        prompt = compressed + ("\n\n" + question if question else "")
        original = text + ("\n\n" + question if question else "")
        return CompressedPrompt(prompt, compressed, count(original), count(prompt), [True] * len(ids), 1,
                                [f for f in force_tokens if f not in text], name)
