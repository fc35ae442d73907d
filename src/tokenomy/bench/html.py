"""`tokenomy report RESULTS... --html OUT.html`: one self-contained page for benchmark JSON files.

Plots are matplotlib SVG, inlined: matplotlib is already a dependency, SVG needs no script or network at view
time, stays sharp at any zoom, and each point carries an SVG ``<title>`` that the browser shows on hover (the
row it comes from). Every suite says what to plot in its module (`Figure`s named ``FIGURES``); this module
knows no suite.
"""

from __future__ import annotations

import html
import io
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SVG = "http://www.w3.org/2000/svg"
OURS = ["#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#ff7f0e",
        "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354", "#756bb1"]
PEERS = ["#555555", "#999999", "#000000", "#bbbbbb"]  # peers in greys, with crosses: never mistaken for ours


@dataclass(frozen=True)
class Axis:
    """One axis of a figure: the value a row gives (None: the row has no point), its label, and which way
    is better (``"low"`` or ``"high"``: the Pareto front follows it)."""

    value: Callable[[dict], float | None]
    label: str
    better: str
    log: bool = False


@dataclass(frozen=True)
class Figure:
    """A scatter of a suite's result rows, one series per `series(row)`, peers (``peer(row)``) apart."""

    title: str
    x: Axis
    y: Axis
    series: Callable[[dict], str]
    peer: Callable[[dict], bool] = lambda row: False
    rows: Callable[[dict], list[dict]] = lambda payload: payload.get("results", [])


def key(name: str, scale: float = 1.0) -> Callable[[dict], float | None]:
    """A row's numeric field ``name`` (times ``scale``), or None where it is missing."""
    return lambda row: None if row.get(name) is None else float(row[name]) * scale


def _hover(row: dict) -> str:
    return "\n".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()
                     if not isinstance(v, (list, dict)))


def _pareto(points: list[tuple[float, float]], x_better: str, y_better: str) -> list[tuple[float, float]]:
    """The points no other point beats on both axes, in x order."""
    sx = 1 if x_better == "low" else -1
    sy = 1 if y_better == "low" else -1
    front, best = [], None
    for x, y in sorted(set(points), key=lambda p: (sx * p[0], sy * p[1])):
        if best is None or sy * y < best:
            front.append((x, y))
            best = sy * y
    return front


def figure_svg(figure: Figure, payload: dict, name: str = "f") -> tuple[str, int]:
    """The figure as inline SVG (no rows with both values: ``""``), and how many series it drew. Each series is
    a group with id ``NAME-series-N``; each point has a hover title. The same rows give the same SVG."""
    import matplotlib
    from matplotlib.figure import Figure as Canvas

    groups: dict[str, list[tuple[float, float, dict]]] = {}
    for row in figure.rows(payload):
        x, y = figure.x.value(row), figure.y.value(row)
        if x is not None and y is not None:
            groups.setdefault(figure.series(row), []).append((x, y, row))
    if not groups:
        return "", 0
    canvas = Canvas(figsize=(6.2, 4.0), dpi=96)
    ax = canvas.subplots()
    titles: dict[str, str] = {}
    ours = peers = 0
    for n, (series_label, points) in enumerate(groups.items()):
        points.sort(key=lambda p: p[0])
        is_peer = figure.peer(points[0][2])
        colour = PEERS[peers % len(PEERS)] if is_peer else OURS[ours % len(OURS)]
        peers, ours = peers + is_peer, ours + (not is_peer)
        ax.plot([p[0] for p in points], [p[1] for p in points], "--" if is_peer else "-", color=colour, lw=1.2,
                marker="X" if is_peer else "o", ms=7 if is_peer else 5, label=series_label, gid=f"{name}-series-{n}")
        for m, (x, y, row) in enumerate(points):  # invisible, larger targets that carry the hover text
            ax.plot([x], [y], "o", ms=10, alpha=0.0, gid=f"{name}-point-{n}-{m}")
            titles[f"{name}-point-{n}-{m}"] = f"{series_label}\n{_hover(row)}"
    front = _pareto([(x, y) for pts in groups.values() for x, y, _ in pts], figure.x.better, figure.y.better)
    ax.plot([p[0] for p in front], [p[1] for p in front], ":", color="#f0a030", lw=2.5, alpha=0.6,
            zorder=0, label="Pareto front", gid=f"{name}-pareto")
    ax.legend(fontsize=7, loc="best", framealpha=0.85, ncol=2 if len(groups) > 8 else 1)
    if figure.x.log:
        ax.set_xscale("log")
    if figure.y.log:
        ax.set_yscale("log")
    ax.set_xlabel(f"{figure.x.label} ({figure.x.better}er is better)", fontsize=9)
    ax.set_ylabel(f"{figure.y.label} ({figure.y.better}er is better)", fontsize=9)
    ax.set_title(figure.title, fontsize=10)
    ax.grid(alpha=0.3)
    canvas.tight_layout()
    out = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name}):  # ids from the name, not random: same rows, same SVG
        canvas.savefig(out, format="svg", metadata={"Date": None})
    ET.register_namespace("", SVG)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    root = ET.fromstring(out.getvalue())
    for element in root.iter():
        text = titles.get(element.get("id", ""))
        if text is not None:
            title = ET.Element(f"{{{SVG}}}title")
            title.text = text
            element.insert(0, title)
    for attribute in ("width", "height"):  # scale with the page
        root.attrib.pop(attribute, None)
    root.set("class", "plot")
    return ET.tostring(root, encoding="unicode"), len(groups)


