"""Bit-reproducible next-token logits for many independent contexts at once.

Arithmetic decoding only works if the decoder rebuilds *exactly* the encoder's probabilities, yet float
results change with batch size and thread count (BLAS picks other kernels, reductions split differently).
This engine fixes every computation a context goes through, whoever else shares the batch:

* one token per step per context, always (the encoder steps exactly like the decoder; no teacher forcing);
* linear layers always see a multiple of `ROW_MULTIPLE` rows (dummy rows pad the batch): then each output
  row of a CPU GEMM depends only on its own input row, not on the batch size or the thread count
  (measured with 1-8 threads: smaller or ragged row blocks switch kernels; the tests check it across
  processes). On a CPU the linears run on oneDNN (`_onednn_linears`), which is faster than MKL on AMD;
* attention runs over fixed blocks of `SLOT_CHUNK` rows' caches, each row over its own keys padded to a
  multiple of `KEY_BLOCK` and masked (`_row_attention`, registered as an HF attention implementation):
  every product's shape is set by the row's own length, and masked keys add exact zeros, so a row's
  result does not depend on its companions. Rows keep a fixed cache slot while open.

Contexts ("rows") have their own lengths, so Equal-Info Windows can reset one row while others continue.
Model surgery is limited to HF's pluggable attention and cache interfaces; any HF causal LM whose
attention calls ``past_key_values.update`` and the attention interface works (Llama, Qwen, Gemma-3, ...).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.cache_utils import Cache

ATTENTION = "tokenomy_rows"
ROW_MULTIPLE = 4
SLOT_CHUNK = 16  # attention runs over fixed blocks of this many rows' caches
KEY_BLOCK = 64  # ... and over each row's keys padded to a multiple of this


def _padded_length(end):
    return -(-end // KEY_BLOCK) * KEY_BLOCK


class _Layer:
    """One attention layer's keys and values: ``(slots, kv_heads, capacity, head_dim)``, zero-initialised
    (masked positions then hold finite numbers, so they contribute exactly nothing)."""

    def __init__(self):
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def write(self, slots: Tensor, positions: Tensor, keys: Tensor, values: Tensor, need_slots: int,
              need_length: int) -> None:
        if self.keys is None or self.keys.shape[0] < need_slots or self.keys.shape[2] < need_length:
            self.keys, self.values = self._grown(self.keys, keys, need_slots, need_length), \
                self._grown(self.values, values, need_slots, need_length)
        self.keys[slots, :, positions] = keys
        self.values[slots, :, positions] = values

    @staticmethod
    def _grown(old: Tensor | None, new: Tensor, slots: int, length: int) -> Tensor:
        if old is not None:  # grow what is short, by doubling (amortised); keep what is long enough
            slots = old.shape[0] if slots <= old.shape[0] else max(slots, 2 * old.shape[0])
            length = old.shape[2] if length <= old.shape[2] else max(length, 2 * old.shape[2])
        grown = new.new_zeros(slots, new.shape[1], length, new.shape[-1])
        if old is not None:
            grown[: old.shape[0], :, : old.shape[2]] = old
        return grown


@dataclass
class _Block:
    """Batch rows whose caches lie in one `SLOT_CHUNK` block and share one padded key length."""

    first: int  # first cache slot of the block
    length: int  # keys computed over, a multiple of KEY_BLOCK
    members: Tensor  # batch indices of the rows
    local: Tensor  # their slots within the block
    ends: Tensor  # (SLOT_CHUNK,) each slot's context length (0: no row this step)
    past_end: Tensor  # (SLOT_CHUNK, length) keys beyond a slot's context


class RowCache(Cache):
    """An HF cache holding one independent context per row; only `Engine` drives it."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[])
        self.row_layers = [_Layer() for _ in range(num_layers)]

    def plan(self, slots: list[int], positions: list[int]) -> None:
        """Fix this step's rows (their cache slots and write positions) and their attention blocks, once
        for all layers."""
        self.slots, self.positions = torch.tensor(slots), torch.tensor(positions)
        self.need_slots = -(-(max(slots) + 1) // SLOT_CHUNK) * SLOT_CHUNK
        self.need_length = _padded_length(max(positions) + 1)
        ends = self.positions + 1
        lengths, chunk_of = _padded_length(ends), self.slots // SLOT_CHUNK
        self.blocks = []
        for chunk, length in torch.unique(torch.stack([chunk_of, lengths], dim=1), dim=0).tolist():
            members = torch.nonzero((chunk_of == chunk) & (lengths == length)).squeeze(1)
            local = self.slots[members] - chunk * SLOT_CHUNK
            block_ends = ends.new_zeros(SLOT_CHUNK)
            block_ends[local] = ends[members]
            past_end = torch.arange(length) >= block_ends[:, None]
            self.blocks.append(_Block(chunk * SLOT_CHUNK, length, members, local, block_ends, past_end))

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, cache_kwargs=None):
        layer = self.row_layers[layer_idx]
        n = len(self.slots)
        layer.write(self.slots, self.positions, key_states[:n, :, 0], value_states[:n, :, 0], self.need_slots,
                    self.need_length)
        return layer, self  # read by _row_attention, which knows both

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def _row_attention(module, query: Tensor, layer: _Layer, cache: RowCache, attention_mask, scaling=None,
                   dropout=0.0, sliding_window=None, **kwargs):
    """Attention of each batch row's single query over that row's own cached keys (see the module
    docstring for why blocks of slots and padded, masked key lengths)."""
    b, heads, _, dim = query.shape
    kv_heads = layer.keys.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    n = len(cache.slots)
    out = query.new_zeros(b, 1, heads, dim)
    q_rows = query[:n, :, 0].reshape(n, kv_heads, groups, dim)
    for block in cache.blocks:
        keys = layer.keys[block.first : block.first + SLOT_CHUNK, :, : block.length]  # (chunk, h_kv, L, d), a view
        values = layer.values[block.first : block.first + SLOT_CHUNK, :, : block.length]
        q = query.new_zeros(SLOT_CHUNK, kv_heads, groups, dim)
        q[block.local] = q_rows[block.members]
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale  # (chunk, h_kv, g, L)
        masked = block.past_end
        if sliding_window:
            masked = masked | (torch.arange(block.length) < (block.ends[:, None] - sliding_window))
        scores = scores.masked_fill(masked[:, None, None, :], -torch.inf)
        probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0).to(values.dtype)  # empty slots: all masked
        result = torch.matmul(probs, values)  # (chunk, h_kv, g, d)
        out[block.members, 0] = result[block.local].reshape(len(block.members), heads, dim)
    return out, None



