"""A tokenized LM as an exact next-byte model (Phan et al. 2024, "Exact Byte-Level Probabilities from
Tokenized Language Models for FIM-Tasks and Model Ensembles": the Byte-Token Representation Lemma).

The probability that the model's text continues with bytes ``s`` is the sum, over every token sequence
that *covers* ``s`` (its tokens spell a prefix of ``s`` and the last one reaches past or to its end), of
the sequence's probability. We keep those sequences as hypotheses: each spells ``s[:end]`` exactly and
waits for a token starting with ``s[end:]``. The next-byte distribution is the weighted mass of the
tokens each hypothesis could emit, grouped by their next byte (one scatter over a sorted vocabulary
range); a token spelling exactly ``s[end:]`` becomes a new hypothesis at the end of ``s``. Every byte
multiplies in exactly, so the product of next-byte probabilities along ``s`` equals the model's
probability of starting with ``s`` — over *all* tokenizations, not just the canonical one.

Cost is bounded: a hypothesis dies as soon as no token starts with what it still has to spell (so all
live hypotheses end within the last token's width), and at most ``max_hypotheses`` survive each byte,
dropping the smallest shares (and any below ``prune`` x the largest). The share of probability dropped
is reported in ``stats``; with ``prune=0, max_hypotheses=None`` nothing is dropped and the result is
exact. The prompt is conditioned on as bytes: its last ``backoff`` tokens are replayed byte by byte,
so a prompt ending mid-token (the FIM case) is handled by the same rule instead of a forced tokenization.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import torch

from tokenomy._validation import TokenomyError, check_int
from tokenomy.ensemble.lm import Branch
from tokenomy.ensemble.vocab import END, SYMBOLS, Vocabulary

MAX_HYPOTHESES = 4  # default cap on the tokenizations kept per byte
PRUNE = 3e-3  # default floor: a tokenization below this share of the best is dropped (docs/ensemble.md: its cost)


@dataclass
class _Hypothesis:
    branch: Branch  # its tokens (prompt prefix included) and KV cache
    end: int  # it spells stream[:end]; its next token must start with stream[end:]
    log_weight: float  # log-probability of its tokens after the committed prompt, up to a shared constant
    probs: torch.Tensor  # next-token distribution, in the vocabulary's sorted order
    span: tuple[int, int] = (0, 0)  # sorted range of tokens starting with stream[end:] (when end < len)


@dataclass
class ByteStats:
    max_hypotheses: int = 0
    pruned_mass: float = 0.0  # largest share of probability dropped at one byte
    capped_steps: int = 0  # bytes at which the hypothesis cap dropped something
    respelled: int = 0  # bytes no kept tokenization could continue (`advance` re-spells the best one)


@dataclass
class ByteLevelLM:
    """Next-byte distributions (256 bytes + END) from a tokenized causal LM; ``start`` then
    ``distribution``/``advance`` byte by byte."""

    model: object
    tokenizer: object
    max_hypotheses: int | None = MAX_HYPOTHESES
    prune: float = PRUNE
    backoff: int = 1
    vocabulary: Vocabulary | None = None
    stats: ByteStats = field(default_factory=ByteStats)

    def __post_init__(self):
        if self.max_hypotheses is not None:
            check_int("max_hypotheses", self.max_hypotheses, minimum=1)
        check_int("backoff", self.backoff, minimum=0)
        if not (isinstance(self.prune, (int, float)) and 0.0 <= self.prune < 1.0):
            raise TokenomyError(f"prune must be in [0, 1), got {self.prune!r}")
        if self.vocabulary is None:
            self.vocabulary = Vocabulary(self.tokenizer, self.model.config.vocab_size)
        self.forwarded = 0  # tokens run through the model since construction
        self._rank = torch.empty_like(self.vocabulary.order)
        self._rank[self.vocabulary.order] = torch.arange(len(self.vocabulary.order))

    def start(self, prompt: str | bytes) -> None:
        """Condition on ``prompt`` (text or bytes)."""
        data = prompt.encode("utf-8") if isinstance(prompt, str) else bytes(prompt)
        ids = self.vocabulary.prompt_ids(self.tokenizer, data)
        starts = len(self.vocabulary.start_ids(self.tokenizer))  # BOS and the like are never re-read
        keep = max(starts, len(ids) - self.backoff)
        committed = ids[:keep]
        if not committed:
            raise TokenomyError("empty prompt: this model has no start-of-text token to condition on")
        self.stats = ByteStats()
        self.stream = b""
        start = Branch.prefill(self.model, committed)
        self.forwarded += len(committed)
        self.hypotheses = [self._hypothesis(start, 0, 0.0)]
        for byte in self.vocabulary.bytes_tokenizer.decode(ids[keep:]):
            self.advance(byte)

    def _hypothesis(self, branch: Branch, end: int, log_weight: float) -> _Hypothesis:
        return _Hypothesis(branch, end, log_weight, branch.probs[self.vocabulary.order])

    def distribution(self) -> torch.Tensor:
        """P(next byte | stream) over 257 symbols (bytes, then END), float64, sums to 1."""
        total = torch.zeros(SYMBOLS, dtype=torch.float64)
        top = max(h.log_weight for h in self.hypotheses)
        for h in self.hypotheses:
            depth = len(self.stream) - h.end
            lo, hi = (0, self.vocabulary.size) if depth == 0 else h.span
            part = torch.zeros(SYMBOLS, dtype=torch.float64)
            part.scatter_add_(0, self.vocabulary.next_byte[depth, lo:hi], h.probs[lo:hi])
            if depth:
                part[END] = 0.0  # the token spelling exactly stream[end:] lives on as its own hypothesis
            total += math.exp(h.log_weight - top) * part
        return total / total.sum()

    def advance(self, byte: int) -> None:
        """Append ``byte`` to the stream and update the hypotheses."""
        self.stream += bytes([byte])
        candidates = self._candidates()
        if not candidates and self._spellable(byte):  # no kept tokenization reaches a byte some token spells
            self._respell()
            candidates = self._candidates()
        if not candidates:
            raise TokenomyError(f"the model gives byte 0x{byte:02x} zero probability here (no token spells it)")
        self._keep(candidates)

    def _candidates(self) -> list[tuple[float, str, _Hypothesis, int | None]]:
        """Every way the hypotheses can spell the stream's last byte, with its share (unnormalised, > 0):
        a hypothesis waiting for a longer token ("parent"), or a token ending exactly here ("child")."""
        parents, children = [], []
        for h in self.hypotheses:
            rest = self.stream[h.end :]
            lo, hi = self.vocabulary.prefix_range(rest)
            weight = math.exp(h.log_weight)
            exact = self.vocabulary.exact.get(rest, ())
            for token in exact:
                p = float(h.probs[self._rank[token]])
                if p > 0.0:
                    children.append((weight * p, h, token))
            longer = float(h.probs[lo + len(exact) : hi].sum())  # tokens equal to `rest` sort first
            if longer > 0.0:
                h.span = (lo, hi)
                parents.append((weight * longer, h))
        candidates = [(share, "parent", h, None) for share, h in parents]
        return candidates + [(share, "child", h, token) for share, h, token in children]

    def _spellable(self, byte: int) -> bool:
        lo, hi = self.vocabulary.prefix_range(bytes([byte]))
        return lo < hi

    def _respell(self) -> None:
        """The floor or the cap dropped every tokenization that continues with the stream's last byte (the
        exact model never gives a spellable byte zero probability, a pruned one can, and an ensemble may
        choose it for another model's sake): continue the best hypothesis with the tokenizer's own split of
        the bytes it still owes, so the model sees a real tokenization of the stream again."""
        best = max(self.hypotheses, key=lambda h: h.log_weight)
        owed = self.stream[best.end : -1]
        tokens = self.vocabulary.encode(owed)
        self.hypotheses = [self._hypothesis(best.branch.extend(tokens), len(self.stream) - 1, 0.0)]
        self.forwarded += len(tokens)
        self.stats.respelled += 1

    def _keep(self, candidates) -> None:
        """Keep the largest candidates (floor and cap), stepping the model for each kept child."""
        here = len(self.stream)
        total = sum(c[0] for c in candidates)
        candidates.sort(key=lambda c: -c[0])
        floor = self.prune * candidates[0][0]
        kept = [c for c in candidates if c[0] >= floor and c[0] > 0.0]
        if self.max_hypotheses is not None and len(kept) > self.max_hypotheses:
            kept = kept[: self.max_hypotheses]
            self.stats.capped_steps += 1
        dropped = sum(c[0] for c in candidates[len(kept) :]) / total  # `kept` is a prefix of the sorted list
        self.stats.pruned_mass = max(self.stats.pruned_mass, dropped)
        survivors = [h for _, kind, h, _ in kept if kind == "parent"]
        alive = {id(h) for h in survivors}
        uses = Counter(id(h) for _, kind, h, _ in kept if kind == "child")
        for _, kind, h, token in kept:
            if kind == "child":  # a parent's last use hands its cache over instead of copying it
                uses[id(h)] -= 1
                fork = id(h) in alive or uses[id(h)] > 0
                log_weight = h.log_weight + math.log(float(h.probs[self._rank[token]]))
                survivors.append(self._hypothesis(h.branch.extend([token], fork=fork), here, log_weight))
                self.forwarded += 1
        top = max(h.log_weight for h in survivors)
        for h in survivors:
            h.log_weight -= top
        self.hypotheses = survivors
        self.stats.max_hypotheses = max(self.stats.max_hypotheses, len(survivors))
