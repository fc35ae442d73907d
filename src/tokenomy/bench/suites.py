"""Which module reads which benchmark JSON: `tokenomy report` renders any of them through here."""

from __future__ import annotations

import importlib
from types import ModuleType

from tokenomy._validation import check_choice

MODULES = {"kv": "kv", "kv-decode": "kv_decode", "codec": "codec", "ensemble": "ensemble", "vision": "vision", "vision-speed": "vision_speed",
           "prompt": "prompt", "lossless": "prompt"}


def suite_of(payload: dict) -> str:
    """The suite a JSON comes from (files written before every JSON named its suite: KV or codec)."""
    return payload.get("suite") or ("kv" if "aggregate" in payload else "codec")


def suite_module(suite: str) -> ModuleType:
    """The module with the suite's `render(payload, markdown)` and, where it plots, its `FIGURES`."""
    check_choice("benchmark suite", suite, MODULES)
    return importlib.import_module(f"tokenomy.bench.{MODULES[suite]}")
