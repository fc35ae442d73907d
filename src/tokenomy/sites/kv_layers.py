"""The cache layers a compressed KV cache is made of, in two layouts.

Both replace a `DynamicLayer` of HF's `DynamicCache` once a layer has been compressed, keep the original
position of every stored entry and report the number of tokens *seen* as their length, so `generate()` builds
positions and masks exactly as for the uncompressed model.

* `PrunedLayer` is rectangular, ``(b, h_kv, L, d)``: the layout of HF's own layers, read by any attention
  implementation once the site maps the mask onto it. Rows or heads that keep fewer entries than the longest
  (per-head budgets, padding) leave unused slots, which it stores and masks.
* `PackedLayer` stores exactly the kept entries of every (row, KV head), one segment after another, so the
  bytes resident are the kept entries' bytes, whatever the budgets. The site's attention
  (`tokenomy.sites.scoring_attention`) attends each segment on its own.

Either layout may store its entries quantized (`tokenomy.sites.kv_quant`, KIVI): each key or value vector is
then a row of bytes, which the layouts move about as they move float vectors, read back as floats by attention.
Tokens added while decoding wait in a full-precision tail, the same tokens for every row and head, until a
key group of them is complete; evicting or reordering first stores the tail.

Decoding appends a token per step. Rather than copy everything stored to make room for it each time (what
`torch.cat`, and HF's own layers, do), both layouts write it into spare room left after what they store: when
the room runs out they copy once, leaving room for 1/128 more (`SPARE`), so the bytes resident exceed the kept
entries' by under 1% while decoding, and not at all after a compression. A layer writes only into room it made
itself: a copy of it (`tokenomy.adapters.caches.copy_cache` shares tensors) makes its own at its first append.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tokenomy._validation import TokenomyError
from tokenomy.score.base import per_query_head
from tokenomy.sites.kv_quant import KVQuantizer

SPARE = 128  # room made when a layer's runs out: for 1/SPARE more entries than it then stores


def writable(buffer: Tensor) -> bool:
    """Whether ``buffer`` may be written in place now (a tensor made under `torch.inference_mode` may not be,
    outside it)."""
    return not buffer.is_inference() or torch.is_inference_mode_enabled()


class CompressedLayer(DynamicLayer):
    """What both layouts share: the tokens seen, the budget decoding returns to, batch reordering."""

    def __init__(self, dtype: torch.dtype, device: torch.device, seen: int, quantizer: KVQuantizer | None,
                 channels: int):
        super().__init__()
        self.dtype, self.device = dtype, device
        self.quantizer, self.channels = quantizer, channels  # stored as rows of bytes when quantized
        self.table: Tensor | None = None  # (groups, 2, channels) float16 scales of the quantized key groups
        self.tail: tuple[Tensor, Tensor] | None = None  # (b, h_kv, t, d) keys, values added since the last
        # complete key group, in full precision (quantized layers only)
        self.seen = seen
        self.evicted_at = seen  # tokens seen at the last eviction
        self.budget: Tensor | None = None  # (b,) entries per head after the prefill's eviction
        self.history: Tensor | None = None  # (b, heads, L) attention received so far (accumulating scorers)
        self.unscored: list[tuple[Tensor, Tensor, Tensor]] = []  # (hidden, cos, sin) of the forwards whose
        # attention the history does not hold yet: folded in, all at once, before the next eviction
        self.is_initialized = True
        self.armed = False  # set by the site's pre-hook, which prepares the next update's attention
        self.peak_bytes = 0  # the most bytes held at once
        self._rooms: dict[str, tuple[Tensor, CompressedLayer]] = {}  # stored tensor -> (buffer it starts, the
        # layer that made it): appends while decoding write into the buffer's room (`_grow`)

    def _encode(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Float keys and values ``(..., n, d)`` -> what the layer stores (rows of bytes when quantized)."""
        if self.quantizer is None:
            return keys, values
        first = 0 if self.table is None else self.table.shape[0]
        key_rows, groups = self.quantizer.encode_keys(keys, first)
        self.table = groups if self.table is None else torch.cat([self.table, groups])
        return key_rows, self.quantizer.encode_values(values)

    def _decode(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Stored keys and values -> floats."""
        if self.quantizer is None:
            return keys, values
        return (self.quantizer.decode_keys(keys, self.table, self.dtype),
                self.quantizer.decode_values(values, self.channels, self.dtype))

    @property
    def tail_length(self) -> int:
        return 0 if self.tail is None else self.tail[0].shape[-2]

    def _grow_tail(self, key_states: Tensor, value_states: Tensor) -> int:
        """Quantized layers: add new tokens to the tail; returns how many of its oldest make whole key groups."""
        if self.tail is None:
            self.tail = (key_states, value_states)
        else:
            self.tail = tuple(torch.cat([old, new], dim=-2) for old, new in zip(self.tail, (key_states, value_states)))
        return self.tail_length // self.quantizer.group * self.quantizer.group

    def _take_tail(self, count: int) -> tuple[Tensor, Tensor]:
        """The tail's ``count`` oldest tokens, encoded, removed from the tail."""
        keys, values = self.tail
        self.tail = (keys[..., count:, :], values[..., count:, :]) if count < keys.shape[-2] else None
        return self._encode(keys[..., :count, :], values[..., :count, :])

    def _grow(self, name: str, new: Tensor, dim: int) -> None:
        """Append ``new`` to the stored tensor ``name`` along ``dim``: written into the room after it when this
        layer made that room and it suffices, else copied with ``new`` into a buffer with 1/`SPARE` more room."""
        stored, room = getattr(self, name), self._rooms.get(name)
        n, q = stored.shape[dim], new.shape[dim]
        if not (room is not None and room[1] is self and stored.data_ptr() == room[0].data_ptr()
                and room[0].shape[dim] >= n + q and writable(room[0])):
            shape = list(stored.shape)
            shape[dim] = n + q + (n + q) // SPARE
            buffer = stored.new_empty(shape)
            buffer.narrow(dim, 0, n).copy_(stored)
            room = (buffer, self)
            self._rooms = {**self._rooms, name: room}  # a new dict: a copy of this layer shares the old one
        room[0].narrow(dim, n, q).copy_(new)
        setattr(self, name, room[0].narrow(dim, 0, n + q))

    def _held(self, name: str) -> Tensor:
        """The stored tensor ``name``, or the buffer it is the start of (room included)."""
        stored, room = getattr(self, name), self._rooms.get(name)
        return room[0] if room is not None and stored.data_ptr() == room[0].data_ptr() else stored

    def _stored_bytes(self) -> int:
        """Bytes held now: keys, values (with their room), the tail and the key groups' scales."""
        tensors = [self._held("keys"), self._held("values"), *(self.tail or ()),
                   *(() if self.table is None else (self.table,))]
        return sum(t.numel() * t.element_size() for t in tensors)

    def resident_bytes(self, peak: bool = False) -> int:
        """Bytes of keys + values stored, unused slots and quantization scales included (``peak``: the most
        held at once)."""
        return self.peak_bytes if peak else self._stored_bytes()

    def _note_peak(self) -> None:
        self.peak_bytes = max(self.peak_bytes, self._stored_bytes())

    def _arm_check(self) -> None:
        if not self.armed:
            raise TokenomyError(
                "this cache was compressed by tokenomy; use it inside a `with tokenomy.apply(model, ...)` "
                "block on the same model (its masks must be mapped onto the kept entries)"
            )
        self.armed = False

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, cache_position: Tensor) -> tuple[int, int]:
        return self.seen + cache_position.shape[0], 0

    def crop(self, max_length: int) -> None:
        raise TokenomyError("a compressed cache cannot be cropped (assisted decoding is not supported)")

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._index_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._index_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: Tensor) -> None:
        self._index_batch(lambda t: t[indices, ...])

    def _index_budget(self, fn) -> None:
        if self.budget is not None:
            self.budget = fn(self.budget)
        if self.tail is not None:
            self.tail = (fn(self.tail[0]), fn(self.tail[1]))


