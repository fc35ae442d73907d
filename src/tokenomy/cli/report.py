"""`tokenomy methods` and `tokenomy report`: what is registered, and what benchmarks wrote."""

from __future__ import annotations

import sys

from tokenomy._validation import TokenomyError


def cmd_methods(args) -> int:
    import shutil
    import textwrap

    from tokenomy import methods
    from tokenomy.bench.report import table

    found = methods(args.site)
    rows = [{"name": m.name, "site": m.site, "query": "aware" if m.query_aware else "agnostic"} for m in found]
    columns = [("name", "method", ""), ("site", "site", ""), ("query", "query", "")]
    # The summary column wraps to the terminal (100 columns when not on one) instead of running on.
    indent = sum(max(len(h), *(len(r[k]) for r in rows)) + 2 for k, h, _ in columns) if rows else 0
    width = max(40, shutil.get_terminal_size((100, 24)).columns - indent - 1)
    lines = []
    for row, method in zip(rows, found):
        fitted = f" [fitted for {method.trained_for}: tokenomy train-kv]" if method.trained_for else ""
        first, *rest = textwrap.wrap(method.summary + fitted, width) or [""]
        blank = dict.fromkeys(row, "")
        lines += [row | {"summary": first}, *(blank | {"summary": more} for more in rest)]
    print(table(lines, [*columns, ("summary", "what it keeps", "")]))
    if args.papers:
        print()
        for method in found:
            print(f"{method.name}: {method.paper}")
    return 0


def cmd_report(args) -> int:
    import json

    from tokenomy.bench.suites import suite_module, suite_of

    if args.screenshot and not args.html:
        raise TokenomyError("--screenshot photographs the --html page: give --html OUT.html too")
    if args.check and not args.docs:
        raise TokenomyError("--check checks the generated docs tables: give --docs too")
    if args.docs:
        from pathlib import Path

        from tokenomy.bench.docs import update

        changed = update(Path.cwd(), check=args.check, cli_reference=args.reference)
        verb = "would change" if args.check else "rebuilt"
        print(f"{verb}: {', '.join(map(str, changed))}" if changed else "docs tables match their JSON files",
              file=sys.stderr)
        if args.check and changed:
            return 1
    if not args.json and not args.docs:
        raise TokenomyError("give benchmark JSON files to report on (or --docs)")
    for number, path in enumerate(args.json):
        try:
            payload = json.loads(open(path).read())
        except (OSError, ValueError) as err:
            raise TokenomyError(f"cannot read benchmark JSON {path}: {err}") from err
        if len(args.json) > 1:
            print(f"{chr(10) if number else ''}## {path}\n")
        print(suite_module(suite_of(payload)).render(payload, markdown=args.markdown))
        print(f"\n`{payload.get('command', '(command not recorded)')}`")
    if args.html:
        from tokenomy.bench.html import screenshot, write_html

        print(f"wrote {write_html(args.json, args.html)}", file=sys.stderr)
        if args.screenshot:
            print(f"wrote {screenshot(args.html, args.screenshot)}", file=sys.stderr)
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy methods', 'tokenomy report'."""
    p = sub.add_parser("methods", help="list every registered method")
    p.add_argument("--site", help="only methods of this site (e.g. kv-cache)")
    p.add_argument("--papers", action="store_true", help="also print each method's paper")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("report", help="print the tables of benchmark JSON files; --html: one page with plots")
    p.add_argument("json", nargs="*", help="files written by `tokenomy bench ...`")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (for README)")
    p.add_argument("--html", help="also write one self-contained HTML page (plots, tables, method cards) here")
    p.add_argument("--screenshot", help="and a PNG of that page, as headless Chromium renders it")
    p.add_argument("--docs", action="store_true",
                   help="rebuild the generated tables in README.md and docs/ from their JSON files (run in a checkout)")
    p.add_argument("--check", action="store_true", help="with --docs: change nothing, exit 1 if a table is stale")
    p.set_defaults(func=cmd_report)
