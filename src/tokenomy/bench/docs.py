"""`tokenomy report --docs`: the tables in README and docs/ are generated, so they cannot drift from the data.

A generated block sits between two HTML comments that Markdown does not show:

    <!-- results benchmarks/prompt-lossless.json -->      the suite's own table of that JSON file
                                                           (``... .json overall``: its first table only)
    <!-- draws A.json B.json -->                           the same command on several draws (seeds): correct
                                                           answers per draw, summed, relative to the reference row
                                                           (``A.json+A2.json``: one draw from runs of their own)
    ...
    <!-- /results -->

    <!-- methods -->                                       every registered method: name, site, what it keeps, paper
                                                           (its short name and arXiv links)
    <!-- cli -->                                           every command's --help (given by the CLI: `reference`)
    <!-- api -->                                           the public functions and classes, with their docstrings
    <!-- manifest -->                                      every benchmarks/*.json: suite, command, the pages citing it
    <!-- headlines SPEC.json -->                           one row per entry of SPEC: a claim filled in from the
                                                           one row of a benchmark JSON that matches its ``where``
    ...
    <!-- /methods -->

Everything outside the markers is written by hand and left alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from tokenomy._files import write_atomic
from tokenomy._validation import TokenomyError, check_choice

BLOCK = re.compile(r"(<!-- (results|draws|headlines|methods|cli|api|manifest)(?: ([^\n]*?))? -->\n)(.*?)(<!-- /\2 -->)",
                   re.S)
API_MODULES = ("tokenomy", "tokenomy.codec", "tokenomy.ensemble")


def methods_table() -> str:
    """Every registered method as a Markdown table (name, site, what it keeps, paper), by site then name."""
    from tokenomy.catalog import methods

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| method | site | what it keeps | paper |", "|---|---|---|---|"]
    lines += [f"| `{m.name}` | {m.site} | {cell(m.summary)} | {cell(_paper(m.paper))} |" for m in methods()]
    return "\n".join(lines)


def _paper(reference: str) -> str:
    """A paper's short name (the title's part before its colon, else the title; authors and year when that is
    long) with its arXiv links."""
    title, _, cited = reference.partition(" (")
    short = title.split(":")[0] if ":" in title and len(title.split(":")[0]) <= 45 else title
    cited = [part for part in cited.rstrip(")").split(", ") if not part.startswith("arXiv")]
    if len(short) > 45 and len(cited) >= 2:  # "(VATP; Guo et al., 2024, ...)" -> VATP, "(Xiao et al., 2023, ...)"
        short = cited[0].split(";")[0] if ";" in cited[0] else ", ".join(cited[:2])
    links = [f"[{number}](https://arxiv.org/abs/{number})" for number in re.findall(r"arXiv:\s?(\d{4}\.\d{4,5})",
                                                                                   reference)]
    return " ".join([short, *links])


def api_reference() -> str:
    """The signature and docstring of every public name of `API_MODULES` that is a function or a class."""
    import importlib
    import inspect

    parts = []
    for module_name in API_MODULES:
        module = importlib.import_module(module_name)
        for name in sorted(getattr(module, "__all__", [])):
            item = getattr(module, name)
            if not (inspect.isfunction(item) or inspect.isclass(item)):
                continue
            try:  # annotations are strings here (postponed evaluation): shown without their quotes
                signature = re.sub(r"""(: |-> )"?'([^']*)'"?""", r"\1\2", str(inspect.signature(item)))
            except (TypeError, ValueError):
                signature = "(...)"
            doc = inspect.getdoc(item) or ""
            parts.append(f"### `{module_name}.{name}{signature}`\n\n{doc}")
    return "\n\n".join(parts)


def _cited(text: str) -> set[str]:
    """Names of benchmark files a page cites, with ``{a,b}`` alternatives expanded."""
    names = set()
    for reference in re.findall(r"benchmarks/([\w.{},-]+?\.(?:json|png))", text):
        expanded = [reference]
        while any("{" in r for r in expanded):
            done = []
            for r in expanded:
                match = re.search(r"\{([^{}]*)\}", r)
                done += [r[:match.start()] + alt + r[match.end():] for alt in match.group(1).split(",")] if match \
                    else [r]
            expanded = done
        names.update(expanded)
    return names


def manifest(root: Path) -> str:
    """Every benchmark JSON under ``root/benchmarks``: its suite, the command that wrote it, and the pages
    that cite it (README, docs/)."""
    from tokenomy.bench.suites import suite_of

    citing = {path: _cited(path.read_text()) for path in documents(root) if path.parent.name != "benchmarks"}
    lines = ["| file | suite | command | cited in |", "|---|---|---|---|"]
    for path in sorted((root / "benchmarks").glob("*.json")):
        payload = json.loads(path.read_text())
        if not isinstance(payload, dict) or "command" not in payload:  # not a benchmark's output (headlines)
            continue
        pages = [p.relative_to(root).as_posix() for p, names in citing.items() if path.name in names]
        command = payload.get("command", "").replace("|", "\\|")
        lines.append(f"| `{path.name}` | {suite_of(payload)} | `{command}` | {', '.join(pages) or '-'} |")
    return "\n".join(lines)


def headlines(root: Path, spec: Path) -> str:
    """A table of claims, each filled in (``str.format``) from the one result row of its benchmark file that
    matches every ``where`` pair; entries: ``capability``, ``file``, ``where``, ``claim``."""
    try:
        entries = json.loads(spec.read_text())
    except (OSError, ValueError) as err:
        raise TokenomyError(f"cannot read the headlines spec {spec}: {err}") from err
    lines = ["| capability | result | data |", "|---|---|---|"]
    for entry in entries:
        payload = json.loads((root / entry["file"]).read_text())
        rows = [r for r in payload.get("results", payload.get("aggregate", []))
                if all(r.get(k) == v for k, v in entry["where"].items())]
        if len(rows) != 1:
            raise TokenomyError(f"{spec}: {entry['where']} matches {len(rows)} rows of {entry['file']}, not one")
        lines.append(f"| {entry['capability']} | {entry['claim'].format(**rows[0])} | "
                     f"[{Path(entry['file']).name}]({entry['file']}) |")
    return "\n".join(lines)


def results_table(path: Path) -> str:
    """The Markdown table(s) `tokenomy report --markdown` prints for one benchmark JSON."""
    from tokenomy.bench.suites import suite_module, suite_of

    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TokenomyError(f"a docs table names {path}, which cannot be read: {err}") from err
    return suite_module(suite_of(payload)).render(payload, markdown=True)


_IDENTITY = ("task", "setting", "method", "keep", "rate")  # what names a row of a results table (the rest is measured)


def _draw_rows(root: Path, draw: str) -> tuple[dict, object]:
    """One draw's rows by identity, and the suite module that wrote them: ``A.json`` or ``A.json+B.json`` (a
    later run on the same samples: its rows replace the earlier file's, but for the reference row, which stays
    the first file's; rows new to it are appended)."""
    from tokenomy.bench.suites import suite_module, suite_of

    rows: dict[tuple, dict] = {}
    module = None
    for path in draw.split("+"):
        try:
            payload = json.loads((root / path).read_text())
        except (OSError, ValueError) as err:
            raise TokenomyError(f"a draws block names {path}, which cannot be read: {err}") from err
        found = payload.get("aggregate") or payload.get("results") or []
        if not found or not {"accuracy", "samples", "method"} <= set(found[0]) or found[0]["accuracy"] is None:
            raise TokenomyError(f"{path}: a draws block needs result rows with method, accuracy and samples")
        module = suite_module(suite_of(payload))
        for row in found:
            key = tuple((k, row[k]) for k in _IDENTITY if k in row)
            if key not in rows or row["method"] != module.REFERENCE:
                rows[key] = row
    return rows, module


