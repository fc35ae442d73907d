"""Lossless bytes <-> symbols for any HF tokenizer: the model's tokens plus 256 raw-byte escapes.

Every token id maps to the exact bytes it stands for (byte-level BPE via GPT-2's byte alphabet;
SentencePiece via "▁" for space and ``<0xNN>`` byte pieces). Valid UTF-8 text goes through the tokenizer
(special-token strings are treated as text); invalid UTF-8, and any stretch the tokenizer would not
reproduce exactly, is spelled byte by byte — with the vocabulary's single-byte token where it has one,
else with an escape symbol (``vocab + byte``; SmolLM2's vocabulary, for one, lacks 21 byte values). The
model never predicts escapes; the coder gives them the smallest frequency. `encode` checks its own
output, so ``decode(encode(data)) == data`` for every byte string.
"""

from __future__ import annotations

import re
from functools import lru_cache


_CHUNK = 1 << 16  # characters per tokenizer call: bounds BPE's cost on huge lines
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100..."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, shift = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shift)] = b
            shift += 1
    return chars


def _uses_byte_level(backend) -> bool:
    """Whether the tokenizer writes bytes with GPT-2's alphabet. Reads only its pre-tokenizer's and decoder's
    settings: serialising the whole tokenizer (vocabulary and merges) costs seconds on a 262k vocabulary."""
    parts = (backend.pre_tokenizer, backend.decoder)
    return any(part is not None and '"ByteLevel"' in part.__getstate__().decode("utf-8") for part in parts)


class ByteTokenizer:
    """Bytes <-> symbols through ``tokenizer``; symbols below ``vocab`` (the model's logits) are tokens,
    ``vocab + b`` is the raw byte ``b``."""

    def __init__(self, tokenizer, vocab: int):
        self.tokenizer = tokenizer
        self.vocab = vocab
        byte_level = _uses_byte_level(tokenizer.backend_tokenizer)
        pieces = tokenizer.get_vocab()
        table: list[bytes] = [b""] * vocab + [bytes([b]) for b in range(256)]
        to_byte = _gpt2_unicode_to_byte()
        for piece, index in pieces.items():
            if index >= vocab:
                continue  # tokens the model has no logits for are never used
            match = _BYTE_PIECE.match(piece)
            if match:
                table[index] = bytes([int(match.group(1), 16)])
            elif byte_level and all(c in to_byte for c in piece):
                table[index] = bytes(to_byte[c] for c in piece)
            else:
                table[index] = piece.replace("\u2581", " ").encode("utf-8")
        self.symbol_bytes = table
        special = set(tokenizer.all_special_ids)
        self._byte_symbol = [vocab + b for b in range(256)]
        for index in reversed(range(vocab)):  # prefer the lowest id spelling each byte
            value = table[index]
            if len(value) == 1 and index not in special:
                self._byte_symbol[value[0]] = index

    @property
    def alphabet(self) -> int:
        """Number of symbols: the model's tokens, then the 256 byte escapes."""
        return self.vocab + 256

    def is_escape(self, symbol: int) -> bool:
        return symbol >= self.vocab

    def _spell(self, data: bytes) -> list[int]:
        return [self._byte_symbol[b] for b in data]

    def _text(self, text: str) -> list[int]:
        ids = []
        for start in range(0, len(text), _CHUNK):
            piece = text[start : start + _CHUNK]
            got = self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            raw = piece.encode("utf-8")
            usable = all(i < self.vocab for i in got) and self.decode(got) == raw
            ids.extend(got if usable else self._spell(raw))
        return ids

    def encode(self, data: bytes) -> list[int]:
        """Symbols whose bytes concatenate to exactly ``data``."""
        ids: list[int] = []
        view = memoryview(data)
        position = 0
        while position < len(data):
            try:
                ids.extend(self._text(str(view[position:], "utf-8")))
                break
            except UnicodeDecodeError as err:
                good_end = position + err.start
                if good_end > position:
                    ids.extend(self._text(str(view[position:good_end], "utf-8")))
                ids.extend(self._spell(data[good_end : position + err.end]))
                position += err.end
        return ids

    def decode(self, ids) -> bytes:
        table = self.symbol_bytes
        return b"".join(table[i] for i in ids)