def _method_cards(names: set[str]) -> str:
    from tokenomy.catalog import get, methods

    known = {m.name for m in methods()}
    cards = []
    for name in sorted(n for n in names if n in known):
        info = get(name)
        options = ", ".join(f"{k}={v!r}" for k, v in info.options().items()) or "none"
        cards.append(f'<div class="card"><h4>{html.escape(name)} <span>{html.escape(info.site)}</span></h4>'
                     f"<p>{html.escape(info.summary)}</p><p class=\"paper\">{html.escape(info.paper)}</p>"
                     f"<p class=\"options\">options: {html.escape(options)}</p></div>")
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _section(path: str, payload: dict, number: int) -> tuple[str, int]:
    from tokenomy.bench.suites import suite_of, suite_module

    suite = suite_of(payload)
    module = suite_module(suite)
    plots, series = [], 0
    for index, figure in enumerate(getattr(module, "FIGURES", [])):
        svg, drawn = figure_svg(figure, payload, f"s{number}f{index}")
        plots.append(svg)
        series += drawn
    names = {part.split(":")[0] for r in payload.get("results", payload.get("aggregate", []))
             for part in str(r.get("method", "")).split("+")}  # stacked visual methods: "divprune+fastv:K=2"
    environment = payload.get("environment", {})
    machine = ", ".join(f"{k} {v}" for k, v in environment.items() if v is not None)
    body = (f'<section id="s{number}"><h2>{html.escape(suite)}: '
            f"{html.escape(Path(path).name)}</h2>"
            f"<p class=\"command\"><code>{html.escape(payload.get('command', ''))}</code></p>"
            f"<p class=\"machine\">{html.escape(machine)}</p>"
            f'<div class="plots">{"".join(plots)}</div>'
            f"<pre>{html.escape(module.render(payload))}</pre>{_method_cards(names)}</section>")
    return body, series


STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1320px; padding: 1.2em 2em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav a { margin-right: 1em; } code { background: #f4f4f4; padding: 0.1em 0.3em; border-radius: 3px; }
.machine { color: #666; font-size: 0.85em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plot { width: 620px; max-width: 100%; height: auto; }
pre { background: #fafafa; border: 1px solid #eee; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 0.9em; background: #fcfcff; }
.card h4 { margin: 0.2em 0; } .card h4 span { color: #888; font-weight: normal; font-size: 0.85em; }
.card p { margin: 0.3em 0; font-size: 0.9em; } .paper, .options { color: #555; }
"""


def render_html(paths: list[str]) -> tuple[str, int]:
    """The page for benchmark JSON ``paths`` (in order), and the number of series it plots."""
    from tokenomy._validation import TokenomyError

    sections, series = [], 0
    if not paths:
        raise TokenomyError("an HTML report needs at least one benchmark JSON file")
    for number, path in enumerate(paths):
        try:
            payload: dict[str, Any] = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise TokenomyError(f"cannot read benchmark JSON {path}: {err}") from err
        body, drawn = _section(path, payload, number)
        sections.append(body)
        series += drawn
    nav = " ".join(f'<a href="#s{n}">{html.escape(Path(p).stem)}</a>' for n, p in enumerate(paths))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>tokenomy results</title>"
            f"<style>{STYLE}</style></head><body><h1>tokenomy results</h1><p>Quality against what is kept and "
            f"against time; peers in grey with crosses, the Pareto front dotted. Hover a point for its row.</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</body></html>\n")
    return page, series


def find_browser() -> str | None:
    """Chromium (Debian's ``chromium``), or Chrome, on PATH."""
    import shutil

    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def screenshot(page: str | Path, png: str | Path, width: int = 1400, height: int = 2000) -> Path:
    """A PNG of ``page`` as headless Chromium renders it (Debian's ``chromium``, or Chrome)."""
    import subprocess

    from tokenomy._validation import TokenomyError

    browser = find_browser()
    if browser is None:
        raise TokenomyError("a screenshot needs Chromium: apt-get install chromium (or put chrome on PATH)")
    png = Path(png).absolute()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)  # an old picture must not pass for a new one
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={width},{height}", f"--screenshot={png}", Path(page).absolute().as_uri()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise TokenomyError(f"Chromium took over 120 s to render {page}") from None
    if done.returncode != 0 or not png.exists():
        raise TokenomyError(f"Chromium could not take the screenshot: {done.stderr.strip()[-400:]}")
    from PIL import Image

    with Image.open(png) as shot:  # 256 colours: a page of flat colours looks the same at a fraction of the size
        small = shot.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    small.save(png, optimize=True)
    return png


def write_html(paths: list[str], out: str | Path) -> Path:
    """Write the page for ``paths`` to ``out`` (folders made as needed)."""
    from tokenomy._files import write_atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, render_html(paths)[0].encode())
    return out
