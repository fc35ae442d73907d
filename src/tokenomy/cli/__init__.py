"""The `tokenomy` command line: one module per command group; the library validates, this maps its errors
(`TokenomyError`) to exit code 2."""

from __future__ import annotations

import argparse
import sys

from tokenomy._validation import TokenomyError
from tokenomy.cli import codec, ensemble, kv, prompt, report, vision
from tokenomy.cli._common import default_json

GROUPS = (report, kv, codec, ensemble, vision, prompt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenomy", description="Make transformer models spend fewer tokens.")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core; on "
                        "a machine busy with other work, 1 is often several times faster)")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="run a benchmark").add_subparsers(dest="suite", required=True)
    for group in GROUPS:
        group.add_commands(sub, bench)
    return parser


def reference() -> str:
    """Every command's and benchmark's ``--help``, formatted at 100 columns whatever the terminal."""
    import os
    from unittest import mock

    def commands(parser: argparse.ArgumentParser, prefix: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from commands(child, f"{prefix} {name}")
                return
        yield prefix, parser

    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        parts = [f"### `{name}`\n\n```\n{parser.format_help().rstrip()}\n```"
                 for name, parser in commands(build_parser(), "tokenomy")]
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    args.reference = reference  # `report --docs` rebuilds docs/reference.md with it
    default_json(args)
    try:
        if args.threads is not None:
            import torch

            from tokenomy._validation import check_int

            torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
        code = args.func(args)
        page = os.path.splitext(args.json)[0] + ".html" if getattr(args, "suite", None) and args.json else None
        if code == 0 and page and page != args.json and os.path.exists(args.json):
            from tokenomy.bench.html import write_html

            try:
                print(f"report: {write_html([args.json], page)}")
            except Exception as err:  # the benchmark's JSON is written; a report that fails must not hide it
                print(f"tokenomy: the HTML report could not be written ({type(err).__name__}: {err}); "
                      f"`tokenomy report {args.json} --html PAGE` retries", file=sys.stderr)
        return code
    except TokenomyError as err:
        print(f"tokenomy: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenomy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tokenomy report x.json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
