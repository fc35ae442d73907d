"""A bit-exact binary arithmetic coder over integer frequency tables.

Classic 32-bit integer arithmetic coding (Witten, Neal & Cleary, 1987) with carry-free "pending bits": the
encoder narrows ``[low, high]`` by each symbol's slice of the cumulative frequency table and emits a bit
whenever the leading bit of both ends agrees. Everything is integer arithmetic, so the decoder reproduces
the encoder exactly given the same tables. ``bits_if_finished`` gives the exact size the stream would have
if it ended now, which is what Equal-Info Windows need to decide whether one more token fits.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISION = 32
_FULL = (1 << PRECISION) - 1
_HALF = 1 << (PRECISION - 1)
_QUARTER = 1 << (PRECISION - 2)
MAX_TOTAL = _QUARTER  # frequency totals up to this keep every symbol's slice non-empty


@dataclass
class _State:
    low: int
    high: int
    pending: int
    length: int


class Encoder:
    """Encodes symbols given as (cumulative low, cumulative high, total) slices; ``bits`` grows as it goes."""

    def __init__(self):
        self.low, self.high, self.pending = 0, _FULL, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        if self.pending:
            self.bits.extend([1 - bit] * self.pending)
            self.pending = 0

    def encode(self, cum_low: int, cum_high: int, total: int) -> None:
        if not 0 <= cum_low < cum_high <= total <= MAX_TOTAL:
            raise ValueError(f"bad symbol slice [{cum_low}, {cum_high}) of {total}")
        span = self.high - self.low + 1
        self.high = self.low + span * cum_high // total - 1
        self.low = self.low + span * cum_low // total
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < _HALF + _QUARTER:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low = 2 * self.low
            self.high = 2 * self.high + 1

    def bits_if_finished(self) -> int:
        """Exact length of the stream if `finish` were called now."""
        return len(self.bits) + self.pending + 2

    def snapshot(self) -> _State:
        return _State(self.low, self.high, self.pending, len(self.bits))

    def restore(self, state: _State) -> None:
        self.low, self.high, self.pending = state.low, state.high, state.pending
        del self.bits[state.length :]

    def finish(self) -> list[int]:
        """Terminate: two more bits (plus pending ones) pin a value inside the final interval. Any bits
        appended afterwards (zero padding) decode the same symbols."""
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        return self.bits


class Decoder:
    """Decodes from a sequence of bits (read as zeros past its end)."""

    def __init__(self, bits):
        self.bits = bits
        self.position = 0
        self.low, self.high = 0, _FULL
        self.value = 0
        for _ in range(PRECISION):
            self.value = (self.value << 1) | self._next_bit()

    def _next_bit(self) -> int:
        bit = self.bits[self.position] if self.position < len(self.bits) else 0
        self.position += 1
        return bit

    def target(self, total: int) -> int:
        """The cumulative frequency the next symbol's slice must contain."""
        span = self.high - self.low + 1
        return ((self.value - self.low + 1) * total - 1) // span

    def consume(self, cum_low: int, cum_high: int, total: int) -> None:
        """Advance past the symbol whose slice is [cum_low, cum_high)."""
        span = self.high - self.low + 1
        self.high = self.low + span * cum_high // total - 1
        self.low = self.low + span * cum_low // total
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.low -= _HALF
                self.high -= _HALF
                self.value -= _HALF
            elif self.low >= _QUARTER and self.high < _HALF + _QUARTER:
                self.low -= _QUARTER
                self.high -= _QUARTER
                self.value -= _QUARTER
            else:
                break
            self.low = 2 * self.low
            self.high = 2 * self.high + 1
            self.value = (self.value << 1) | self._next_bit()


def pack_bits(bits: list[int]) -> bytes:
    """Bits (most significant first) to bytes, zero-padded to a whole byte."""
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, start: int = 0, count: int | None = None) -> list[int]:
    """``count`` bits of ``data`` starting at bit ``start`` (all remaining when None)."""
    end = len(data) * 8 if count is None else start + count
    return [(data[i >> 3] >> (7 - (i & 7))) & 1 for i in range(start, end)]
