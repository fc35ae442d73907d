"""The .tkz container: everything needed to decode, and to refuse decoding what would come out wrong.

Layout (integers are LEB128 varints unless sized)::

    b"TKZ" version:u8
    model name (varint length + UTF-8) | model fingerprint: 8 bytes | arithmetic fingerprint: 8 bytes
    window_bits | segment_tokens | original size | SHA-256 of the original: 32 bytes
    unit count | table length + zlib(table)      table = per unit: token count, stream bits
    payload length + payload                      units' bit streams, back to back
    CRC-32 of everything before it: 4 bytes

A *unit* is what decodes on its own: an Equal-Info Window (exactly ``window_bits`` bits), or a whole
segment when ``window_bits`` is 0.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

from tokenomy._validation import TokenomyError

MAGIC = b"TKZ"
VERSION = 2  # 2: the engine computes attention in padded blocks on oneDNN linears (other float results)


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
    table = b"".join(_varint(c) + _varint(b) for c, b in zip(archive.token_counts, archive.stream_bits))
    packed = zlib.compress(table, 9)
    body = b"".join([
        MAGIC, bytes([VERSION]),
        _varint(len(name)), name, archive.model_fingerprint, archive.arithmetic_fingerprint,
        _varint(archive.window_bits), _varint(archive.segment_tokens), _varint(archive.original_size),
        archive.sha256,
        _varint(archive.units), _varint(len(packed)), packed,
        _varint(len(archive.payload)), archive.payload,
    ])
    return body + zlib.crc32(body).to_bytes(4, "big")


def loads(data: bytes) -> Archive:
    """Parse and verify an archive; any damage is one clear TokenomyError."""
    if len(data) < 4 or data[:3] != MAGIC:
        raise TokenomyError("not a tokenomy archive (bad magic bytes)")
    if data[3] != VERSION:
        raise TokenomyError(f"archive format version {data[3]} is not supported (this tokenomy reads {VERSION})")
    if len(data) < 8 or zlib.crc32(data[:-4]).to_bytes(4, "big") != data[-4:]:
        raise TokenomyError("corrupted or truncated archive (checksum mismatch)")
    reader = _Reader(data[:-4])
    reader.take(4)
    name = reader.take(reader.varint()).decode("utf-8", errors="replace")
    model_fp, arith_fp = reader.take(8), reader.take(8)
    window_bits, segment_tokens, size = reader.varint(), reader.varint(), reader.varint()
    sha = reader.take(32)
    units = reader.varint()
    try:
        table = zlib.decompress(reader.take(reader.varint()))
    except zlib.error as err:
        raise TokenomyError("corrupted archive: its window table does not decompress") from err
    table_reader = _Reader(table)
    counts, bits = [], []
    for _ in range(units):
        counts.append(table_reader.varint())
        bits.append(table_reader.varint())
    payload = reader.take(reader.varint())
    if sum(bits) > len(payload) * 8:
        raise TokenomyError("corrupted archive: the window table claims more bits than the payload holds")
    return Archive(name, model_fp, arith_fp, window_bits, segment_tokens, size, sha, counts, bits, payload)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
