"""Predictors that learn while the codec codes, mixed with the language model's tables.

A frozen 135M model cannot remember what a document keeps repeating (its names, refrains, its own
vocabulary); the coder can, from the symbols it has already coded, which the decoder has decoded by then.
After Nacrith (Tacconelli, 2026, arXiv:2602.19626), which pairs the same SmolLM2-135M with online predictors:

* a **bias head**: one log-space bias per symbol, ``p(v) ∝ p_model(v) · exp(b_v)``, trained by online
  gradient descent on the log-loss of every coded symbol (gradient ``onehot(x) − p``);
* a **token n-gram model** (orders 0..``order``, Witten-Bell interpolation) over everything coded so far;
* a **shape n-gram model**: the same over the history with every number token read as one symbol, so a
  number that changes every time (a timestamp, an id, a size) no longer breaks the context of what follows
  it; the mass it gives "a number" is shared among number tokens as the biased model shares it;
* a **mixer**: ``(1 − λ − μ) · p_biased + λ · p_ngram + μ · p_shape``. Each mixing context (the pair of
  the two n-grams' context classes: longest order seen, how often, how peaked its counts are) keeps a
  posterior over a grid of candidate (λ, μ) pairs, updated by Bayes' rule on every coded symbol with a
  little fixed share (Herbster & Warmuth, 1998) so it can move again; it codes with the posterior mean, which
  *is* the Bayesian mixture of the candidates, since the mix is linear in (λ, μ). No step size to tune: it
  is never more than log2(candidates) bits behind the best fixed pair, per context.

Segments coded side by side share one learner: at each lockstep step it predicts every row from what all
rows coded at earlier steps, then learns their symbols in row order — the decoder replays exactly that.

Exactness: every probability the coder sees comes from `frequencies.table` (elementwise float64 operations
and exact integer sums); the biased distribution is normalised by a sum of integer-valued floats below 2^53,
exact in any order (so is the number tokens' share of it); the learner's own state changes only by
elementwise tensor operations, integer counts and Python float arithmetic in a fixed order — no float
reduction whose result could depend on threads.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy.codec.frequencies import table


@dataclass(frozen=True)
class Learning:
    """A learner's settings (part of the archive format: an archive's level fixes them)."""

    order: int = 4  # longest token n-gram context, in symbols
    shape_order: int = 6  # longest shape n-gram context
    bias_rate: float = 0.1  # step size of the bias head's gradient descent, per coded symbol
    bias_bound: float = 8.0  # |b_v| <= this (e^8 ~ 3000x): one surprising symbol cannot take over
    shares: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97)  # candidate values of λ and of μ
    model_floor: float = 0.02  # λ + μ <= 1 − this: the model always keeps a share
    model_prior: float = 0.5  # prior weight of λ = μ = 0 (the model alone); the other pairs share the rest
    forgetting: float = 0.001  # fixed share: each update hands this much weight back to every candidate evenly


NUMBER = -1  # the symbol every number token is read as by the shape model


class WittenBell:
    """Counts of what followed every context of 1..``order`` symbols, interpolated down the orders
    (Witten & Bell, 1991): a context seen ``n`` times with ``d`` distinct followers keeps ``n / (n + d)`` of
    the mass for them and passes the rest to the next shorter context."""

    def __init__(self, order: int):
        self.order = order
        self.counts: list[dict[tuple, dict[int, int]]] = [defaultdict(dict) for _ in range(order)]
        self.totals: list[dict[tuple, int]] = [defaultdict(int) for _ in range(order)]

    def contexts(self, history: list[int]) -> list[tuple]:
        """The history's last 1..order symbols, shortest first."""
        return [tuple(history[len(history) - k :]) for k in range(1, min(self.order, len(history)) + 1)]

    def predict(self, contexts: list[tuple]) -> tuple[float, dict[int, float], tuple]:
        """``(mass left for shorter contexts, {symbol: probability}, context class)``; the class is the
        longest order seen, how often (1, 2, 3+) and how peaked its counts are (three bands), or ``(0,)``."""
        mass, sparse = 1.0, {}
        context_class: tuple = (0,)
        for k, context in reversed(list(enumerate(contexts, start=1))):
            seen = self.totals[k - 1].get(context, 0)
            if not seen:
                continue
            followers = self.counts[k - 1][context]
            share = mass / (seen + len(followers))
            for symbol, count in followers.items():
                sparse[symbol] = sparse.get(symbol, 0.0) + share * count
            if context_class == (0,):
                peak = max(followers.values())
                confident = 0 if 2 * peak < seen else (1 if 10 * peak < 9 * seen else 2)
                context_class = (k, min(seen, 3), confident)
            mass = mass * len(followers) / (seen + len(followers))
        return mass, sparse, context_class

    def learn(self, contexts: list[tuple], symbol: int) -> None:
        for k, context in enumerate(contexts, start=1):
            followers = self.counts[k - 1][context]
            followers[symbol] = followers.get(symbol, 0) + 1
            self.totals[k - 1][context] += 1