class Engine:
    """Steps independent contexts through ``model``; ``step({row: token})`` -> ``{row: logits}``.

    A row's context is the tokens fed to it since it was opened or last `reset`.
    """

    def __init__(self, model):
        self.model = model
        self.cache = RowCache(model.config.get_text_config().num_hidden_layers)
        self.lengths: dict[int, int] = {}
        self.slot: dict[int, int] = {}  # row -> its place in the cache
        self._next_row = 0

    def open(self) -> int:
        row, self._next_row = self._next_row, self._next_row + 1
        used = set(self.slot.values())
        self.slot[row] = next(s for s in range(len(used) + 1) if s not in used)
        self.lengths[row] = 0
        return row

    def reset(self, row: int) -> None:
        self.lengths[row] = 0

    def close(self, row: int) -> None:
        self.lengths.pop(row)
        self.slot.pop(row)  # its cache slot is reused as is: keys past a row's length are masked

    @torch.no_grad()
    def step(self, feeds: dict[int, int]) -> dict[int, Tensor]:
        rows = list(feeds)
        padded = -(-len(rows) // ROW_MULTIPLE) * ROW_MULTIPLE  # dummy rows: see the module docstring
        tokens = [feeds[r] for r in rows] + [feeds[rows[0]]] * (padded - len(rows))
        positions = [self.lengths[r] for r in rows]
        self.cache.plan([self.slot[r] for r in rows], positions)
        out = self.model(
            input_ids=torch.tensor(tokens).unsqueeze(1),
            position_ids=torch.tensor(positions + [0] * (padded - len(rows))).unsqueeze(1),
            cache_position=torch.zeros(1, dtype=torch.long),
            past_key_values=self.cache,
            use_cache=True,
        )
        for r in rows:
            self.lengths[r] += 1
        logits = out.logits[:, -1]
        return {r: logits[i] for i, r in enumerate(rows)}


class _OneDNNLinear(torch.nn.Module):
    """oneDNN's linear on plain tensors, its weight packed once. Same bits as torch's `MkldnnLinear` (tests
    compare them), which converts every input and output to and from oneDNN's layout and costs about twice
    the time on the codec's 44-row steps."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()  # packed for up to 64 rows (a full batch); every row count gives the same bits
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach().contiguous(), 64)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def _onednn_linears(model) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """Swap every fp32 ``nn.Linear`` of a CPU model for oneDNN's; returns what to put back.

    Why: MKL, torch's default CPU GEMM, runs AVX2 kernels on AMD CPUs; oneDNN uses AVX-512 there (measured
    1.7x on this project's 2-core EPYC for a 44 x 576 x 1536 product) and, like MKL on full row blocks, gives
    each output row bit-identical values whatever the other rows and the thread count (tests check it).
    """
    if not torch.backends.mkldnn.is_available():
        return []
    swapped = []
    for parent in model.modules():
        for name, child in parent.named_children():
            weight = getattr(child, "weight", None)
            if type(child) is torch.nn.Linear and weight.device.type == "cpu" and weight.dtype == torch.float32:
                setattr(parent, name, _OneDNNLinear(child))
                swapped.append((parent, name, child))
    return swapped


@contextmanager
def exact(model):
    """Switch ``model`` to the row-exact attention (and oneDNN linears on a CPU) for a block."""
    previous = model.config._attn_implementation
    # set at each use, in the mapping models read: a library imported since (kvpress) may have replaced every
    # attention function there with a wrapper that reads ``key.shape``, and this one's "key" is a cache layer
    ALL_ATTENTION_FUNCTIONS[ATTENTION] = _row_attention
    model.set_attn_implementation(ATTENTION)
    swapped = _onednn_linears(model)
    try:
        yield Engine(model)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        model.set_attn_implementation(previous)
