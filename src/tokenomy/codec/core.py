"""LM + arithmetic coding with Equal-Info Windows (Lester et al., 2024, "Training LLMs over Neurally
Compressed Text", arXiv:2404.03626), after LLMZip (Valmeekam et al., 2023) and "Language Modeling Is
Compression" (Delétang et al., 2023).

The bytes become tokens (`ByteTokenizer`), the tokens are cut into segments of at most
``segment_tokens`` (the model's context never spans two segments), and each segment is coded:

* ``window_bits = 0``: one arithmetic-coded stream per segment;
* ``window_bits = N``: Equal-Info Windows — the coder *and the model context* restart whenever the
  stream reaches N bits, so every window is exactly N bits and decodes on its own. A token that would
  overflow the window starts the next one. The model sees only its window's tokens, which is what makes
  small windows cost compression (the price the paper pays for learnability).

Each coded unit (window, or segment) records its token count; units decode in parallel (batched through
`Engine`, whose results do not depend on the batch or thread count), and on their own at level 0.

Levels (`defaults.LEVELS`) above 0 code every segment with the model's tables mixed with predictors that
learn from what was coded so far (`online.Learner`), shared by the segments coded side by side; then the
decoder replays the same lanes in the same order. Only text goes through the model: `blocks` sends binary
stretches to a classical coder.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from tokenomy._validation import TokenomyError
from tokenomy.codec import blocks, container
from tokenomy.codec.arithmetic import Decoder, Encoder, pack_bits, unpack_bits
from tokenomy.codec.defaults import BATCH, DEFAULT_LEVEL, LEVELS, MIN_WINDOW_BITS
from tokenomy.codec.engine import exact
from tokenomy.codec.frequencies import TOTAL, cumulative, frequencies, interval, symbol_at, weights
from tokenomy.codec.online import Learner, ModelAlone
from tokenomy.codec.tokens import ByteTokenizer
from tokenomy.adapters.lm import context_length

_PROBE = "The quick brown fox, 0123."  # a few tokens: each costs one sequential model step

Progress = Callable[[int], None]


@dataclass
class Codec:
    """A model ready to code: ``name`` is what archives record (a packaged name or a path)."""

    model: object
    tokenizer: object
    name: str

    def __post_init__(self):
        vocab = self.model.get_output_embeddings().weight.shape[0]
        self.bytes = ByteTokenizer(self.tokenizer, vocab)
        self.start = start_token(self.tokenizer)
        self._fingerprint: bytes | None = None
        self._arithmetic: bytes | None = None

    def frequencies(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frequency tables over the whole alphabet (tokens, then byte escapes) and the logits'
        log-normalisers (`frequencies.frequencies`)."""
        return frequencies(logits, extra=self.bytes.alphabet - logits.shape[-1])

    def weights(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The float weights those tables are made from, and the log-normalisers (`frequencies.weights`)."""
        return weights(logits, extra=self.bytes.alphabet - logits.shape[-1])

    def predictor(self, level: int):
        """What turns the model's weights into tables at ``level``: the model alone, or a fresh `Learner`."""
        if not LEVELS[level].learns:
            return ModelAlone()
        spelled = self.bytes.symbol_bytes[: self.bytes.vocab]
        return Learner(self.bytes.alphabet, [symbol for symbol, text in enumerate(spelled) if text.isdigit()])

    def feed(self, symbol: int) -> int:
        """The token the model reads after ``symbol`` was coded (an escaped byte reads as a separator)."""
        return self.start if self.bytes.is_escape(symbol) else symbol

    def model_fingerprint(self) -> bytes:
        """8 bytes identifying the weights and the tokenizer."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
                digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
            digest.update(self.tokenizer.backend_tokenizer.to_str().encode())
            self._fingerprint = digest.digest()[:8]
        return self._fingerprint

    def arithmetic_fingerprint(self) -> bytes:
        """8 bytes summarising the exact frequency tables this machine computes for a fixed probe (computed
        beside the first coding, or here on its own)."""
        if self._arithmetic is None:
            with exact(self.model) as engine:
                _Probe(self, engine).finish()
        return self._arithmetic


class _Probe:
    """Steps `_PROBE` as one more engine row and records the arithmetic fingerprint when it ends.

    A row's results do not depend on its companions (`Engine`), so the probe can ride along with the rows
    being coded: its sequential one-token steps then cost almost nothing. ``expected``: the fingerprint an
    archive recorded; a different one stops decoding as soon as the probe ends.
    """

    def __init__(self, codec: Codec, engine, expected: bytes | None = None):
        self.codec, self.engine, self.expected = codec, engine, expected
        self.symbols = [codec.start, *codec.bytes.encode(_PROBE.encode())]
        self.digest = hashlib.sha256()
        self.row = engine.open()

    @classmethod
    def riding(cls, codec: Codec, engine, expected: bytes | None = None) -> "_Probe | None":
        """A probe for this coding run, or None when the fingerprint is already known (and matches)."""
        if codec._arithmetic is None:
            return cls(codec, engine, expected)
        _check_arithmetic(codec._arithmetic, expected)
        return None

    def next_token(self) -> int:
        return self.codec.feed(self.symbols[self.engine.lengths[self.row]])

    def take(self, logits: dict) -> "_Probe | None":
        """Consume this step's logits of the probe's row; None once the probe is over."""
        freq, _ = self.codec.frequencies(logits.pop(self.row))
        self.digest.update(cumulative(freq).numpy().tobytes())
        if self.engine.lengths[self.row] < len(self.symbols):
            return self
        self.engine.close(self.row)
        self.codec._arithmetic = self.digest.digest()[:8]
        _check_arithmetic(self.codec._arithmetic, self.expected)
        return None

    def finish(self) -> None:
        """Step the probe alone to its end."""
        probe = self
        while probe is not None:
            _, probe = _step(self.engine, {}, probe)


def _step(engine, feeds: dict[int, int], probe: _Probe | None) -> tuple[dict, _Probe | None]:
    """``engine.step(feeds)`` with the probe's row beside them: the feeds' logits, and the probe while it
    goes on."""
    if probe is not None:
        feeds[probe.row] = probe.next_token()
    logits = engine.step(feeds)
    return logits, probe and probe.take(logits)


def _check_arithmetic(actual: bytes, expected: bytes | None) -> None:
    if expected is not None and actual != expected:
        raise TokenomyError(
            "this machine's floating-point results differ from the compressing machine's (another CPU kind or "
            "torch build): the model's probabilities would not be reproduced exactly, so decoding is refused "
            "rather than producing wrong bytes"
        )


def start_token(tokenizer) -> int:
    """The token every context starts from: the document separator the model was trained after."""
    for candidate in ("<|endoftext|>", tokenizer.bos_token, tokenizer.eos_token):
        if candidate is not None and candidate in tokenizer.get_vocab():
            return tokenizer.get_vocab()[candidate]
    raise TokenomyError("the tokenizer has no BOS/EOS token to start a context from")


@dataclass
class _Unit:
    tokens: list[int]
    bits: list[int]


class _SegmentEncoder:
    """Codes one segment as a sequence of units, one token per engine step."""

    def __init__(self, tokens: list[int], window_bits: int):
        self.tokens, self.window_bits = tokens, window_bits
        self.position = 0
        self.model_bits = 0.0  # -log2 p of the coded tokens under the unquantised model
        self.units: list[_Unit] = []
        self._open_unit()

    def _open_unit(self) -> None:
        self.coder, self.current = Encoder(), []

    def _close_unit(self) -> None:
        bits = self.coder.finish()
        if self.window_bits:
            bits = bits + [0] * (self.window_bits - len(bits))
        self.units.append(_Unit(self.current, bits))

    @property
    def done(self) -> bool:
        return self.position == len(self.tokens)

    def last(self) -> int | None:
        """The last symbol coded in the current window (None at its start)."""
        return self.current[-1] if self.current else None

    def code(self, freq: torch.Tensor, logits: torch.Tensor, log_normalizer: float) -> bool:
        """Code the next token under the table ``freq``; False if it did not fit and a new window began.
        ``logits`` and their logsumexp give the model's unquantised probability (for the cross-entropy
        report)."""
        token = self.tokens[self.position]
        low, high = interval(freq, token)
        state = self.coder.snapshot()
        self.coder.encode(low, high, TOTAL)
        if self.window_bits and self.coder.bits_if_finished() > self.window_bits:
            if not self.current:
                raise AssertionError("a token always fits an empty window of >= MIN_WINDOW_BITS bits")
            self.coder.restore(state)
            self._close_unit()
            self._open_unit()
            return False
        self.current.append(token)
        self.position += 1
        if token < logits.shape[0]:
            self.model_bits += (log_normalizer - float(logits[token])) / math.log(2)
        else:  # a byte escape: the model gives it no probability of its own
            self.model_bits -= math.log2((high - low) / TOTAL)
        if self.done:
            self._close_unit()
        return True


def _segments(tokens: list[int], size: int) -> list[list[int]]:
    return [tokens[i : i + size] for i in range(0, len(tokens), size)]


def encode_tokens(codec: Codec, tokens: list[int], window_bits: int, segment_tokens: int, batch: int,
                  predictor, progress: Progress | None = None, stats: dict | None = None) -> list[_Unit]:
    """Code ``tokens``; segments are coded side by side, ``batch`` at a time, in order."""
    pending = [_SegmentEncoder(s, window_bits) for s in _segments(tokens, segment_tokens)]
    with exact(codec.model) as engine:
        probe = _Probe.riding(codec, engine)
        active: dict[int, _SegmentEncoder] = {}
        queue = list(pending)
        while queue or active:
            while queue and len(active) < batch:  # the probe rides as one more row: lanes stay ``batch``
                active[engine.open()] = queue.pop(0)
            feeds = {row: codec.start if seg.last() is None else codec.feed(seg.last()) for row, seg in active.items()}
            step, probe = _step(engine, feeds, probe)
            if not active:
                continue
            logits = torch.stack(list(step.values()))
            row_weights, normalizers = codec.weights(logits)
            tables = predictor.tables(row_weights, [seg.current for seg in active.values()])
            symbols = [seg.tokens[seg.position] for seg in active.values()]
            for (row, seg), freq, row_logits, normalizer in zip(list(active.items()), tables, logits,
                                                                 normalizers.tolist()):
                if seg.code(freq, row_logits, normalizer):
                    if progress:
                        progress(1)
                else:
                    engine.reset(row)  # the token opens the next window, from a fresh context
                if seg.done:
                    engine.close(row)
                    del active[row]
            predictor.learn(symbols)
        if probe:
            probe.finish()
    if stats is not None:
        stats["model_bits"] = sum(seg.model_bits for seg in pending)
    return [unit for seg in pending for unit in seg.units]


def decode_units(codec: Codec, units: Iterable[tuple[int, list[int]]], batch: int, predictor,
                 progress: Progress | None = None, arithmetic: bytes | None = None) -> list[list[int]]:
    """Token ids of each (token count, bits) unit, decoded side by side ``batch`` at a time (the encoder's
    lanes, when ``predictor`` learns); ``arithmetic``: the fingerprint this machine must reproduce (checked
    beside the first steps)."""
    units = list(units)
    results: list[list[int]] = [[] for _ in units]
    with exact(codec.model) as engine:
        probe = _Probe.riding(codec, engine, arithmetic)
        active: dict[int, tuple[int, Decoder]] = {}
        queue = [i for i, (count, _) in enumerate(units) if count]
        while queue or active:
            while queue and len(active) < batch:
                i = queue.pop(0)
                active[engine.open()] = (i, Decoder(units[i][1]))
            feeds = {row: codec.feed(results[i][-1]) if results[i] else codec.start for row, (i, _) in active.items()}
            step, probe = _step(engine, feeds, probe)
            if not active:
                continue
            row_weights, _ = codec.weights(torch.stack(list(step.values())))
            cums = cumulative(predictor.tables(row_weights, [results[i] for i, _ in active.values()]))
            symbols = []
            for (row, (i, decoder)), cum in zip(list(active.items()), cums):
                symbol = symbol_at(cum, decoder.target(TOTAL))
                decoder.consume(int(cum[symbol]), int(cum[symbol + 1]), TOTAL)
                results[i].append(symbol)
                symbols.append(symbol)
                if progress:
                    progress(1)
                if len(results[i]) == units[i][0]:
                    engine.close(row)
                    del active[row]
            predictor.learn(symbols)
        if probe:
            probe.finish()
    return results


def check_options(level: int, window_bits: int, segment_tokens: int | None, batch: int) -> None:
    """One clear error for bad coding options, before any model is loaded."""
    if not 0 <= level < len(LEVELS):
        valid = ", ".join(f"{i} ({lv.name})" for i, lv in enumerate(LEVELS))
        raise TokenomyError(f"--level {level} does not exist; valid levels: {valid}")
    if window_bits and window_bits < MIN_WINDOW_BITS:
        raise TokenomyError(
            f"--window-bits must be 0 (no windows) or >= {MIN_WINDOW_BITS}: a single token can need up to 28 bits "
            f"(probabilities are resolved to 2^-28), plus 2 bits to terminate; got {window_bits}"
        )
    if window_bits and LEVELS[level].learns:
        raise TokenomyError(
            f"--window-bits needs --level 0: Equal-Info Windows decode on their own, while level {level} "
            f"({LEVELS[level].name}) codes each symbol with what every segment coded before it"
        )
    if (segment_tokens is not None and segment_tokens < 1) or batch < 1:
        raise TokenomyError("segment tokens and batch must be >= 1")


def _load(codec: "Codec | str") -> Codec:
    if isinstance(codec, Codec):
        return codec
    from tokenomy.codec import load_codec

    return load_codec(codec)


def compress(codec: "Codec | str", data: bytes, level: int = DEFAULT_LEVEL, window_bits: int = 0,
             segment_tokens: int | None = None, batch: int = BATCH, progress: Progress | None = None,
             on_tokens: Callable[[int], None] | None = None, stats: dict | None = None) -> bytes:
    """Compress ``data`` into a self-describing archive. ``codec``: a `Codec`, or a model name loaded only
    if ``data`` has text; ``segment_tokens``: the level's unless given. ``stats``, if given, receives token,
    unit and block counts, the coded bits and the model's own cross-entropy in bits (``model_bits``)."""
    check_options(level, window_bits, segment_tokens, batch)
    segment_tokens = segment_tokens or LEVELS[level].segment_tokens
    runs = blocks.split(data)
    text = b"".join(data[start:end] for is_text, start, end in runs if is_text)
    units: list[_Unit] = []
    if text:
        codec = _load(codec)
        context = context_length(codec.model)
        if context is not None and segment_tokens > context:  # a segment is one context
            raise TokenomyError(
                f"--segment-tokens {segment_tokens} is longer than {codec.name}'s context of {context} tokens; "
                f"use at most {context}"
            )
        tokens = codec.bytes.encode(text)
        if on_tokens:
            on_tokens(len(tokens))
        units = encode_tokens(codec, tokens, window_bits, segment_tokens, batch, codec.predictor(level), progress,
                              stats)
        if stats is not None:
            stats["tokens"] = len(tokens)
    parts = [blocks.Block(blocks.MODEL, end - start) if is_text else blocks.classic(data[start:end])
             for is_text, start, end in runs]
    bits = [b for unit in units for b in unit.bits]
    if stats is not None:
        stats.setdefault("tokens", 0)
        stats.setdefault("model_bits", 0.0)
        stats.update(units=len(units), coded_bits=len(bits), payload_bytes=(len(bits) + 7) // 8,
                     blocks={blocks.NAMES[c]: sum(p.length for p in parts if p.coder == c) for c in blocks.NAMES})
    model = codec if text else None  # loaded above; an archive without text needs no fingerprints
    archive = container.Archive(
        model=model.name if model else (codec.name if isinstance(codec, Codec) else codec),
        model_fingerprint=model.model_fingerprint() if model else bytes(8),
        arithmetic_fingerprint=model.arithmetic_fingerprint() if model else bytes(8),
        window_bits=window_bits,
        segment_tokens=segment_tokens,
        original_size=len(data),
        sha256=container.sha256(data),
        token_counts=[len(u.tokens) for u in units],
        stream_bits=[len(u.bits) for u in units],
        payload=pack_bits(bits),
        level=level,
        lanes=batch,
        blocks=parts,
    )
    return container.dumps(archive)


