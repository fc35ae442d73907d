"""Benchmark output: a plain-text table for people and a JSON file for everything else."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from tokenomy._files import write_atomic


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def result_header(suite: str, args) -> dict[str, Any]:
    """The fields every benchmark JSON opens with: the suite, tokenomy's version, the exact command, the
    machine and the parsed options."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("tokenomy")
    except PackageNotFoundError:  # run from a source tree that is not installed
        release = "unknown"
    return {"suite": suite, "tokenomy": release, "command": command_line(), "environment": environment(),
            "config": {k: v for k, v in vars(args).items() if not callable(v)}}


def command_line() -> str:
    return " ".join(["tokenomy", *sys.argv[1:]]) if sys.argv else "tokenomy"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], markdown: bool = False) -> str:
    """Format dicts as an aligned table (or a Markdown one); ``columns`` are (key, header, format spec);
    columns with a format spec are numbers, right-aligned."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            line.append("-" if value is None else format(value, spec) if spec else str(value))
        cells.append(line)
    if markdown:
        rule = "|".join("---:" if spec else "---" for _, _, spec in columns)
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join([lines[0], f"|{rule}|", *lines[1:]])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, r in enumerate(cells):
        out.append("  ".join(c.rjust(w) if n and columns[i][2] else c.ljust(w)
                             for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(payload, indent=1, default=_jsonable) + "\n").encode())
    return path


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")