class PrunedLayer(CompressedLayer):
    """A rectangular cache layer holding a subset of the tokens seen, each with its original position.

    keys, values: ``(b, h_kv, L, d)`` (stored: ``(b, h_kv, L, bytes)`` rows when quantized, the tail's tokens
    after them); positions: ``(b, h_kv, L + t)`` original token index of each entry, tail included; valid:
    ``(b, h_kv, L + t)`` False for unused slots (ragged per-head budgets, padding) or None.
    """

    def __init__(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None, seen: int,
                 quantizer: KVQuantizer | None = None):
        super().__init__(keys.dtype, keys.device, seen, quantizer, keys.shape[-1])
        self.keys, self.values = self._encode(keys, values)
        self.positions, self.valid = positions, valid
        self.selection: Tensor | None = None  # entries to attend to in the next forward only
        self.selection_valid: Tensor | None = None  # its slots in use, when rows select different counts
        self.chosen: tuple[Tensor, Tensor] | None = None  # (query fingerprint, scored picks) of the last fresh
        # selection, which similar later queries reuse (``reuse_similarity``)
        self._note_peak()

    @property
    def stored(self) -> int:
        return self.positions.shape[-1]

    def kept_entries(self) -> int:
        """Entries in use, summed over batch and heads."""
        return int(self.valid.sum()) if self.valid is not None else self.positions.numel()

    def padded(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(keys, values, positions, valid)`` in the rectangular layout: the layer's own tensors (read back
        as floats when quantized, the tail after them)."""
        keys, values = self._decode(self.keys, self.values)
        if self.tail is not None:
            keys, values = torch.cat([keys, self.tail[0]], dim=-2), torch.cat([values, self.tail[1]], dim=-2)
        return keys, values, self.positions, self.valid

    def update(self, key_states: Tensor, value_states: Tensor, cache_kwargs: dict | None = None):
        self._arm_check()
        b, h, q, _ = key_states.shape
        stored = self.stored
        new_positions = (self.seen + torch.arange(q, device=self.device)).expand(b, h, q)
        if self.quantizer is None:
            self._grow("keys", key_states, 2)
            self._grow("values", value_states, 2)
        else:
            complete = self._grow_tail(key_states, value_states)
            if complete:
                self._store_tail(complete)
        self._grow("positions", new_positions, 2)
        if self.history is not None:  # the site adds what the new queries give (see KVSession)
            self.history = torch.cat([self.history, self.history.new_zeros(b, self.history.shape[1], q)], dim=-1)
        if self.valid is not None:
            self.valid = torch.cat([self.valid, self.valid.new_ones(b, h, q)], dim=-1)
        self.seen += q
        self._note_peak()
        selection, self.selection, self.selection_valid = self.selection, None, None
        keys, values = self.padded()[:2]
        if selection is None:
            return keys, values
        idx = torch.cat([selection, (stored + torch.arange(q, device=self.device)).expand(b, h, q)], dim=-1)
        idx = idx.unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1])
        return keys.gather(2, idx), values.gather(2, idx)

    def _store_tail(self, count: int) -> None:
        """Move the tail's ``count`` oldest tokens into the stored rows (they stay last, in order)."""
        keys, values = self._take_tail(count)
        self._grow("keys", keys, 2)
        self._grow("values", values, 2)

    def keep_only(self, indices: Tensor, valid: Tensor | None) -> None:
        """Keep the stored entries at ``indices`` ``(b, h_kv, k)`` (``valid``: slots in use, or None)."""
        if self.tail is not None:
            self._store_tail(self.tail_length)
        gather = indices.unsqueeze(-1)
        self.keys = self.keys.gather(2, gather.expand(-1, -1, -1, self.keys.shape[-1]))
        self.values = self.values.gather(2, gather.expand(-1, -1, -1, self.values.shape[-1]))
        self.positions = self.positions.gather(-1, indices)
        self.valid = valid  # the selection never picks padding: budgets count real entries only
        self._rooms = {}
        if self.history is not None:
            self.history = self.history.gather(-1, per_query_head(indices, self.history.shape[1]))
        self.evicted_at = self.seen

    def _index_batch(self, fn) -> None:
        rows = self.keys.shape[0]
        self.chosen = None  # the next forward selects afresh
        self.keys, self.values, self.positions = fn(self.keys), fn(self.values), fn(self.positions)
        self._rooms = {}
        if self.valid is not None:
            self.valid = fn(self.valid)
        if self.history is not None:
            self.history = fn(self.history)
        self._index_budget(fn)
        self.unscored = [tuple(fn(t) if t.shape[0] == rows else t for t in forward)  # else broadcast over rows
                         for forward in self.unscored]


