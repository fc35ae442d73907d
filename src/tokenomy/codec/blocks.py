"""Not everything is text: which stretches of the input go through the model, and a classical coder for the rest.

The input is read in `CHUNK`-byte chunks; a chunk is *text* when at most 1% of its bytes are control characters
or not valid UTF-8 (a character cut at either end is allowed), so a stray byte keeps a text file text. Runs of
text chunks are coded by the model (all of them as one token stream); every other run by whichever of stored /
zlib / bz2 / xz is smallest for it. Incompressible runs (random, already compressed) are recognised by a fast
zlib pass that saves < 1% and are stored at once, so they cost memory bandwidth, not model steps.
"""

from __future__ import annotations

import bz2
import codecs
import lzma
import re
import zlib
from dataclasses import dataclass

CHUNK = 1024
MODEL, STORED, ZLIB, BZIP2, XZ = range(5)
NAMES = {MODEL: "model", STORED: "stored", ZLIB: "zlib", BZIP2: "bzip2", XZ: "xz"}
_CONTROL = bytes(b for b in range(32) if b not in b"\t\n\r\f") + b"\x7f"
_ESCAPED = re.compile("[\udc80-\udcff]")
_CLASSIC = {
    ZLIB: (lambda d: zlib.compress(d, 9), zlib.decompress),
    BZIP2: (lambda d: bz2.compress(d, 9), bz2.decompress),
    XZ: (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
}


@dataclass
class Block:
    """``length`` bytes of the input coded by ``coder`` (``MODEL`` or a classical coder's number);
    ``payload`` is the classical coder's output (empty for model blocks, whose bits are in the unit streams)."""

    coder: int
    length: int
    payload: bytes = b""


def is_text(chunk: bytes) -> bool:
    """Whether ``chunk`` reads as text: at most 1% of its bytes are control characters (tab, newlines and form
    feed excepted) or invalid UTF-8; a character cut at either end of the chunk is not counted."""
    budget = len(chunk) // 100 - sum(chunk.count(c) for c in _CONTROL)
    if budget < 0:
        return False  # most binary data stops here, before any decoding
    head = 0
    while head < min(3, len(chunk)) and 0x80 <= chunk[head] < 0xC0:
        head += 1  # continuation bytes of a character that began in the previous chunk
    decoded = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode(chunk[head:], final=False)
    return len(_ESCAPED.findall(decoded)) <= budget  # one escape per byte that is not UTF-8


def split(data: bytes) -> list[tuple[bool, int, int]]:
    """Maximal runs of text / non-text chunks: ``(is_text, start, end)`` covering ``data`` in order."""
    runs: list[tuple[bool, int, int]] = []
    for start in range(0, len(data), CHUNK):
        end = min(start + CHUNK, len(data))
        text = is_text(data[start:end])
        if runs and runs[-1][0] == text:
            runs[-1] = (text, runs[-1][1], end)
        else:
            runs.append((text, start, end))
    return runs


def classic(data: bytes) -> Block:
    """The smallest classical coding of ``data``; incompressible data is stored after one fast zlib pass."""
    if len(zlib.compress(data, 1)) >= 0.99 * len(data):
        return Block(STORED, len(data), data)
    best = Block(STORED, len(data), data)
    for coder, (encode, _) in _CLASSIC.items():
        payload = encode(data)
        if len(payload) < len(best.payload):
            best = Block(coder, len(data), payload)
    return best


def classic_decode(block: Block) -> bytes:
    """The bytes of a classically coded block (`TokenomyError` if its payload is damaged)."""
    from tokenomy._validation import TokenomyError

    if block.coder == STORED:
        data = block.payload
    else:
        try:
            data = _CLASSIC[block.coder][1](block.payload)
        except (zlib.error, OSError, lzma.LZMAError, ValueError, EOFError) as err:
            raise TokenomyError(f"corrupted archive: a {NAMES[block.coder]} block does not decode ({err})") from err
    if len(data) != block.length:
        raise TokenomyError("corrupted archive: a block decodes to another length than recorded")
    return data
