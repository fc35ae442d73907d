"""Putting models with different tokenizers on one support, step by step.

- `ByteAlignment` ("bytes"): every model becomes an exact next-byte model (`ByteLevelLM`); the shared
  support is the 256 bytes plus END. Exact, one byte per step.
- `UnionAlignment` ("union", the baseline the byte-level and CoRE papers compare against): each model's
  tokens are mapped by the string they spell into the union of all vocabularies; the chosen string is
  appended to every model — as its own token when its vocabulary has that string, else as the
  tokenizer's split of it. Cheap (one token per step), but a string one model spells in one token and
  another in two gets two unrelated entries: the misalignment CoRE's token-level filter targets.
- `TokenAlignment`: one model on its own vocabulary — plain greedy/sampled decoding, the single-model
  reference.
All share `start(prompt)`, `distributions()` -> [models, symbols], `advance(symbol)`, `spell(symbol)`,
and `parallel`, which steps their models side by side.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from tokenomy._validation import TokenomyError
from tokenomy.ensemble.bytelevel import MAX_HYPOTHESES, PRUNE, ByteLevelLM, ByteStats
from tokenomy.ensemble.lm import Branch
from tokenomy.ensemble.vocab import END, Vocabulary

ALIGNMENTS = ("bytes", "union")


class Parallel:
    """Runs one call per model side by side: a thread per model, one intra-op thread each (inside
    ``threads()``). A one-token step is bound by per-operator overhead rather than arithmetic, so it barely
    slows on one thread, and two models stepping side by side finish sooner than one after the other."""

    def __init__(self, models: int):
        self.pool = ThreadPoolExecutor(models, thread_name_prefix="tokenomy-ensemble") if models > 1 else None

    def map(self, call: Callable, items: Sequence) -> list:
        return list(self.pool.map(call, items)) if self.pool else [call(item) for item in items]

    @contextmanager
    def threads(self) -> Iterator[None]:
        """One intra-op thread per model while decoding (restored after) when models run side by side."""
        if self.pool is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class ByteAlignment:
    end = END

    def __init__(self, members, *, max_hypotheses=MAX_HYPOTHESES, prune=PRUNE, backoff=1):
        self.models = [ByteLevelLM(model, tok, max_hypotheses=max_hypotheses, prune=prune, backoff=backoff,
                                   vocabulary=vocab) for model, tok, vocab in members]
        self.parallel = Parallel(len(self.models))

    def start(self, prompt: bytes) -> None:
        self.parallel.map(lambda m: m.start(prompt), self.models)

    def distributions(self) -> torch.Tensor:
        return torch.stack(self.parallel.map(ByteLevelLM.distribution, self.models))

    def advance(self, symbol: int) -> None:
        self.parallel.map(lambda m: m.advance(symbol), self.models)

    def spell(self, symbol: int) -> bytes:
        return bytes([symbol])

    @property
    def stats(self) -> list[ByteStats]:
        return [m.stats for m in self.models]

    @property
    def forwarded(self) -> int:
        return sum(m.forwarded for m in self.models)


class _TokenModel:
    """One model decoding its own tokens, with a prefix-shared cache."""

    def __init__(self, model, tokenizer, vocabulary: Vocabulary):
        self.model, self.tokenizer, self.vocabulary = model, tokenizer, vocabulary
        self.forwarded = 0

    def start(self, prompt: bytes) -> None:
        ids = self.vocabulary.prompt_ids(self.tokenizer, prompt)
        self.branch = Branch.prefill(self.model, ids)
        self.forwarded += len(ids)

    def append(self, tokens: list[int]) -> None:
        self.branch.extend(tokens)
        self.forwarded += len(tokens)

    @property
    def probs(self) -> torch.Tensor:
        return self.branch.probs


class TokenAlignment:
    """A single model on its own vocabulary (non-text tokens end the text)."""

    def __init__(self, member):
        model, tok, vocab = member
        self.member = _TokenModel(model, tok, vocab)
        self.parallel = Parallel(1)
        self.end = vocab.size  # one past the vocabulary
        self._text = torch.tensor([bool(b) for b in vocab.spelled])

    def start(self, prompt: bytes) -> None:
        self.member.start(prompt)

    def distributions(self) -> torch.Tensor:
        probs = self.member.probs
        out = torch.cat([torch.where(self._text, probs, 0.0), probs[~self._text].sum().reshape(1)])
        return out[None]

    def advance(self, symbol: int) -> None:
        self.member.append([symbol])

    def spell(self, symbol: int) -> bytes:
        return self.member.vocabulary.spelled[symbol]

    @property
    def forwarded(self) -> int:
        return self.member.forwarded


class UnionAlignment:
    """Models on the union of their vocabularies, keyed by the bytes each token spells."""

    def __init__(self, members):
        self.members = [_TokenModel(model, tok, vocab) for model, tok, vocab in members]
        strings: dict[bytes, int] = {}
        self.index = []
        for _, _, vocab in members:
            ids = [strings.setdefault(b, len(strings)) if b else -1 for b in vocab.spelled]
            self.index.append(ids)
        self.end = len(strings)
        self.index = [torch.tensor([self.end if i < 0 else i for i in ids]) for ids in self.index]
        self.strings = list(strings)
        self.size = self.end + 1
        self.parallel = Parallel(len(self.members))

    def start(self, prompt: bytes) -> None:
        self.parallel.map(lambda m: m.start(prompt), self.members)

    def distributions(self) -> torch.Tensor:
        out = torch.zeros(len(self.members), self.size, dtype=torch.float64)
        for row, (m, index) in enumerate(zip(self.members, self.index)):
            out[row].scatter_add_(0, index, m.probs)
        return out

    def advance(self, symbol: int) -> None:
        spelled = self.strings[symbol]

        def append(m: _TokenModel) -> None:
            own = m.vocabulary.exact.get(spelled)
            tokens = [min(own)] if own else m.vocabulary.encode(spelled)
            if any(t >= m.vocabulary.size for t in tokens):
                raise TokenomyError(f"a model's vocabulary cannot spell {spelled!r}")
            m.append(tokens)

        self.parallel.map(append, self.members)

    def spell(self, symbol: int) -> bytes:
        return self.strings[symbol]

    @property
    def forwarded(self) -> int:
        return sum(m.forwarded for m in self.members)
