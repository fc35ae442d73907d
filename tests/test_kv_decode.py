"""`tokenomy bench kv-decode` on a tiny random-weight model: rows, resident bytes, the CLI's validation."""

import pytest

import tokenomy
from tokenomy.budget import kept_count
from tokenomy.bench import kv_decode

from conftest import tiny_llama


class ByteTokenizer:
    """Enough of a tokenizer for the benchmark's context: one id per character, within the tiny vocabulary."""

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 120 for c in text]


def test_resident_bytes_follow_the_kept_entries_for_uniform_and_ragged_budgets():
    model = tiny_llama()
    records = kv_decode.run(model, ByteTokenizer(), [96], ["snapkv", "kvzip"], 0.25, steps=3, repeats=2, seed=1)
    assert len(records) == 3 * 2 and all(len(r["step_seconds"]) == 3 for r in records)
    rows = {row["method"]: row for row in kv_decode.summarize(records)}
    assert list(rows) == ["full", "snapkv", "kvzip"]
    share = kept_count(0.25, 96).item() / 96
    assert rows["full"]["resident_share"] == 1.0 and rows["full"]["speedup"] == 1.0
    for name in ("snapkv", "kvzip"):  # kvzip's heads keep ragged counts: stored packed, nothing padded
        assert rows[name]["resident_share"] == pytest.approx(share, abs=1e-12)
        assert 0.0 <= rows[name]["same_tokens"] <= 1.0 and rows[name]["tokens_per_s"] > 0


def test_the_context_depends_on_the_seed_and_has_the_length_asked():
    a, b = (kv_decode.context_ids(ByteTokenizer(), 50, seed) for seed in (0, 1))
    assert a.shape == b.shape == (1, 50) and not bool((a == b).all())


@pytest.mark.parametrize("argv, message", [
    (["--keep", "1.5"], "keep"),
    (["--methods", "nosuch"], "nosuch"),
    (["--steps", "0"], "--steps"),
    (["--length", "8"], "--length"),
])
def test_bad_arguments_fail_before_the_model_loads(argv, message, capsys, monkeypatch):
    from tokenomy.cli import main

    monkeypatch.setattr(tokenomy, "load", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["bench", "kv-decode", *argv]) == 2
    assert message in capsys.readouterr().err
