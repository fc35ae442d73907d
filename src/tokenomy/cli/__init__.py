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


def main(argv: list[str] | None = None) -> int:
    import os

    parser = build_parser()
    args = parser.parse_args(argv)
    default_json(args)
    try:
        if args.threads is not None:
            import torch

            from tokenomy._validation import check_int

            torch.set_num_threads(check_int("--threads", args.threads, minimum=1))
        code = args.func(args)
        if code == 0 and getattr(args, "suite", None) and args.json and os.path.exists(args.json):
            from tokenomy.bench.html import write_html

            print(f"report: {write_html([args.json], os.path.splitext(args.json)[0] + '.html')}")
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
