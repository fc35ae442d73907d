"""Lossless compression with a language model driving an arithmetic coder (`tokenomy zip` / `unzip`).

    import tokenomy.codec as tc
    blob = tc.zip_bytes(data, level=2)        # packaged SmolLM2; levels 0 (model alone) .. 2 (best)
    assert tc.unzip_bytes(blob) == data       # the archive names its model

Submodules load on first use, so `tokenomy.codec.defaults` stays importable without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {"Codec": "core", "compress": "core", "decompress": "core", "read_archive": "container"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"tokenomy.codec.{_LAZY[name]}")
        return getattr(module, "loads" if name == "read_archive" else name)
    raise AttributeError(f"module 'tokenomy.codec' has no attribute {name!r}")


def load_codec(model: str = "smollm2-135m"):
    """A `Codec` for any model `tokenomy.load` accepts; archives record ``model`` as given."""
    from tokenomy import load
    from tokenomy.codec.core import Codec

    loaded, tokenizer = load(model)
    return Codec(loaded, tokenizer, model)


def zip_bytes(data: bytes, model="smollm2-135m", **options) -> bytes:
    """Compress ``data`` (``model``: a name, loaded only if ``data`` has text, or a `Codec`); options:
    ``level``, ``window_bits`` (0 = no Equal-Info Windows), ``segment_tokens``, ``batch``."""
    from tokenomy.codec.core import compress

    return compress(model, data, **options)


def unzip_bytes(blob: bytes, model=None, **options) -> bytes:
    """Decompress an archive (with the model it names unless a name or `Codec` is given; none is loaded
    for an archive without text); options: ``window``, ``batch``."""
    from tokenomy.codec.core import decompress

    return decompress(model, blob, **options)


__all__ = ["Codec", "compress", "decompress", "load_codec", "read_archive", "unzip_bytes", "zip_bytes"]
