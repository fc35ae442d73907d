"""Sweeps whose cells run in this process or as Ray tasks on a cluster, each cell's result kept on disk so an
interrupted sweep resumes where it stopped.

A cell is one unit of a benchmark (for `bench kv`, one sample with every method and budget: they share the
sample's prefill). Its result is a list of JSON-able records, written to ``folder/<key>-<digest>.json`` when the
cell is done; the digest covers everything the cell computes from (and tokenomy's version), so a changed
setting never reuses a stale result. Results come back in cell order whatever order the cells finished in,
so a sweep merged from a cluster equals the same sweep run in one process, row for row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tokenomy import __version__
from tokenomy._files import write_atomic
from tokenomy._validation import TokenomyError


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``key`` names it (and its cache file), ``payload`` is all ``work`` needs (picklable),
    ``identity`` everything its result depends on (hashed into the cache file's name)."""

    key: str
    payload: Any
    identity: str


def _digest(text: str) -> str:
    return hashlib.sha256(f"tokenomy {__version__}|{text}".encode()).hexdigest()[:16]


def _path(folder: Path, cell: Cell) -> Path:
    return folder / f"{cell.key}-{_digest(cell.identity)}.json"


def default_folder(root: str | Path, name: str, cells: list[Cell]) -> Path:
    """Where a sweep keeps its finished cells when not told: one folder per sweep identity under ``root``, so
    the same command run again finds them."""
    return Path(root) / ".cells" / f"{name}-{_digest('|'.join(c.identity for c in cells))}"


def clear(folder: str | Path, cells: list[Cell]) -> None:
    """Remove the cells' files (a completed sweep has nothing to resume), then the folder if that empties it."""
    folder = Path(folder)
    for cell in cells:
        _path(folder, cell).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # other files live there: leave them
        pass


def connect(address: str, num_cpus: int | None = None):
    """Ray, connected: ``"local"`` starts a local instance (``num_cpus`` CPUs, default all), ``"auto"`` joins
    the cluster this machine belongs to, anything else is a cluster address (``host:port`` or ``ray://...``)."""
    try:
        import ray
    except ImportError:
        raise TokenomyError("--ray needs Ray: pip install 'tokenomy[ray]'") from None
    if not ray.is_initialized():
        if address == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def run(cells: list[Cell], work: Callable[[Any], list[dict]], folder: str | Path, *, ray_address: str | None = None,
        num_cpus: int | None = None, done: Callable[[Cell, list[dict], bool], None] = lambda cell, records, cached: None
        ) -> list[list[dict]]:
    """Each cell's records, in cell order. Cells with a result in ``folder`` are not run again; the others run
    here one after another, or as Ray tasks (``ray_address``, see `connect`). ``done(cell, records, cached)``
    hears of each cell as it completes."""
    keys = [cell.key for cell in cells]
    if len(set(keys)) != len(keys) or any(not k.replace("-", "").replace("_", "").isalnum() for k in keys):
        raise TokenomyError("sweep cells need distinct keys of letters, digits, '-' and '_'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    todo = []
    for cell in cells:
        path = _path(folder, cell)
        if path.exists():
            results[cell.key] = json.loads(path.read_text())
            done(cell, results[cell.key], True)
        else:
            todo.append(cell)

    def finish(cell: Cell, records: list[dict]) -> None:
        text = json.dumps(records)
        write_atomic(_path(folder, cell), text.encode())  # a cell's file exists only once its whole result does
        results[cell.key] = json.loads(text)  # as a resumed sweep reads it back
        done(cell, results[cell.key], False)

    if ray_address is None:
        for cell in todo:
            finish(cell, work(cell.payload))
    elif todo:
        ray = connect(ray_address, num_cpus)
        remote = ray.remote(num_cpus=1)(work)  # Ray gives such a task OMP_NUM_THREADS=1: torch uses one core
        pending = {remote.remote(cell.payload): cell for cell in todo}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                cell = pending.pop(ready[0])
                try:
                    records = ray.get(ready[0])
                except ray.exceptions.RayTaskError as err:
                    raise TokenomyError(f"cell {cell.key} failed on the cluster: {err}") from err
                finish(cell, records)
        finally:
            for ref in pending:  # an error or Ctrl-C: stop what is still queued (finished cells stay on disk)
                ray.cancel(ref)
    return [results[cell.key] for cell in cells]
