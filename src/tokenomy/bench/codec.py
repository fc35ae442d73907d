"""`tokenomy bench codec`: LM + arithmetic coding against classic compressors on the same bytes.

For each input and level (and window size, at level 0): compressed size, bits per byte, ratio, encode and
decode throughput, and an exact round trip (checked, never assumed). The model's own cross-entropy in bits
per byte — the size an ideal coder would reach with the model alone on the same contexts — is reported next
to the coded size: learning levels code below it. Classic compressors (gzip -9, bzip2 -9, xz -9e, zstd -19,
brotli -11 where installed) run on the same bytes. Besides files, generated inputs (`GENERATED`: random and
already-compressed megabytes, text with binary inside, a server log, Python sources) are named ``gen:NAME``.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from tokenomy._validation import TokenomyError
from tokenomy.bench.report import table
from tokenomy.codec.core import Codec, compress, decompress
from tokenomy.codec.defaults import LEVELS
from tokenomy.bench.html import Axis, Figure, key

def default_files() -> list[str]:
    """What a bare `tokenomy bench codec` measures, on any machine in about two minutes: the packaged Alice (prose)
    and a generated server log (repetitive text)."""
    from importlib import resources

    return [str(resources.files("tokenomy").joinpath("data/alice29.txt.gz")), "gen:server.log"]


def _packaged_alice() -> bytes:
    from importlib import resources

    return gzip.decompress(resources.files("tokenomy").joinpath("data/alice29.txt.gz").read_bytes())


def _python_sources() -> bytes:
    """The standard library's ``json`` package, file after file: real code from a Python install."""
    import json

    root = Path(json.__file__).parent
    return b"".join(path.read_bytes() for path in sorted(root.glob("*.py")))


def _words(size: int) -> bytes:
    """``size`` bytes of the book's words in a seeded random order: text a classical coder halves."""
    vocabulary = sorted(set(_packaged_alice().split()))
    rng = random.Random(2)
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(vocabulary, k=256)) + b"\n"
    return bytes(out[:size])


def _server_log() -> bytes:
    from tokenomy.bench.prompt import logs

    return logs(1, 0, lines=400)[0].context.encode()


GENERATED: dict[str, Callable[[], bytes]] = {
    "random.bin": lambda: random.Random(0).randbytes(1 << 20),
    "compressed.gz": lambda: gzip.compress(_words(3 << 20), 9, mtime=0)[: 1 << 20],
    "mixed.bin": lambda: _packaged_alice()[:16384] + random.Random(1).randbytes(16384) + _packaged_alice()[16384:32768],
    "server.log": _server_log,
    "json-sources.py": _python_sources,
}


def classic() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Classic compressors at their strongest settings: name -> (compress, decompress)."""
    out = {
        "gzip -9": (lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
        "bzip2 -9": (lambda d: bz2.compress(d, 9), bz2.decompress),
        "xz -9e": (lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),
    }
    try:
        import zstandard

        out["zstd -19"] = (zstandard.ZstdCompressor(level=19).compress, zstandard.ZstdDecompressor().decompress)
    except ImportError:
        pass
    try:
        import brotli

        out["brotli -11"] = (lambda d: brotli.compress(d, quality=11), brotli.decompress)
    except ImportError:
        pass
    return out


@dataclass
class Result:
    file: str
    size: int
    method: str
    window_bits: int | None
    compressed: int
    bits_per_byte: float
    ratio: float
    encode_bytes_per_second: float
    decode_bytes_per_second: float
    round_trip: bool
    model_bits_per_byte: float | None = None  # the model's cross-entropy with the same contexts
    units: int | None = None
    extra: dict = field(default_factory=dict)


def _rate(size: int, seconds: float) -> float:
    return size / seconds if seconds > 0 else float("inf")


def run_classic(name: str, path: str, data: bytes, repeats: int) -> Result:
    comp, decomp = classic()[name]
    encode_times, decode_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        blob = comp(data)
        encode_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = decomp(blob)
        decode_times.append(time.perf_counter() - start)
    return Result(path, len(data), name, None, len(blob), 8 * len(blob) / len(data), len(data) / len(blob),
                  _rate(len(data), statistics.median(encode_times)), _rate(len(data), statistics.median(decode_times)),
                  back == data)


def run_tokenomy(codec: Codec, path: str, data: bytes, level: int, window_bits: int, segment_tokens: int | None,
                 batch: int, progress=None) -> Result:
    stats: dict = {}
    start = time.perf_counter()
    blob = compress(codec, data, level=level, window_bits=window_bits, segment_tokens=segment_tokens, batch=batch,
                    progress=progress, stats=stats)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    back = decompress(codec, blob, batch=batch, progress=progress)
    decode_s = time.perf_counter() - start
    text = sum(n for coder, n in stats["blocks"].items() if coder == "model")
    return Result(
        path, len(data), f"tokenomy {level} {LEVELS[level].name}", window_bits, len(blob), 8 * len(blob) / len(data),
        len(data) / len(blob), _rate(len(data), encode_s), _rate(len(data), decode_s), back == data,
        model_bits_per_byte=stats["model_bits"] / text if text else None, units=stats["units"],
        extra={"level": level, "tokens": stats["tokens"], "payload_bytes": stats["payload_bytes"],
               "table_and_header_bytes": len(blob) - stats["payload_bytes"], "coded_bits": stats["coded_bits"],
               "model_bits": stats["model_bits"], "blocks": stats["blocks"],
               "segment_tokens": segment_tokens or LEVELS[level].segment_tokens, "lanes": batch,
               "host": platform.node()},
    )


_CODECS: dict[str, Codec] = {}


def codec_for(model: str) -> Codec:
    """``model``'s codec, loaded once per process."""
    from tokenomy.codec import load_codec

    if model not in _CODECS:
        _CODECS[model] = load_codec(model)
    return _CODECS[model]


