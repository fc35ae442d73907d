"""`tokenomy report --html`: a self-contained page whose plots a real browser draws, one series per method."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from tokenomy.bench.html import OURS, PEERS, _pareto, find_browser, render_html, screenshot
from tokenomy.cli import main

ROWS = [  # a prompt benchmark: three of ours at two rates, one peer, the original
    {"method": "original", "rate": 1.0, "ratio": 1.0, "accuracy": 1.0, "relative": 1.0, "end_to_end_ms": 2800},
    *({"method": m, "rate": r, "ratio": 1 / r, "accuracy": a, "relative": a, "end_to_end_ms": t}
      for m, base, t in [("distilled", 1.0, 1300), ("ehpc", 0.9, 1600)]
      for r, a in [(0.33, base), (0.5, min(1.0, base + 0.05))]),
    {"method": "llmlingua (package)", "rate": 0.33, "ratio": 3.1, "accuracy": 0.06, "relative": 0.06,
     "end_to_end_ms": 7400},
]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "prompt.json"
    path.write_text(json.dumps({"suite": "prompt", "command": "tokenomy bench prompt --task niah",
                                "environment": {"torch": "2.13.0"}, "results": ROWS}))
    return path


def test_the_page_plots_every_series_and_stands_alone(results):
    page, series = render_html([str(results)])
    assert series == 2 * 4  # two figures x (original, distilled, ehpc, the peer)
    assert page.count('-series-') == series
    assert render_html([str(results)])[0] == page  # the same rows, the same page
    assert page.count("<title>") == 1 + 2 * len(ROWS)  # the page's, then one hover text per point and figure
    assert "llmlingua (package)\nmethod: llmlingua (package)" in page
    for outside in ("<script", "<link", "src=\"http", "href=\"http"):
        assert outside not in page
    assert "Evaluator Heads" in page  # ehpc's method card, from the registry


def test_pareto_front_keeps_only_unbeaten_points():
    points = [(0.3, 1.0), (0.5, 0.9), (0.5, 1.0), (1.0, 1.0), (0.2, 0.5)]
    assert _pareto(points, "low", "high") == [(0.2, 0.5), (0.3, 1.0)]
    assert _pareto([(10.0, 2.0), (1.0, 1.0), (5.0, 1.5)], "high", "low") == [(10.0, 2.0), (5.0, 1.5), (1.0, 1.0)]


def test_report_refuses_a_screenshot_without_a_page(results, capsys):
    assert main(["report", str(results), "--screenshot", "x.png"]) == 2
    assert "--html" in capsys.readouterr().err


@pytest.mark.skipif(not (find_browser() or os.environ.get("TOKENOMY_REQUIRE_BROWSER")),
                    reason="needs Chromium (.ci/run installs it)")
def test_chromium_draws_each_series_in_its_own_colour(results, tmp_path):
    page = tmp_path / "report.html"
    assert main(["report", str(results), "--html", str(page)]) == 0
    pixels = np.asarray(Image.open(screenshot(page, tmp_path / "shot.png", height=1400)).convert("RGB"))
    assert (pixels < 250).any(axis=2).mean() > 0.02  # not a blank page

    def drawn(colour: str) -> int:
        rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels.astype(int) - rgb).sum(axis=2) <= 6).sum())

    ours = [drawn(c) for c in OURS[:4]]
    assert all(n > 20 for n in ours[:3]) and ours[3] == 0  # exactly three of ours: original, distilled, ehpc
    assert drawn(PEERS[0]) > 20  # and the peer, in grey