def draws_table(root: Path, draws: list[str]) -> str:
    """Several draws of one benchmark side by side: for each row of the first draw (task or setting, method,
    budget), the correct answers in each draw, their total, that total relative to the reference's (the
    suite's ``REFERENCE`` row: the full cache, the original prompt), then the suite's ``DRAW_COLUMNS``
    (one value, or the range over the draws)."""
    if len(draws) < 2:
        raise TokenomyError(f"a draws block compares two or more JSON files, got {draws}")
    tables, modules = zip(*(_draw_rows(root, draw) for draw in draws))
    module = modules[0]
    measured = getattr(module, "DRAW_COLUMNS", [])
    keys = [k for k, _ in next(iter(tables[0]))]

    def correct(row: dict) -> int:
        return round(row["accuracy"] * row["samples"])

    def group(key: tuple) -> tuple:  # the rows a reference row stands for: same task, same setting
        return tuple((k, v) for k, v in key if k in ("task", "setting"))

    def spread(values: list, fmt: str) -> str:
        shown = sorted(set(format(v, fmt) for v in values if v is not None), key=lambda t: float(t.rstrip("%")))
        return "-" if not shown else shown[0] if len(shown) == 1 else f"{shown[0]}–{shown[-1]}"

    lines = ["| " + " | ".join([*keys, *(f"draw {i + 1}" for i in range(len(draws))), "total", "rel",
                                *(header for _, header, _ in measured)]) + " |",
             "|" + "---|" * len(keys) + "---:|" * (len(draws) + 2 + len(measured))]
    for key in tables[0]:
        found = [table.get(key) for table in tables]
        if any(row is None for row in found):
            raise TokenomyError(f"a draws block: {dict(key)} is not in every draw of {draws}")
        total, samples = sum(map(correct, found)), sum(row["samples"] for row in found)
        base = sum(correct(r) for table in tables for k, r in table.items()
                   if r["method"] == module.REFERENCE and group(k) == group(key))
        cells = [f"{v:g}" if isinstance(v, float) else str(v) for _, v in key]
        cells += [f"{correct(row)}/{row['samples']}" for row in found]
        cells += [f"{total}/{samples}", f"{total / base:.3f}" if base else "-"]
        cells += [spread([row.get(field) for row in found], fmt) for field, _, fmt in measured]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def regenerate(text: str, root: Path, cli_reference: Callable[[], str] | None = None) -> str:
    """``text`` with every generated block rebuilt (JSON paths are relative to ``root``, the checkout;
    ``cli_reference`` gives the CLI's help, which only the CLI knows)."""

    def rebuild(match: re.Match) -> str:
        opening, kind, argument, _, closing = match.groups()
        if kind == "manifest":
            body = manifest(root)
        elif kind == "draws":
            body = draws_table(root, (argument or "").split())
        elif kind == "headlines":
            body = headlines(root, root / (argument or "").strip())
        elif kind == "cli":
            if cli_reference is None:
                raise TokenomyError("a cli block is rebuilt by `tokenomy report --docs` (it needs the CLI's help)")
            body = cli_reference()
        elif kind in ("methods", "api"):
            body = {"methods": methods_table, "api": api_reference}[kind]()
        else:
            if not argument:
                raise TokenomyError(f"a results block needs a JSON path: {opening.strip()}")
            path, *flags = argument.split()
            check_choice("a results block's flag", " ".join(flags) or "overall", ["overall"])
            body = results_table(root / path)
            if flags:  # the overall table (and its notes) without the per-length ones after it
                body = body.split("\n\n")[0]
        return f"{opening}{body}\n{closing}"

    return BLOCK.sub(rebuild, text)


def documents(root: Path) -> list[Path]:
    """README.md, every page under docs/, and benchmarks/README.md (the manifest)."""
    manifest_page = root / "benchmarks" / "README.md"
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *([manifest_page] if manifest_page.exists() else [])]


def update(root: Path, check: bool = False, cli_reference: Callable[[], str] | None = None) -> list[Path]:
    """Rebuild the generated blocks of every document under ``root``; the files that changed (with ``check``:
    that would change, none written)."""
    if not (root / "README.md").is_file() or not (root / "docs").is_dir():
        raise TokenomyError(f"--docs runs in a tokenomy checkout (README.md and docs/), not in {root}")
    changed = []
    for path in documents(root):
        text = path.read_text()
        new = regenerate(text, root, cli_reference)
        if new != text:
            changed.append(path)
            if not check:
                write_atomic(path, new.encode())
    return changed