def run_cell(payload: tuple, progress=None) -> list[dict]:
    """One level (and window size) on one input, encoded and decoded (a `tokenomy.bench.sweep` cell, run here or
    in a Ray worker): ``(model, name, data, level, window_bits, segment_tokens, batch)`` -> its `Result` as a
    dict. Speeds are those of the machine that ran it (``extra["host"]``)."""
    model, *setting = payload
    return [asdict(run_tokenomy(codec_for(model), *setting, progress))]


def read_inputs(paths: list[str], max_bytes: int | None) -> list[tuple[str, bytes]]:
    """Each path's bytes (``.gz`` files decompressed; ``gen:NAME`` one of `GENERATED`), cut to ``max_bytes``."""
    inputs = []
    for path in paths:
        if path.startswith("gen:"):
            if path[4:] not in GENERATED:
                raise TokenomyError(f"unknown generated input {path!r}; choose from: "
                                    f"{', '.join('gen:' + name for name in GENERATED)}")
            data = GENERATED[path[4:]]()
        else:
            try:
                data = Path(path).read_bytes()
            except OSError as err:
                raise TokenomyError(f"cannot read {path}: {err.strerror or err}") from err
            if path.endswith(".gz"):
                data = gzip.decompress(data)
        if not data:
            raise TokenomyError(f"{path} is empty: nothing to measure")
        inputs.append((path, data[:max_bytes] if max_bytes else data))
    return inputs


COLUMNS = [
    ("file", "file", ""), ("method", "method", ""), ("window", "window", ""), ("size", "bytes", "d"),
    ("compressed", "compressed", "d"), ("bits_per_byte", "bits/byte", ".3f"),
    ("model_bits_per_byte", "model CE", ".3f"), ("coding_excess", "coded vs CE", "+.2%"), ("vs_xz", "xz/this", ".2f"),
    ("encode_kbps", "enc KB/s", ".1f"), ("decode_kbps", "dec KB/s", ".1f"), ("round_trip", "exact", ""),
]


def summarize(results: list[Result]) -> list[dict]:
    """Table rows: each result with its window label, throughput in KB/s, size relative to xz, and the
    coded bit streams (header and window table excluded) relative to the model's cross-entropy."""
    rows = []
    for r in results:
        xz = next(x for x in results if x.file == r.file and x.method == "xz -9e")
        window = "-" if r.window_bits is None else ("none" if r.window_bits == 0 else str(r.window_bits))
        if r.extra.get("model_bits") and r.extra["coded_bits"]:
            excess = r.extra["coded_bits"] / r.extra["model_bits"] - 1
        else:
            excess = None
        rows.append(asdict(r) | {
            "window": window, "vs_xz": xz.compressed / r.compressed, "coding_excess": excess,
            "encode_kbps": r.encode_bytes_per_second / 1000, "decode_kbps": r.decode_bytes_per_second / 1000,
        })
    return rows


def render(payload: dict, markdown: bool = False) -> str:
    return table(payload["results"], COLUMNS, markdown)


FIGURES = [Figure("size vs speed (every file)", Axis(key("encode_kbps"), "encode speed, KB/s", "high", log=True),
                  Axis(key("bits_per_byte"), "bits per byte", "low"),
                  series=lambda r: r["method"] + (f" window {r['window']}" if r.get("window") not in (None, "-") else ""),
                  peer=lambda r: not r["method"].startswith("tokenomy"))]