def check_compatible(codec: Codec, archive: container.Archive) -> None:
    """Refuse to decode with another model (the arithmetic is checked while decoding: `_Probe`)."""
    if codec.model_fingerprint() != archive.model_fingerprint:
        raise TokenomyError(
            f"this archive was made with model {archive.model!r} (fingerprint {archive.model_fingerprint.hex()}); "
            f"the loaded model differs ({codec.model_fingerprint().hex()}): decode with the same model"
        )


def needs_model(archive: container.Archive) -> bool:
    """Whether decoding ``archive`` runs a model (it has text blocks)."""
    return any(block.coder == blocks.MODEL for block in archive.blocks)


def decompress(codec: "Codec | str | None", blob: bytes, window: int | None = None, batch: int = BATCH,
               progress: Progress | None = None) -> bytes:
    """The original bytes (all of them, or only unit ``window``'s). ``codec``: a `Codec`, a model name, or
    None for the archive's model; loaded only if the archive has text blocks. ``batch`` applies to level 0;
    a learning level replays the encoder's lanes."""
    archive = container.loads(blob)
    if archive.level >= len(LEVELS):
        raise TokenomyError(f"this archive was made at level {archive.level}, which this tokenomy does not know "
                            f"(levels 0..{len(LEVELS) - 1}): decode it with the version that made it")
    learns = LEVELS[archive.level].learns
    if window is not None:
        if learns:
            raise TokenomyError(
                f"this archive was made at level {archive.level} ({LEVELS[archive.level].name}), whose units depend "
                f"on each other (what was coded before teaches the next): decode it whole, or zip at --level 0 "
                f"with --window-bits to decode windows on their own"
            )
        if not 0 <= window < archive.units:
            raise TokenomyError(
                f"window {window} is out of range: this archive has {archive.units} (0..{archive.units - 1})")
    text = b""
    if needs_model(archive):
        codec = _load(codec or archive.model)
        check_compatible(codec, archive)
        offsets = archive.unit_offsets()
        indices = range(archive.units) if window is None else [window]
        units = [(archive.token_counts[i], unpack_bits(archive.payload, offsets[i], archive.stream_bits[i]))
                 for i in indices]
        lanes = archive.lanes if learns else batch
        decoded = decode_units(codec, units, lanes, codec.predictor(archive.level), progress,
                               archive.arithmetic_fingerprint)
        text = b"".join(codec.bytes.decode(ids) for ids in decoded)
        if window is not None:
            return text
    pieces, offset = [], 0
    for block in archive.blocks:
        if block.coder == blocks.MODEL:
            pieces.append(text[offset : offset + block.length])
            offset += block.length
        else:
            pieces.append(blocks.classic_decode(block))
    data = b"".join(pieces)
    if offset != len(text) or len(data) != archive.original_size or container.sha256(data) != archive.sha256:
        raise TokenomyError("decoded data does not match the archive's checksum: the archive is damaged")
    return data
