"""Generated tables in README and docs/ equal what their JSON files give: `tokenomy report --docs --check`."""

import json
import sys
from pathlib import Path

import pytest

import tokenomy
from tokenomy.bench.docs import regenerate, update
from tokenomy.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the committed CLI reference is argparse's help as "
                    "Python 3.11 (CI's) prints it; other versions word it differently")
def test_committed_docs_tables_match_their_json():
    from tokenomy.cli import reference

    assert update(ROOT, check=True, cli_reference=reference) == []


def test_a_results_block_is_rebuilt_from_its_json_and_the_rest_left_alone(tmp_path):
    rows = [{"input": "log", "tokens": 100, "compressed_tokens": 50, "saved": 0.5, "round_trip": True}]
    (tmp_path / "r.json").write_text(json.dumps({"suite": "lossless", "command": "c", "results": rows}))
    text = "Intro, by hand.\n<!-- results r.json -->\n| stale |\n<!-- /results -->\nOutro.\n"
    new = regenerate(text, tmp_path)
    assert new.startswith("Intro, by hand.\n<!-- results r.json -->\n| input |") and new.endswith("<!-- /results -->\nOutro.\n")
    assert "| stale |" not in new and "| log |" in new.replace("  ", " ")
    assert regenerate(new, tmp_path) == new  # rebuilding twice changes nothing


def test_overall_keeps_only_a_kv_results_first_table(tmp_path):
    row = {"setting": "aware", "method": "full", "keep": 1.0, "accuracy": 1.0, "relative_accuracy": 1.0}
    payload = {"suite": "kv", "command": "c", "aggregate": [row], "aggregate_by_length": {"500": [row]}}
    (tmp_path / "k.json").write_text(json.dumps(payload))
    full = regenerate("<!-- results k.json -->\n<!-- /results -->\n", tmp_path)
    overall = regenerate("<!-- results k.json overall -->\n<!-- /results -->\n", tmp_path)
    assert "context length 500" in full and "context length 500" not in overall and "| full |" in overall
    with pytest.raises(tokenomy.TokenomyError, match="overall"):
        regenerate("<!-- results k.json sideways -->\n<!-- /results -->\n", tmp_path)


def test_the_methods_block_lists_every_registered_method(tmp_path):
    new = regenerate("<!-- methods -->\n<!-- /methods -->\n", tmp_path)
    for method in tokenomy.methods():
        assert f"| `{method.name}` | {method.site} |" in new


def test_check_reports_a_stale_table_and_writes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "docs").mkdir()
    stale = "<!-- methods -->\n| old |\n<!-- /methods -->\n"
    (tmp_path / "README.md").write_text(stale)
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--docs", "--check"]) == 1 and (tmp_path / "README.md").read_text() == stale
    assert main(["report", "--docs"]) == 0 and (tmp_path / "README.md").read_text() != stale
    assert main(["report", "--docs", "--check"]) == 0


def test_a_missing_json_is_named(tmp_path):
    with pytest.raises(tokenomy.TokenomyError, match="nothing.json"):
        regenerate("<!-- results nothing.json -->\n<!-- /results -->\n", tmp_path)


def test_headlines_fill_claims_from_the_one_matching_row(tmp_path):
    rows = [{"method": "a", "keep": 0.5, "score": 0.91}, {"method": "b", "keep": 0.5, "score": 0.5}]
    (tmp_path / "r.json").write_text(json.dumps({"suite": "prompt", "command": "c", "results": rows}))
    spec = [{"capability": "X", "file": "r.json", "where": {"method": "a"}, "claim": "a scores {score:.0%}"}]
    (tmp_path / "h.json").write_text(json.dumps(spec))
    new = regenerate("<!-- headlines h.json -->\n<!-- /headlines -->\n", tmp_path)
    assert "| X | a scores 91% | [r.json](r.json) |" in new
    (tmp_path / "h.json").write_text(json.dumps([{**spec[0], "where": {"keep": 0.5}}]))
    with pytest.raises(tokenomy.TokenomyError, match="matches 2 rows"):
        regenerate("<!-- headlines h.json -->\n<!-- /headlines -->\n", tmp_path)


def test_a_draws_block_sums_correct_answers_over_seeds(tmp_path):
    def draw(name, full, kvzip, speed):
        rows = [{"setting": "agnostic", "method": "full", "keep": 1.0, "samples": 30, "accuracy": full},
                {"setting": "agnostic", "method": "kvzip", "keep": 0.1, "samples": 30, "accuracy": kvzip,
                 "kept_fraction": 0.1, "decode_tokens_per_second_median": speed}]
        (tmp_path / name).write_text(json.dumps({"suite": "kv", "aggregate": rows}))

    draw("a.json", 1.0, 0.9, 20.0)
    draw("b.json", 29 / 30, 0.8, 22.04)
    text = regenerate("<!-- draws a.json b.json -->\nold\n<!-- /draws -->\n", tmp_path)
    lines = text.splitlines()
    assert lines[1] == "| setting | method | keep | draw 1 | draw 2 | total | rel | kept | bytes | decode tok/s |"
    assert lines[3] == "| agnostic | full | 1 | 30/30 | 29/30 | 59/60 | 1.000 | - | - | - |"
    assert lines[4] == "| agnostic | kvzip | 0.1 | 27/30 | 24/30 | 51/60 | 0.864 | 0.100 | - | 20.0–22.0 |"
    with pytest.raises(tokenomy.TokenomyError, match="two or more JSON files"):
        regenerate("<!-- draws a.json -->\n<!-- /draws -->\n", tmp_path)


def test_a_draw_joins_later_runs_on_the_same_samples_keeping_the_first_reference(tmp_path):
    def run(name, rows):
        (tmp_path / name).write_text(json.dumps({"suite": "prompt", "command": "c", "results": [
            {"method": method, "rate": rate, "samples": 10, "accuracy": accuracy, "end_to_end_ms": ms}
            for method, rate, accuracy, ms in rows]}))

    run("s1.json", [("original", 1.0, 1.0, 100), ("ehpc", 0.33, 0.5, 50)])
    run("s1-ehpc.json", [("original", 1.0, 1.0, 999), ("ehpc", 0.33, 0.9, 60)])  # ehpc re-run: it replaces
    run("s2.json", [("original", 1.0, 0.8, 110), ("ehpc", 0.33, 0.6, 40)])
    lines = regenerate("<!-- draws s1.json+s1-ehpc.json s2.json -->\n<!-- /draws -->\n", tmp_path).splitlines()
    assert lines[3].startswith("| original | 1 | 10/10 | 8/10 | 18/20 | 1.000 |") and lines[3].endswith("| 100–110 |")
    assert lines[4].startswith("| ehpc | 0.33 | 9/10 | 6/10 | 15/20 | 0.833 |") and lines[4].endswith("| 40–60 |")
    run("s2.json", [("original", 1.0, 0.8, 110)])
    with pytest.raises(tokenomy.TokenomyError, match="not in every draw"):
        regenerate("<!-- draws s1.json s2.json -->\n<!-- /draws -->\n", tmp_path)
