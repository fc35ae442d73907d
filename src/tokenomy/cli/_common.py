"""What every command shares: list arguments, reading input, writing output, the benchmarks' JSON option."""

from __future__ import annotations

import argparse
import sys
import time

from tokenomy._validation import TokenomyError


def csv_list(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [kind(t) for t in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise TokenomyError(f"cannot read {path}: {err.strerror or err}") from err


def refuse_existing(path: str, force: bool) -> None:
    """Checked before any work, so a refusal costs nothing."""
    import os

    if path != "-" and not force and os.path.exists(path):
        raise TokenomyError(f"{path} exists; pass --force to overwrite it")


def write_output(path: str, data: bytes) -> None:
    """Write atomically (temp file + rename): a failure leaves no partial output behind."""
    from tokenomy._files import write_atomic

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        write_atomic(path, data)
    except OSError as err:
        raise TokenomyError(f"cannot write {path}: {err.strerror or err}") from err


def json_option(p: argparse.ArgumentParser, what: str) -> None:
    """Every benchmark writes its JSON (for `tokenomy report`): where asked, else a fresh file in
    ./tokenomy-results/ ($TOKENOMY_RESULTS) named after the suite and the time."""
    p.add_argument("--json", help=f"{what} (default: $TOKENOMY_RESULTS or tokenomy-results/, SUITE-DATE-TIME-PID.json)")


def default_json(args) -> None:
    import os

    if getattr(args, "suite", None) and getattr(args, "json", "") is None:
        folder = os.environ.get("TOKENOMY_RESULTS", "tokenomy-results")
        args.json = os.path.join(folder, f"{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json")


def sweep_options(p: argparse.ArgumentParser) -> None:
    """--ray and --cells: a benchmark whose samples run as `tokenomy.bench.sweep` cells."""
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run the samples as Ray tasks: on a local Ray it starts (no ADDRESS), the cluster this machine "
                        "is in (auto), or at ADDRESS; needs the ray extra")
    p.add_argument("--cells", help="where finished samples are kept until the sweep completes, so the same command "
                        "run again after an interruption resumes (default: tokenomy-results/.cells/, one folder per "
                        "sweep)")


def sample_sweep(args, suite: str, cells: list, here, remote, bar, size=len):
    """Run a benchmark's sample cells (`tokenomy.bench.sweep`): ``here`` in this process (it moves ``bar``
    itself, run by run), or ``remote`` as Ray tasks with ``--ray``, where ``bar`` moves by ``size(records)`` as
    each cell completes; finished cells kept in ``--cells`` or one folder per sweep under the results folder.
    Returns the records per cell and that folder."""
    import os

    from tokenomy.bench import sweep

    folder = args.cells or sweep.default_folder(os.environ.get("TOKENOMY_RESULTS", "tokenomy-results"), suite, cells)

    def done(cell, records, cached) -> None:
        if cached or args.ray:
            bar.update(size(records))

    return sweep.run(cells, remote if args.ray else here, folder, ray_address=args.ray, done=done), folder
