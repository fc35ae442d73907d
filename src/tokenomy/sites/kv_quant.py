"""Cache entries stored quantized, KIVI's way: keys per channel, values per token, the newest in full precision.

From "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache" (Liu et al., 2024, arXiv:2402.02750): key
vectors have outlier *channels* (the same few channels are large in every token), so a key is quantized per
channel over a group of ``group`` consecutive tokens, each channel with its own float16 scale and minimum; values
have no such channels and are quantized per token, in groups of ``group`` channels. Tokens added while decoding
wait in full precision until ``group`` of them can form a key group (KIVI's residual), so the latest tokens —
the ones decoding attends to most — are never coarse.

Every stored entry is still one row of bytes: a key row holds its codes and the id of its group's scales in a
table the layer keeps, a value row its codes and its own scales. So the cache layers gather, concatenate, pack
and evict rows exactly as they do float vectors, and an entry keeps its group's scales whichever of its
neighbours are evicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError

BITS = (2, 4, 8)
_ID_BYTES = 4  # a key row's group id, int32


@dataclass(frozen=True)
class KVQuantizer:
    """``bits`` per channel (2, 4 or 8); ``group``: tokens per key group (per-channel scales), and channels per
    value group (per-token scales; the whole vector when its size is not a multiple of ``group``)."""

    bits: int
    group: int = 32

    def __post_init__(self):
        if self.bits not in BITS:
            raise TokenomyError(f"bits must be one of {', '.join(map(str, BITS))} (or 16: not quantized), "
                                f"got {self.bits!r}")

    def _value_groups(self, channels: int) -> int:
        return self.group if channels % self.group == 0 else channels

    def key_width(self, channels: int) -> int:
        """Bytes per stored key: its codes and its group's id."""
        return channels * self.bits // 8 + _ID_BYTES

    def value_width(self, channels: int) -> int:
        """Bytes per stored value: its codes and a float16 scale and minimum per group of channels."""
        return channels * self.bits // 8 + 4 * (channels // self._value_groups(channels))

    def encode_keys(self, x: Tensor, first_id: int) -> tuple[Tensor, Tensor]:
        """``(..., n, channels)`` floats -> ``(..., n, key_width)`` uint8 rows and the scales of their groups,
        ``(groups, 2, channels)`` float16 (scale, minimum), numbered from ``first_id``: every ``group``
        consecutive tokens of each leading index form a group (the last may be shorter)."""
        *lead, n, channels = x.shape
        flat = x.float().reshape(-1, n, channels)
        rows = flat.shape[0]
        count = -(-n // self.group)
        member = (torch.arange(n, device=x.device) // self.group).view(1, n, 1).expand_as(flat)
        low = flat.new_full((rows, count, channels), float("inf")).scatter_reduce(1, member, flat, "amin")
        high = flat.new_full((rows, count, channels), float("-inf")).scatter_reduce(1, member, flat, "amax")
        low = low.half()
        scale = ((high - low.float()) / (2**self.bits - 1)).half()
        codes = self._codes((flat - low.float().gather(1, member)) / scale.float().clamp_min(1e-8).gather(1, member))
        ids = first_id + torch.arange(rows, device=x.device).view(-1, 1) * count + member[..., 0]
        id_bytes = ids.to(torch.int32).unsqueeze(-1).view(torch.uint8)
        stored = torch.cat([codes, id_bytes], dim=-1).reshape(*lead, n, -1)
        return stored, torch.stack([scale, low], dim=-2).reshape(rows * count, 2, channels)

    def decode_keys(self, rows: Tensor, table: Tensor, dtype: torch.dtype) -> Tensor:
        """``(..., key_width)`` uint8 rows and the layer's group ``table`` -> ``(..., channels)`` floats."""
        channels = table.shape[-1]
        codes = self._unpack(rows[..., :-_ID_BYTES], channels, dtype)
        ids = rows[..., -_ID_BYTES:].contiguous().view(torch.int32).squeeze(-1)
        scale, low = F.embedding(ids, table.to(dtype).flatten(1)).unflatten(-1, (2, channels)).unbind(-2)
        return torch.addcmul(low, codes, scale)

    def encode_values(self, x: Tensor) -> Tensor:
        """``(..., channels)`` floats -> ``(..., value_width)`` uint8 rows (scales per token)."""
        channels = x.shape[-1]
        size = self._value_groups(channels)
        grouped = x.float().reshape(*x.shape[:-1], channels // size, size)
        low = grouped.amin(-1, keepdim=True).half()
        scale = ((grouped.amax(-1, keepdim=True) - low.float()) / (2**self.bits - 1)).half()
        codes = self._codes(((grouped - low.float()) / scale.float().clamp_min(1e-8)).reshape(x.shape))
        extras = torch.cat([scale, low], dim=-1).reshape(*x.shape[:-1], -1).view(torch.uint8)
        return torch.cat([codes, extras], dim=-1)

    def decode_values(self, rows: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
        """``(..., value_width)`` uint8 rows -> ``(..., channels)`` floats of ``dtype``."""
        size = self._value_groups(channels)
        codes = self._unpack(rows[..., : channels * self.bits // 8], channels, dtype)
        extras = rows[..., channels * self.bits // 8 :].contiguous().view(torch.float16)
        scale, low = extras.reshape(*rows.shape[:-1], channels // size, 2).to(dtype).unsqueeze(-1).unbind(-2)
        grouped = codes.reshape(*rows.shape[:-1], channels // size, size)
        return torch.addcmul(low, grouped, scale).reshape(*rows.shape[:-1], channels)

    def _codes(self, steps: Tensor) -> Tensor:
        """Steps above the minimum ``(..., channels)`` -> rounded codes packed ``8 // bits`` to a byte."""
        per_byte = 8 // self.bits
        codes = steps.round().clamp(0, 2**self.bits - 1).to(torch.uint8)
        codes = codes.reshape(*steps.shape[:-1], steps.shape[-1] // per_byte, per_byte)
        shifts = torch.arange(0, 8, self.bits, dtype=torch.uint8, device=steps.device)
        return (codes << shifts).sum(-1, dtype=torch.uint8)

    def _unpack(self, packed: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
        """Packed bytes ``(..., bytes)`` -> their ``channels`` codes as ``dtype``: one lookup per byte in a table
        of every byte's codes (`_code_table`)."""
        return F.embedding(packed.int(), _code_table(self.bits, dtype, packed.device)).reshape(*packed.shape[:-1],
                                                                                              channels)


@lru_cache(maxsize=None)
def _code_table(bits: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(256, 8 // bits)``: the codes a byte packs (`KVQuantizer._codes`' order), as ``dtype``; made outside
    inference mode, so that every later caller may read it."""
    with torch.inference_mode(False):
        shifts = torch.arange(0, 8, bits, device=device)
        return ((torch.arange(256, device=device).unsqueeze(-1) >> shifts) & (2**bits - 1)).to(dtype)
