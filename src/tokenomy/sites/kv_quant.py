"""Cache entries stored quantized: each key or value vector becomes one row of bytes.

Asymmetric integer quantization per token, in groups of ``group`` channels (the per-token, grouped variant
the KIVI paper compares against: Liu et al., 2024, arXiv:2402.02750), each group with its own float16 scale
and minimum. Because every entry is quantized on its own, a quantized entry is just a row of ``width`` bytes:
the cache layers gather, concatenate, pack and evict rows exactly as they do float vectors, and tokens
appended while decoding are quantized as they arrive. Attention reads the rows back as floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError

BITS = (2, 4, 8)


@dataclass(frozen=True)
class EntryQuantizer:
    """``bits`` per channel (2, 4 or 8); ``group`` channels share a scale and a minimum (the whole vector
    when its size is not a multiple of ``group``)."""

    bits: int
    group: int = 32

    def __post_init__(self):
        if self.bits not in BITS:
            raise TokenomyError(f"bits must be one of {', '.join(map(str, BITS))} (or 16: not quantized), "
                                f"got {self.bits!r}")

    def _groups(self, channels: int) -> int:
        return self.group if channels % self.group == 0 else channels

    def width(self, channels: int) -> int:
        """Bytes per stored vector of ``channels`` values."""
        return channels * self.bits // 8 + 4 * (channels // self._groups(channels))

    def encode(self, x: Tensor) -> Tensor:
        """``(..., channels)`` floats -> ``(..., width)`` uint8 rows."""
        channels = x.shape[-1]
        size = self._groups(channels)
        grouped = x.float().reshape(*x.shape[:-1], channels // size, size)
        low = grouped.amin(-1, keepdim=True).half()
        scale = ((grouped.amax(-1, keepdim=True) - low.float()) / (2**self.bits - 1)).half()
        codes = ((grouped - low.float()) / scale.float().clamp_min(1e-8)).round().clamp(0, 2**self.bits - 1)
        per_byte = 8 // self.bits
        codes = codes.to(torch.uint8).reshape(*x.shape[:-1], channels // per_byte, per_byte)
        shifts = torch.arange(0, 8, self.bits, dtype=torch.uint8, device=x.device)
        packed = (codes << shifts).sum(-1, dtype=torch.uint8)
        extras = torch.cat([scale, low], dim=-1).reshape(*x.shape[:-1], -1).view(torch.uint8)
        return torch.cat([packed, extras], dim=-1)

    def decode(self, rows: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
        """``(..., width)`` uint8 rows -> ``(..., channels)`` floats of ``dtype``."""
        size = self._groups(channels)
        packed, extras = rows[..., : channels * self.bits // 8], rows[..., channels * self.bits // 8 :]
        shifts = torch.arange(0, 8, self.bits, dtype=torch.uint8, device=rows.device)
        codes = (packed.unsqueeze(-1) >> shifts) & (2**self.bits - 1)
        scale, low = extras.contiguous().view(torch.float16).reshape(*rows.shape[:-1], channels // size, 2).unbind(-1)
        grouped = codes.reshape(*rows.shape[:-1], channels // size, size).to(dtype)
        return (grouped * scale.unsqueeze(-1).to(dtype) + low.unsqueeze(-1).to(dtype)).reshape(*rows.shape[:-1], channels)
