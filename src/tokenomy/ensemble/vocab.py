"""What each token of a model spells, indexed for byte-level questions.

`Vocabulary` sorts a model's text tokens by their bytes so that all tokens starting with a byte string
form one contiguous range (found by binary search), and keeps a [depth, token] table of the byte each
sorted token has at each depth. Tokens that spell no text (special, control and unused tokens) sort
first with an empty spelling; generation treats them all as "end of text" (symbol ``END``).
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from tokenomy._validation import TokenomyError
from tokenomy.codec.tokens import ByteTokenizer

END = 256  # the symbol after the 256 byte values: the model emitted a non-text token
SYMBOLS = 257


class Vocabulary:
    """A model's tokens as byte strings: prefix ranges, exact look-up and per-depth next bytes."""

    def __init__(self, tokenizer, vocab_size: int):
        self.bytes_tokenizer = ByteTokenizer(tokenizer, vocab_size)
        spelled = list(self.bytes_tokenizer.symbol_bytes[:vocab_size])
        special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        special |= set(tokenizer.all_special_ids)
        for index in special:
            if index < vocab_size:
                spelled[index] = b""
        self.size = vocab_size
        self.spelled = spelled
        self.order = torch.tensor(sorted(range(vocab_size), key=spelled.__getitem__), dtype=torch.long)
        self.sorted_bytes = [spelled[i] for i in self.order.tolist()]
        self.text_start = bisect.bisect_right(self.sorted_bytes, b"")  # sorted positions before it spell nothing
        self.next_byte = torch.from_numpy(_byte_table(self.sorted_bytes))
        self.exact: dict[bytes, list[int]] = {}
        for index, value in enumerate(spelled):
            if value:
                self.exact.setdefault(value, []).append(index)

    @property
    def max_token_bytes(self) -> int:
        return self.next_byte.shape[0] - 1

    def prefix_range(self, prefix: bytes) -> tuple[int, int]:
        """Sorted positions [lo, hi) of the text tokens whose bytes start with ``prefix``."""
        if not prefix:
            return self.text_start, self.size
        lo = bisect.bisect_left(self.sorted_bytes, prefix, lo=self.text_start)
        hi = bisect.bisect_left(self.sorted_bytes, _successor(prefix), lo=lo) if _successor(prefix) else self.size
        return lo, hi

    @staticmethod
    def start_ids(tokenizer) -> list[int]:
        """The tokens the tokenizer puts before any text (e.g. BOS)."""
        return list(tokenizer("", add_special_tokens=True)["input_ids"])

    def prompt_ids(self, tokenizer, data: bytes) -> list[int]:
        """The model's start tokens then the tokens spelling ``data``."""
        ids = self.start_ids(tokenizer) + self.encode(data)
        if not ids:
            raise TokenomyError("empty prompt: this model has no start-of-text token to condition on")
        if any(i >= self.size for i in ids):
            raise TokenomyError("the prompt has bytes this model's vocabulary cannot spell")
        return ids

    def encode(self, data: bytes) -> list[int]:
        """Token ids spelling exactly ``data`` (the tokenizer's own split; byte pieces where it has no other)."""
        return self.bytes_tokenizer.encode(data)


def _byte_table(spellings: list[bytes]) -> np.ndarray:
    """``[depth, i]``: the byte ``spellings[i]`` has at ``depth``, or END past its end (int64)."""
    lengths = np.fromiter(map(len, spellings), dtype=np.int64, count=len(spellings))
    table = np.full((int(lengths.max(initial=0)) + 1, len(spellings)), END, dtype=np.int64)
    column = np.repeat(np.arange(len(spellings)), lengths)
    depth = np.arange(len(column)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    table[depth, column] = np.frombuffer(b"".join(spellings), dtype=np.uint8)
    return table


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with ``prefix`` (None: no such string)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])
