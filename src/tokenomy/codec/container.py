"""The .tkz container: everything needed to decode, and to refuse decoding what would come out wrong.

Layout of version 3 (integers are LEB128 varints unless sized)::

    b"TKZ" version:u8
    model name (varint length + UTF-8) | model fingerprint: 8 bytes | arithmetic fingerprint: 8 bytes
    level | lanes | window_bits | segment_tokens | original size | SHA-256 of the original: 32 bytes
    block count | unit count | table length + zlib(table)
        table = per block: coder, length, payload length; then per unit: token count, stream bits
    payload length + payload                      units' bit streams, back to back
    classical payloads length + the classically coded blocks' payloads, back to back
    CRC-32 of everything before it: 4 bytes

A *block* is a stretch of the input (`blocks`): model blocks' bytes, concatenated, are one token stream cut
into *units*; a unit is an Equal-Info Window (exactly ``window_bits`` bits) or a whole segment when
``window_bits`` is 0. ``lanes``: how many segments were coded side by side, which a learning level's
decoder must replay. Version 2 (one model block, level 0) still reads.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

from tokenomy._validation import TokenomyError
from tokenomy.codec.blocks import MODEL, NAMES, Block

MAGIC = b"TKZ"
VERSION = 3  # 3: blocks, levels; 2: the engine computes attention in padded blocks on oneDNN linears
READS = (2, 3)


@dataclass
class Archive:
    model: str
    model_fingerprint: bytes  # 8 bytes: weights + tokenizer
    arithmetic_fingerprint: bytes  # 8 bytes: how this machine's float arithmetic came out on a probe
    window_bits: int
    segment_tokens: int
    original_size: int
    sha256: bytes
    token_counts: list[int] = field(default_factory=list)
    stream_bits: list[int] = field(default_factory=list)
    payload: bytes = b""
    level: int = 0
    lanes: int = 0
    blocks: list[Block] = field(default_factory=list)

    @property
    def units(self) -> int:
        return len(self.token_counts)

    def unit_offsets(self) -> list[int]:
        """Bit offset of each unit's stream in the payload."""
        offsets, total = [], 0
        for bits in self.stream_bits:
            offsets.append(total)
            total += bits
        return offsets


def _varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.position = data, 0

    def take(self, n: int) -> bytes:
        if self.position + n > len(self.data):
            raise TokenomyError("truncated archive: it ends before its header/tables/payload do")
        chunk = self.data[self.position : self.position + n]
        self.position += n
        return chunk

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise TokenomyError("corrupted archive: a length field is out of range")


def dumps(archive: Archive) -> bytes:
    name = archive.model.encode("utf-8")
    table = b"".join(_varint(b.coder) + _varint(b.length) + _varint(len(b.payload)) for b in archive.blocks)
    table += b"".join(_varint(c) + _varint(b) for c, b in zip(archive.token_counts, archive.stream_bits))
    packed = zlib.compress(table, 9)
    classical = b"".join(b.payload for b in archive.blocks)
    body = b"".join([
        MAGIC, bytes([VERSION]),
        _varint(len(name)), name, archive.model_fingerprint, archive.arithmetic_fingerprint,
        _varint(archive.level), _varint(archive.lanes),
        _varint(archive.window_bits), _varint(archive.segment_tokens), _varint(archive.original_size),
        archive.sha256,
        _varint(len(archive.blocks)), _varint(archive.units), _varint(len(packed)), packed,
        _varint(len(archive.payload)), archive.payload, _varint(len(classical)), classical,
    ])
    return body + zlib.crc32(body).to_bytes(4, "big")


def loads(data: bytes) -> Archive:
    """Parse and verify an archive (this version or an older one it names in `READS`); any damage is one
    clear TokenomyError."""
    if len(data) < 4 or data[:3] != MAGIC:
        raise TokenomyError("not a tokenomy archive (bad magic bytes)")
    version = data[3]
    if version not in READS:
        raise TokenomyError(f"archive format version {version} is not supported (this tokenomy reads versions "
                            f"{', '.join(map(str, READS))})")
    if len(data) < 8 or zlib.crc32(data[:-4]).to_bytes(4, "big") != data[-4:]:
        raise TokenomyError("corrupted or truncated archive (checksum mismatch)")
    reader = _Reader(data[:-4])
    reader.take(4)
    name = reader.take(reader.varint()).decode("utf-8", errors="replace")
    model_fp, arith_fp = reader.take(8), reader.take(8)
    level, lanes = (reader.varint(), reader.varint()) if version >= 3 else (0, 0)
    window_bits, segment_tokens, size = reader.varint(), reader.varint(), reader.varint()
    sha = reader.take(32)
    blocks = reader.varint() if version >= 3 else None
    units = reader.varint()
    try:
        table = zlib.decompress(reader.take(reader.varint()))
    except zlib.error as err:
        raise TokenomyError("corrupted archive: its window table does not decompress") from err
    table_reader = _Reader(table)
    shapes = [(table_reader.varint(), table_reader.varint(), table_reader.varint()) for _ in range(blocks or 0)]
    counts, bits = [], []
    for _ in range(units):
        counts.append(table_reader.varint())
        bits.append(table_reader.varint())
    payload = reader.take(reader.varint())
    if sum(bits) > len(payload) * 8:
        raise TokenomyError("corrupted archive: the window table claims more bits than the payload holds")
    if blocks is None:  # version 2: the whole input is one model block
        parts = [Block(MODEL, size)] if size else []
    else:
        classical = _Reader(reader.take(reader.varint()))
        if any(coder not in NAMES for coder, _, _ in shapes) or sum(n for _, _, n in shapes) != len(classical.data):
            raise TokenomyError("corrupted archive: its block table does not match its payloads")
        parts = [Block(coder, length, classical.take(n)) for coder, length, n in shapes]
    if sum(b.length for b in parts) != size:
        raise TokenomyError("corrupted archive: its blocks do not add up to the original size")
    return Archive(name, model_fp, arith_fp, window_bits, segment_tokens, size, sha, counts, bits, payload,
                   level, lanes, parts)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
