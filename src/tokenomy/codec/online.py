"""Predictors that learn while the codec codes, mixed with the language model's tables.

A frozen 135M model cannot remember what a document keeps repeating (its names, refrains, its own
vocabulary); the coder can, from the symbols it has already coded, which the decoder has decoded by then.
After Nacrith (Tacconelli, 2026, arXiv:2602.19626), which pairs the same SmolLM2-135M with online predictors:

* a **bias head**: one log-space bias per symbol, ``p(v) ∝ p_model(v) · exp(b_v)``, trained by online
  gradient descent on the log-loss of every coded symbol (gradient ``onehot(x) − p``);
* a **token n-gram model** (orders 0..``order``, Witten-Bell interpolation) over everything coded so far;
* a **mixer**: ``(1 − λ) · p_biased + λ · p_ngram``, with one λ per context class (the longest order seen,
  how often, how peaked its counts are), each adapted by online gradient ascent on log p.

Segments coded side by side share one learner: at each lockstep step it predicts every row from what all
rows coded at earlier steps, then learns their symbols in row order — the decoder replays exactly that.

Exactness: every probability the coder sees comes from `frequencies.table` (elementwise float64 operations
and exact integer sums); the biased distribution is normalised by a sum of integer-valued floats below 2^53,
exact in any order; the learner's own state changes only by elementwise tensor operations, integer counts
and Python float arithmetic in a fixed order — no float reduction whose result could depend on threads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy.codec.frequencies import TOTAL, table


@dataclass(frozen=True)
class Learning:
    """A learner's settings (part of the archive format: an archive's level fixes them)."""

    order: int = 4  # longest n-gram context, in symbols
    bias_rate: float = 0.1  # step size of the bias head's gradient descent, per coded symbol
    bias_bound: float = 8.0  # |b_v| <= this (e^8 ~ 3000x): one surprising symbol cannot take over
    mix_rate: float = 0.0005  # step size of each context class's λ
    mix_start: float = 0.0  # λ of a context class never seen before: the model alone
    mix_max: float = 0.3


class Learner:
    """Online bias head + n-gram model + mixer over an ``alphabet``-symbol table (see the module docstring).

    ``tables(weights, histories)`` -> the integer tables to code each row with; ``learn(symbols)`` then takes
    the symbols those rows coded. Encoder and decoder call both with the same rows in the same order.
    """

    def __init__(self, alphabet: int, settings: Learning = Learning()):
        self.alphabet, self.settings = alphabet, settings
        self.bias = torch.zeros(alphabet, dtype=torch.float64)
        self.unigram = torch.zeros(alphabet, dtype=torch.int64)  # order-0 counts, dense
        self.unigram_total = 0
        self.seen_symbols = 0  # distinct symbols among them
        # orders 1..order: context -> {symbol: count}, and context -> count (index k - 1)
        self.counts: list[dict[tuple, dict[int, int]]] = [defaultdict(dict) for _ in range(settings.order)]
        self.totals: list[dict[tuple, int]] = [defaultdict(int) for _ in range(settings.order)]
        self.mix: dict[tuple, float] = {}
        self._pending: tuple | None = None

    def _contexts(self, history: list[int]) -> list[tuple]:
        """The history's last 1..order symbols, shortest first."""
        return [tuple(history[len(history) - k :]) for k in range(1, min(self.settings.order, len(history)) + 1)]

    def _ngram(self, contexts: list[tuple]) -> tuple[float, float, dict[int, float], tuple]:
        """The Witten-Bell n-gram distribution as ``(unigram_share, uniform_share, sparse, context_class)``:
        p(v) = unigram_count(v) · unigram_share + uniform_share / alphabet + sparse.get(v, 0)."""
        mass, sparse = 1.0, {}
        longest, total, peak = 0, 0, 0
        for k, context in reversed(list(enumerate(contexts, start=1))):
            seen = self.totals[k - 1].get(context, 0)
            if not seen:
                continue
            followers = self.counts[k - 1][context]
            share = mass / (seen + len(followers))
            for symbol, count in followers.items():
                sparse[symbol] = sparse.get(symbol, 0.0) + share * count
            if not longest:
                longest, total, peak = k, seen, max(followers.values())
            mass = mass * len(followers) / (seen + len(followers))
        unigram_share = 0.0
        if self.unigram_total:
            unigram_share = mass / (self.unigram_total + self.seen_symbols)
            mass = mass * self.seen_symbols / (self.unigram_total + self.seen_symbols)
        if longest:
            confident = 0 if 2 * peak < total else (1 if 10 * peak < 9 * total else 2)
            return unigram_share, mass, sparse, (longest, min(total, 3), confident)
        return unigram_share, mass, sparse, (0,)

    def tables(self, weights: Tensor, histories: list[list[int]]) -> Tensor:
        """Integer tables ``(rows, alphabet)`` for rows whose model weights (float64, each row's largest 1,
        overwritten) and coded-so-far symbols are given."""
        s = self.settings
        biased = weights.mul_(torch.exp(self.bias))
        biased.div_(biased.amax(dim=-1, keepdim=True)).mul_(1 << 30).floor_()  # integers < 2^31 held in float64:
        biased.div_(biased.sum(dim=-1, keepdim=True))  # their sum (< 2^53) is exact in any order
        contexts = [self._contexts(history) for history in histories]  # copied: callers append to histories
        ngrams = [self._ngram(row_contexts) for row_contexts in contexts]
        mixes = [self.mix.get(context_class, s.mix_start) for *_, context_class in ngrams]
        as_column = lambda values: torch.tensor(values, dtype=torch.float64)[:, None]  # noqa: E731
        ngram = self.unigram.double()[None] * as_column([u for u, *_ in ngrams])
        ngram.add_(as_column([uniform / self.alphabet for _, uniform, *_ in ngrams]))
        rows = [row for row, (_, _, sparse, _) in enumerate(ngrams) for _ in sparse]
        if rows:
            columns = torch.tensor([symbol for _, _, sparse, _ in ngrams for symbol in sparse])
            values = torch.tensor([p for _, _, sparse, _ in ngrams for p in sparse.values()], dtype=torch.float64)
            ngram[rows, columns] = ngram[rows, columns] + values
        mixed = biased.mul(as_column([1.0 - share for share in mixes]))
        mixed.add_(ngram.mul(as_column(mixes)))
        self._pending = (biased, ngram, [c for *_, c in ngrams], mixes, contexts)
        return table(mixed)

    def learn(self, symbols: list[int]) -> None:
        """Learn the symbols the rows of the last `tables` call coded (one per row, same order)."""
        biased, ngrams, classes, mixes, contexts = self._pending
        s = self.settings
        for row, symbol in enumerate(symbols):
            p_model = float(biased[row, symbol])
            share = mixes[row]
            p_ngram = float(ngrams[row, symbol])
            p_mixed = (1.0 - share) * p_model + share * p_ngram
            current = self.mix.get(classes[row], s.mix_start)
            self.mix[classes[row]] = min(s.mix_max, max(0.0, current + s.mix_rate * (p_ngram - p_model) / p_mixed))
        # bias head: b -= rate * p_biased row after row, then b[x] += rate per coded x
        for row in range(len(symbols)):
            self.bias.sub_(biased[row].mul(s.bias_rate))
        for symbol, times in sorted(Counter(symbols).items()):
            self.bias[symbol] += s.bias_rate * times
        self.bias.clamp_(-s.bias_bound, s.bias_bound)
        for symbol, row_contexts in zip(symbols, contexts):
            for k, context in enumerate(row_contexts, start=1):
                followers = self.counts[k - 1][context]
                followers[symbol] = followers.get(symbol, 0) + 1
                self.totals[k - 1][context] += 1
            if not self.unigram[symbol]:
                self.seen_symbols += 1
            self.unigram[symbol] += 1
            self.unigram_total += 1
        self._pending = None


class ModelAlone:
    """The model's tables as they are: what `Learner` is measured against (and level 0 codes with)."""

    def tables(self, weights: Tensor, histories: list[list[int]]) -> Tensor:
        return table(weights, peaked=True)

    def learn(self, symbols: list[int]) -> None:
        pass