class Learner:
    """Online bias head + token and shape n-gram models + mixer over an ``alphabet``-symbol table (see the
    module docstring); ``numbers``: the symbols the shape model reads as one (tokens spelled with digits only).

    ``tables(weights, histories)`` -> the integer tables to code each row with; ``learn(symbols)`` then takes
    the symbols those rows coded. Encoder and decoder call both with the same rows in the same order.
    """

    def __init__(self, alphabet: int, numbers: list[int] = (), settings: Learning = Learning()):
        self.alphabet, self.settings = alphabet, settings
        self.numbers = torch.tensor(sorted(numbers), dtype=torch.long)
        self.shape_of = {symbol: NUMBER for symbol in numbers}
        self.bias = torch.zeros(alphabet, dtype=torch.float64)
        self.unigram = torch.zeros(alphabet, dtype=torch.int64)  # order-0 counts, dense
        self.unigram_total = 0
        self.seen_symbols = 0  # distinct symbols among them
        self.tokens, self.shapes = WittenBell(settings.order), WittenBell(settings.shape_order)
        pairs = [(a, b) for a in settings.shares for b in settings.shares]
        self.candidates = [(a, b) for a, b in pairs if a + b <= 1.0 - settings.model_floor]
        rest = (1.0 - settings.model_prior) / (len(self.candidates) - 1)
        self.prior = [settings.model_prior if pair == (0.0, 0.0) else rest for pair in self.candidates]
        self.posteriors: dict[tuple, list[float]] = {}
        self._pending: tuple | None = None

    def _shape_contexts(self, history: list[int]) -> list[tuple]:
        tail = history[len(history) - self.settings.shape_order :]
        return self.shapes.contexts([self.shape_of.get(symbol, symbol) for symbol in tail])

    def _shares(self, key: tuple) -> tuple[float, float]:
        """λ and μ for a row of this mixing context: the candidates' average under their posterior."""
        weights = self.posteriors.get(key, self.prior)
        token = shape = 0.0
        for weight, (token_share, shape_share) in zip(weights, self.candidates):
            token += weight * token_share
            shape += weight * shape_share
        return token, shape

    def tables(self, weights: Tensor, histories: list[list[int]]) -> Tensor:
        """Integer tables ``(rows, alphabet)`` for rows whose model weights (float64, each row's largest 1,
        overwritten) and coded-so-far symbols are given."""
        biased = weights.mul_(torch.exp(self.bias))
        biased.div_(biased.amax(dim=-1, keepdim=True)).mul_(1 << 30).floor_()  # integers < 2^31 held in float64:
        numbers = biased[:, self.numbers]
        numbers.div_(numbers.sum(dim=-1, keepdim=True).clamp_(min=1.0))  # their sums (< 2^53) are exact
        biased.div_(biased.sum(dim=-1, keepdim=True))  # in any order
        token_contexts = [self.tokens.contexts(history) for history in histories]  # copied: callers append
        shape_contexts = [self._shape_contexts(history) for history in histories]
        token_predictions = [self.tokens.predict(contexts) for contexts in token_contexts]
        shape_predictions = [self.shapes.predict(contexts) for contexts in shape_contexts]
        classes = [(token[2], shape[2]) for token, shape in zip(token_predictions, shape_predictions)]
        shares = [self._shares(key) for key in classes]
        as_column = lambda values: torch.tensor(values, dtype=torch.float64)[:, None]
        # token n-gram: what the contexts left falls to the unigram counts, then to uniform
        unigram_total, seen = self.unigram_total, self.seen_symbols
        lefts = [mass for mass, _, _ in token_predictions]
        ngram = self.unigram.double()[None] * as_column(
            [left / (unigram_total + seen) if unigram_total else 0.0 for left in lefts])
        ngram.add_(as_column([(left * seen / (unigram_total + seen) if unigram_total else left) / self.alphabet
                              for left in lefts]))
        _scatter_add(ngram, [sparse for _, sparse, _ in token_predictions])
        # shape n-gram: what its contexts left falls to the token n-gram; "a number" is shared as the model does
        shape = ngram.mul(as_column([mass for mass, _, _ in shape_predictions]))
        number_shares = [sparse.pop(NUMBER, 0.0) for _, sparse, _ in shape_predictions]
        shape.index_add_(1, self.numbers, numbers.mul_(as_column(number_shares)))
        _scatter_add(shape, [sparse for _, sparse, _ in shape_predictions])
        mixed = biased.mul(as_column([1.0 - token - shape_share for token, shape_share in shares]))
        mixed.add_(ngram.mul(as_column([token for token, _ in shares])))
        mixed.add_(shape.mul(as_column([shape_share for _, shape_share in shares])))
        self._pending = (biased, ngram, shape, classes, token_contexts, shape_contexts)
        return table(mixed)

    def learn(self, symbols: list[int]) -> None:
        """Learn the symbols the rows of the last `tables` call coded (one per row, same order)."""
        biased, ngram, shape, classes, token_contexts, shape_contexts = self._pending
        s = self.settings
        for row, symbol in enumerate(symbols):
            p_model, p_ngram, p_shape = float(biased[row, symbol]), float(ngram[row, symbol]), float(shape[row, symbol])
            weights = self.posteriors.get(classes[row], self.prior)
            likelihoods = [(1.0 - a - b) * p_model + a * p_ngram + b * p_shape for a, b in self.candidates]
            updated = [weight * likelihood for weight, likelihood in zip(weights, likelihoods)]
            total, spread = sum(updated), s.forgetting / len(updated)  # a Python sum: fixed order
            self.posteriors[classes[row]] = [(1.0 - s.forgetting) * weight / total + spread for weight in updated]
        # bias head: b -= rate * p_biased row after row, then b[x] += rate per coded x
        for row in range(len(symbols)):
            self.bias.sub_(biased[row].mul(s.bias_rate))
        for symbol, times in sorted(Counter(symbols).items()):
            self.bias[symbol] += s.bias_rate * times
        self.bias.clamp_(-s.bias_bound, s.bias_bound)
        for symbol, tokens, shapes in zip(symbols, token_contexts, shape_contexts):
            self.tokens.learn(tokens, symbol)
            self.shapes.learn(shapes, self.shape_of.get(symbol, symbol))
            if not self.unigram[symbol]:
                self.seen_symbols += 1
            self.unigram[symbol] += 1
            self.unigram_total += 1
        self._pending = None


def _scatter_add(rows: Tensor, sparses: list[dict[int, float]]) -> None:
    """``rows[r, symbol] += p`` for every ``{symbol: p}`` of row ``r`` (each symbol once per row)."""
    index = [(row, symbol) for row, sparse in enumerate(sparses) for symbol in sparse]
    if index:
        row_index, columns = torch.tensor(index).T
        values = torch.tensor([p for sparse in sparses for p in sparse.values()], dtype=torch.float64)
        rows[row_index, columns] = rows[row_index, columns] + values


class ModelAlone:
    """The model's tables as they are: what `Learner` is measured against (and level 0 codes with)."""

    def tables(self, weights: Tensor, histories: list[list[int]]) -> Tensor:
        return table(weights, peaked=True)

    def learn(self, symbols: list[int]) -> None:
        pass
