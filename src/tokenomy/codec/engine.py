"""Bit-reproducible next-token logits for many independent contexts at once.

Arithmetic decoding only works if the decoder rebuilds *exactly* the encoder's probabilities, yet float
results change with batch size and thread count (BLAS picks other kernels, reductions split differently).
This engine fixes every computation a context goes through, whoever else shares the batch:

* one token per step per context, always (the encoder steps exactly like the decoder; no teacher forcing);
* linear layers always see a multiple of `ROW_MULTIPLE` rows (dummy rows pad the batch): then each output
  row of a CPU GEMM depends only on its own input row, not on the batch size or the thread count
  (measured with 1-8 threads: smaller or ragged row blocks switch kernels; the tests check it across
  processes);
* attention is computed row by row over exactly that context's own keys (no padding, no masks), with
  fixed shapes (`_row_attention`, registered as an HF attention implementation).

Contexts ("rows") have their own lengths, so Equal-Info Windows can reset one row while others continue.
Model surgery is limited to HF's pluggable attention and cache interfaces; any HF causal LM whose
attention calls ``past_key_values.update`` and the attention interface works (Llama, Qwen, Gemma-3, ...).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.cache_utils import Cache

ATTENTION = "tokenomy_rows"
ROW_MULTIPLE = 4
_DUMMY = -1


class _Layer:
    """Per-row key/value buffers of one attention layer (grown by doubling)."""

    def __init__(self):
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}

    def write(self, row: int, position: int, key: Tensor, value: Tensor) -> None:
        buffer = self.keys.get(row)
        if buffer is None or buffer.shape[1] <= position:
            capacity = max(16, 2 * position)
            grown_k = key.new_empty(key.shape[0], capacity, key.shape[-1])
            grown_v = value.new_empty(value.shape[0], capacity, value.shape[-1])
            if buffer is not None:
                grown_k[:, :position] = buffer[:, :position]
                grown_v[:, :position] = self.values[row][:, :position]
            self.keys[row], self.values[row] = grown_k, grown_v
        self.keys[row][:, position] = key
        self.values[row][:, position] = value


class RowCache(Cache):
    """An HF cache holding one independent context per row; only `Engine` drives it."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[])
        self.row_layers = [_Layer() for _ in range(num_layers)]
        self.slots: list[int] = []  # row id of each batch row in the current forward (_DUMMY: padding)
        self.positions: list[int] = []  # where each batch row's new token goes

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, cache_kwargs=None):
        layer = self.row_layers[layer_idx]
        for i, row in enumerate(self.slots):
            if row != _DUMMY:
                layer.write(row, self.positions[i], key_states[i, :, 0], value_states[i, :, 0])
        return layer, self  # read by _row_attention, which knows both

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def forget(self, row: int) -> None:
        for layer in self.row_layers:
            layer.keys.pop(row, None)
            layer.values.pop(row, None)


def _row_attention(module, query: Tensor, layer: _Layer, cache: RowCache, attention_mask, scaling=None,
                   dropout=0.0, sliding_window=None, **kwargs):
    """Attention of each batch row's single query over that row's own cached keys."""
    b, heads, _, dim = query.shape
    scale = scaling if scaling is not None else dim**-0.5
    out = query.new_zeros(b, 1, heads, dim)
    for i, row in enumerate(cache.slots):
        if row == _DUMMY:
            continue
        end = cache.positions[i] + 1
        start = max(0, end - sliding_window) if sliding_window else 0
        keys = layer.keys[row][:, start:end]  # (h_kv, L, d)
        values = layer.values[row][:, start:end]
        groups = heads // keys.shape[0]
        q = query[i, :, 0].reshape(keys.shape[0], groups, dim)  # (h_kv, g, d)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * scale  # (h_kv, g, L)
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)
        out[i, 0] = torch.matmul(probs, values).reshape(heads, dim)
    return out, None


AttentionInterface.register(ATTENTION, _row_attention)


class Engine:
    """Steps independent contexts through ``model``; ``step({row: token})`` -> ``{row: logits}``.

    A row's context is the tokens fed to it since it was opened or last `reset`.
    """

    def __init__(self, model):
        self.model = model
        self.cache = RowCache(model.config.get_text_config().num_hidden_layers)
        self.lengths: dict[int, int] = {}
        self._next_row = 0

    def open(self) -> int:
        row, self._next_row = self._next_row, self._next_row + 1
        self.lengths[row] = 0
        return row

    def reset(self, row: int) -> None:
        self.lengths[row] = 0

    def close(self, row: int) -> None:
        self.lengths.pop(row)
        self.cache.forget(row)

    @torch.no_grad()
    def step(self, feeds: dict[int, int]) -> dict[int, Tensor]:
        rows = list(feeds)
        padded = -(-len(rows) // ROW_MULTIPLE) * ROW_MULTIPLE
        slots = rows + [_DUMMY] * (padded - len(rows))
        tokens = [feeds[r] for r in rows] + [feeds[rows[0]]] * (len(slots) - len(rows))
        positions = [self.lengths[r] for r in rows] + [0] * (len(slots) - len(rows))
        self.cache.slots, self.cache.positions = slots, positions
        out = self.model(
            input_ids=torch.tensor(tokens).unsqueeze(1),
            position_ids=torch.tensor(positions).unsqueeze(1),
            cache_position=torch.zeros(1, dtype=torch.long),
            past_key_values=self.cache,
            use_cache=True,
        )
        for r in rows:
            self.lengths[r] += 1
        logits = out.logits[:, -1]
        return {r: logits[i] for i, r in enumerate(rows)}


@contextmanager
def exact(model):
    """Switch ``model`` to the row-exact attention for the duration of a block."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION)
    try:
        yield Engine(model)
    finally:
        model.set_attn_implementation(previous)