class PackedLayer(CompressedLayer):
    """A cache layer storing exactly the kept entries of every (row, KV head), packed segment after segment.

    keys, values: ``(N, d)`` (``(N, bytes)`` rows when quantized); positions: ``(N,)``; lengths: ``(b, h_kv)``
    entries per segment, in row-major (row, head) order, each segment in increasing position from its first
    row (``_starts``) on, followed by ``_room`` free rows while decoding; a quantized layer's tail (the newest
    tokens, the same in every segment) comes after each segment. Attention over it runs segment by segment
    (`attend`), so nothing is stored, or attended, for slots a rectangular layout would pad. Built from the
    rectangular layout (``valid``: the slots in use, or None for all).
    """

    def __init__(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None, seen: int,
                 quantizer: KVQuantizer | None = None):
        super().__init__(keys.dtype, keys.device, seen, quantizer, keys.shape[-1])
        self._repack(*self._encode(keys, values), positions, valid)
        self._note_peak()

    @property
    def lengths(self) -> Tensor:
        return self._lengths

    @lengths.setter
    def lengths(self, lengths: Tensor) -> None:
        self._lengths = lengths.cpu()
        self._sizes = self._lengths.flatten().tolist()  # read at every forward: kept as Python ints

    def kept_entries(self) -> int:
        """Entries stored, summed over batch and heads."""
        return sum(self._sizes) + self.lengths.numel() * self.tail_length

    def _entries(self) -> tuple[Tensor, Tensor, Tensor, list[int], list[int]]:
        """Every entry as floats, the tail after each segment: ``(keys, values, positions, segment starts,
        segment sizes)``."""
        keys, values = self._decode(self.keys, self.values)
        if self.tail is None:
            return keys, values, self.positions, self._starts, self._sizes
        t = self.tail_length
        tail_positions = (self.seen - t + torch.arange(t, device=self.device)).expand(*self.lengths.shape, t)
        keys, values, positions = (self._interleave(old, new) for old, new in
                                   ((keys, self.tail[0]), (values, self.tail[1]), (self.positions, tail_positions)))
        sizes = [size + t for size in self._sizes]
        return keys, values, positions, _starts(sizes), sizes

    def _interleave(self, stored: Tensor, new: Tensor, spare: int = 0) -> Tensor:
        """Segment after segment: each stored segment ``(N, ...)``, then its row's and head's ``new`` entries
        ``(b, h_kv, q, ...)``, then ``spare`` zero rows."""
        room = new.new_zeros(spare, *new.shape[3:])
        return torch.cat([part for start, size, fresh in zip(self._starts, self._sizes, new.flatten(0, 1).unbind(0))
                          for part in (stored[start:start + size], fresh, room)])

    def padded(self) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(keys, values, positions, valid)`` in the rectangular layout, for scoring: a copy, each segment (its
        tail included) padded to the longest (unused slots repeat the segment's first entry, marked invalid)."""
        keys, values, positions, starts, sizes = self._entries()
        return self._pad(keys, values, positions, starts, torch.tensor(sizes).view_as(self.lengths))

    def _pad(self, keys: Tensor, values: Tensor, positions: Tensor, starts: list[int], lengths: Tensor):
        lengths = lengths.to(self.device)
        width = int(lengths.max()) if lengths.numel() else 0
        slot = torch.arange(width, device=self.device)
        valid = slot < lengths.unsqueeze(-1)
        first = torch.tensor(starts, dtype=torch.long, device=self.device).view_as(lengths)
        index = (first.unsqueeze(-1) + torch.where(valid, slot, 0)).clamp(max=max(keys.shape[0] - 1, 0))
        return keys[index], values[index], positions[index], (None if bool(valid.all()) else valid)

    def update(self, key_states: Tensor, value_states: Tensor, cache_kwargs: dict | None = None):
        """Append the new tokens to every segment (a quantized layer: to its tail); the site's attention reads the
        layer itself, so the states returned are only the new ones."""
        self._arm_check()
        if self.quantizer is None:
            self._append(key_states, value_states, self.seen)
        else:
            waiting = self.tail_length
            complete = self._grow_tail(key_states, value_states)
            if complete:
                self._append(*self._take_tail(complete), self.seen - waiting)
        self.seen += key_states.shape[2]
        self._note_peak()
        return key_states, value_states

    def _append(self, keys: Tensor, values: Tensor, first: int) -> None:
        """Add tokens, as stored ``(b, h_kv, count, ...)``, at positions ``first`` on, after every segment: into
        the room after each when this layer made it and it suffices, else in a new layout with room for 1/`SPARE`
        more entries, shared equally by the segments (they all grow alike)."""
        b, h, count = keys.shape[:3]
        positions = (first + torch.arange(count, device=self.device)).expand(b, h, count)
        added = ((self.keys, keys), (self.values, values), (self.positions, positions))
        if self._room_owner is self and self._room >= count and writable(self.keys):
            ends = torch.tensor([start + size for start, size in zip(self._starts, self._sizes)], device=self.device)
            rows = (ends.unsqueeze(-1) + torch.arange(count, device=self.device)).flatten()
            for stored, new in added:
                stored.index_copy_(0, rows, new.reshape(-1, *stored.shape[1:]))
            self._room -= count
        else:
            spare = (sum(self._sizes) + len(self._sizes) * count) // SPARE // max(len(self._sizes), 1)
            self.keys, self.values, self.positions = (self._interleave(old, new, spare) for old, new in added)
            self._starts = _starts([size + count + spare for size in self._sizes])
            self._room, self._room_owner = spare, self
        self.lengths = self.lengths + count

    def attend(self, query: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        """Attention of ``query`` ``(b, heads, q, d)`` (the forward that just updated this layer) over each
        row's and KV head's own segment; ``mask``: HF's, over the positions seen ``(b, 1, q, seen)``, or
        None (causal). Returns ``(b, q, heads, d)``, as HF's attention functions do.

        Segment by segment (`_segment_attention`), the query heads that share the segment's KV head together."""
        b, heads, q, _ = query.shape
        kv_heads = self.lengths.shape[1]
        group = heads // kv_heads
        grouped = query.unflatten(1, (kv_heads, group))
        keys, values, every_position, starts, sizes = self._entries()
        if mask is None and q > 1:  # causal: a query sees the positions up to its own
            now = (self.seen - q + torch.arange(q, device=self.device)).unsqueeze(-1)
        results = []
        for index, (start, length) in enumerate(zip(starts, sizes)):
            row, head = divmod(index, kv_heads)
            allowed = None
            if mask is not None:
                allowed = mask[row, 0, -q:].index_select(-1, every_position.narrow(0, start, length))
            elif q > 1:
                allowed = every_position.narrow(0, start, length) <= now
            if allowed is not None and allowed.dtype == torch.bool:
                allowed = allowed | ~allowed.any(-1, keepdim=True)  # a padding query sees something, unused
            results.append(_segment_attention(grouped[row, head], keys.narrow(0, start, length),
                                              values.narrow(0, start, length), allowed, scale))
        return torch.cat(results).view(b, heads, q, -1).transpose(1, 2).contiguous()

    def keep_only(self, indices: Tensor, valid: Tensor | None) -> None:
        """Keep the entries at ``indices`` ``(b, h_kv, k)`` of the rectangular layout (`padded`)."""
        if self.tail is not None:  # stored first: each segment then holds what `padded` showed, in that order
            t = self.tail_length
            self._append(*self._take_tail(t), self.seen - t)
        keys, values, positions, _ = self._pad(self.keys, self.values, self.positions, self._starts, self.lengths)
        gather = indices.unsqueeze(-1)
        self._repack(keys.gather(2, gather.expand(-1, -1, -1, keys.shape[-1])),
                     values.gather(2, gather.expand(-1, -1, -1, values.shape[-1])), positions.gather(-1, indices), valid)
        self.evicted_at = self.seen

    def _index_batch(self, fn) -> None:
        keys, values, positions, valid = self._pad(self.keys, self.values, self.positions, self._starts, self.lengths)
        valid = fn(valid) if valid is not None else None
        self._repack(fn(keys), fn(values), fn(positions), valid)
        self._index_budget(fn)

    def _repack(self, keys: Tensor, values: Tensor, positions: Tensor, valid: Tensor | None) -> None:
        """Store the slots in use of a rectangular layout (as stored), segment after segment."""
        if valid is None:
            valid = torch.ones(positions.shape, dtype=torch.bool, device=positions.device)
        self.keys, self.values, self.positions, self.lengths = keys[valid], values[valid], positions[valid], valid.sum(-1)
        self._starts, self._room, self._room_owner = _starts(self._sizes), 0, None


def held_in_place(cache):
    """A `DynamicCache` holding every entry of the uncompressed ``cache`` in `PrunedLayer`s (tensors shared, not
    copied), to be decoded inside a KV method's session: the same attention over the same entries, appended in
    place rather than copied at every step, which tells what a compressed cache's decoding speed owes to that
    apart from what it owes to holding fewer entries."""
    held = DynamicCache()
    for layer in cache.layers:
        if type(layer) is not DynamicLayer or layer.keys is None:
            raise TokenomyError("held_in_place takes a prefilled cache of plain dynamic layers (every token seen "
                                f"kept, in order), got a {type(layer).__name__} layer")
        b, h, n, _ = layer.keys.shape
        held.layers.append(PrunedLayer(layer.keys, layer.values, torch.arange(n, device=layer.keys.device)
                                       .expand(b, h, n), None, n))
    return held


def _segment_attention(query: Tensor, keys: Tensor, values: Tensor, allowed: Tensor | None, scale: float) -> Tensor:
    """Softmax attention of ``query`` ``(group, q, d)`` over one segment's ``keys``, ``values`` ``(n, d)``;
    ``allowed``: ``(q, n)``, boolean or added to the scores, or None (all). Returns ``(group, q, d)``.

    On a CPU, a decoding step (one query per head) is two matrix-vector products and a softmax, done as such:
    the fused kernel's per-call setup outweighs that work. Longer inputs, and other devices, take the fused
    kernel, which tiles the scores instead of holding them all."""
    group, q, d = query.shape
    if q > 1 or query.device.type != "cpu":
        n = keys.shape[0]
        return F.scaled_dot_product_attention(
            query[None], keys.expand(1, group, n, d), values.expand(1, group, n, d),
            attn_mask=None if allowed is None else allowed[None, None], scale=scale)[0]
    scores = torch.mm(query.reshape(group, d), keys.T).mul_(scale)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf")) if allowed.dtype == torch.bool else scores + allowed
    return torch.mm(torch.softmax(scores, -1, dtype=torch.float32).to(values.dtype), values).view(group, 1, d)


def _starts(sizes: list[int]) -> list[int]:
    """First row of each of consecutive segments of ``sizes`` rows."""
    return [total - size for total, size in zip(itertools.accumulate(sizes), sizes)]
