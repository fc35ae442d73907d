"""Integration on the real packaged SmolLM2-135M-Instruct (9 query / 3 KV heads, 30 layers)."""

import json
import re

import pytest
import torch
from transformers import DynamicCache

import tokenomy
from tokenomy.bench.kv import KVBench, KVBenchConfig, aggregate
from tokenomy.bench.prompts import build_prompt
from tokenomy.bench.tasks import niah
from tokenomy.catalog import create_spec
from tokenomy.cli import main
from tokenomy.sites.kv_cache import SITE
from tokenomy.sites.kv_layers import SPARE

pytestmark = pytest.mark.integration
METHODS = [m.name for m in tokenomy.methods(SITE)]


@pytest.fixture(scope="module")
def needle(smollm2):
    sample = niah(smollm2[1], [500], 3, seed=5)[1]  # needle in the middle
    return sample, build_prompt(smollm2[1], sample)


def greedy_generate(model, ids, **kwargs):
    options = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True) | kwargs
    return model.generate(ids, attention_mask=torch.ones_like(ids), **options)


def test_keep_one_is_identical_for_every_method(smollm2, needle):
    model, _ = smollm2
    ids = needle[1].full
    reference = greedy_generate(model, ids)
    for name in METHODS:
        with tokenomy.apply(model, name, keep=1.0):
            out = greedy_generate(model, ids)
        assert torch.equal(out.sequences, reference.sequences), name
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out.scores, reference.scores)), name


@pytest.mark.parametrize("name", METHODS)
def test_generation_stays_coherent_and_budgets_exact_on_the_real_model(smollm2, needle, name):
    """Mechanics, not quality (quality lives in `tokenomy bench kv`): half the cache still yields a
    well-formed answer (digits, then the end of turn) and exactly half the entries are kept."""
    model, tokenizer = smollm2
    prompt = needle[1]
    with tokenomy.apply(model, name, keep=0.5) as session:
        out = greedy_generate(model, prompt.full)
    answer = tokenizer.decode(out.sequences[0, prompt.full.shape[1]:], skip_special_tokens=True)
    assert answer.strip().rstrip(".").isdigit(), answer
    n = prompt.full.shape[1]
    if not create_spec(name).selects_per_step:
        assert session.stats.entries_seen == n * 3 * 30
        assert session.stats.entries_kept == round(n / 2) * 3 * 30


@pytest.mark.parametrize("name", ["snapkv", "keydiff"])
def test_generous_budget_keeps_the_needle(smollm2, needle, name):
    model, tokenizer = smollm2
    sample, prompt = needle
    with tokenomy.apply(model, name, keep=0.8):
        out = greedy_generate(model, prompt.full)
    assert sample.answers[0] in tokenizer.decode(out.sequences[0, prompt.full.shape[1]:])


def test_benchmark_path_equals_the_hooks_in_both_settings(smollm2, needle):
    model, tokenizer = smollm2
    sample, prompt = needle
    names = ["snapkv", "keydiff", "kvzip"]  # kvzip: its own prefill in the benchmark, replayed by the hooks
    bench = KVBench(model, tokenizer, KVBenchConfig(names, [0.3], ["aware", "agnostic"]))
    rows = {(r.setting, r.label): r.answer for r in bench.run_sample(0, sample)}
    for name in names:
        with tokenomy.apply(model, name, keep=0.3):  # question inside the compressed prompt
            out = greedy_generate(model, prompt.full, max_length=None, max_new_tokens=16)
        aware = tokenizer.decode(out.sequences[0, prompt.full.shape[1]:], skip_special_tokens=True)
        cache = DynamicCache()
        with tokenomy.apply(model, name, keep=0.3):  # context compressed first, question appended
            model(prompt.context, past_key_values=cache)
            out = greedy_generate(model, prompt.full, past_key_values=cache, max_length=None, max_new_tokens=16)
        agnostic = tokenizer.decode(out.sequences[0, prompt.full.shape[1]:], skip_special_tokens=True)
        assert rows[("aware", name)] == aware
        assert rows[("agnostic", name)] == agnostic


def test_kvpress_runs_side_by_side_with_identical_streamingllm(smollm2, needle):
    pytest.importorskip("kvpress")
    model, tokenizer = smollm2
    config = KVBenchConfig(["streamingllm", "tova"], [0.5], ["aware", "agnostic"], compare=["kvpress"])
    rows = KVBench(model, tokenizer, config).run_sample(0, needle[0])
    by = {(r.setting, r.label): r for r in rows}
    for setting in ("aware", "agnostic"):
        for name in ("streamingllm", "tova"):
            ours, theirs = by[(setting, name)], by[(setting, f"kvpress:{name}")]
            assert ours.answer == theirs.answer
            assert ours.kept_fraction == pytest.approx(theirs.kept_fraction, abs=0.01)
    table = aggregate(rows)
    assert {e["method"] for e in table} >= {"full", "kvpress:tova", "tova"}


def test_cli_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "kv.json"
    code = main(["bench", "kv", "--limit", "1", "--length", "300", "--methods", "knorm,snapkv,tokenselect", "--keep",
                 "0.5", "--setting", "aware,agnostic", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "snapkv" in printed and "overhead" in printed and printed.startswith("task niah, context 300 tokens, 1 sample\n")
    for setting in ("aware", "agnostic"):
        assert (f"tokenselect ({setting}) at keep 0.50 stores every entry (kept 1.000); each decoding forward attends "
                "to 50%") in printed
    assert f"report: {out.with_suffix('.html')}" in printed and out.with_suffix(".html").exists()
    assert main(["report", str(out)]) == 0
    assert "tokenselect (aware) at keep 0.50 stores every entry" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["command"].startswith("tokenomy") and payload["environment"]["torch"].startswith("2.13")
    labels = {(r["setting"], r["label"]) for r in payload["rows"]}
    assert labels == {(s, m) for s in ("aware", "agnostic") for m in ("full", "knorm", "snapkv", "tokenselect")}
    assert all(0.49 < r["kept_fraction"] < 0.51 for r in payload["rows"] if r["label"] in ("knorm", "snapkv"))
    assert all(r["kept_fraction"] == 1.0 for r in payload["rows"] if r["label"] == "tokenselect")  # evicts nothing


def test_cli_bench_custom_data_and_perplexity(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"context": "", "question": "What is 2+2?", "answers": ["4"]}) + "\n"
                    + json.dumps({"context": "The cat is named Tom. " * 20, "question": "Name of the cat?",
                                  "answers": ["Tom"]}) + "\n")
    assert main(["bench", "kv", "--data", str(data), "--methods", "streamingllm", "--keep", "0.5"]) == 0
    out = tmp_path / "ppl.json"
    assert main(["bench", "kv", "--task", "ppl", "--limit", "1", "--length", "200", "--continuation", "40",
                 "--methods", "knorm,keydiff-pool:recent=16,tova,tova:evict_every=8", "--keep", "0.5",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ppl" in printed and "KL" in printed and "keydiff-pool:recent=16" in printed and "peak KV" in printed
    rows = {r["label"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tova"]["decode_tokens"] == rows["full"]["decode_tokens"] == 40
    evicting = rows["tova:evict_every=8"]
    question = evicting["prompt_tokens"] - evicting["compressed_tokens"]  # the chat turn's end, one forward
    assert 0 < question < 8  # so the first 8-token chunk brings the cut, and nothing later piles up
    grown = rows["full"]["peak_kv_bytes"] - rows["full"]["kv_bytes"]
    per_token = grown / (question + 40)  # one token's keys and values, all layers and heads

    def holds(peak, entries_bytes):  # appends go into room for at most 1/SPARE more (tokenomy.sites.kv_layers)
        return entries_bytes <= peak <= entries_bytes * (1 + 1 / SPARE)

    assert holds(rows["tova"]["peak_kv_bytes"], rows["tova"]["kv_bytes"] + grown)
    assert evicting["kv_bytes"] == rows["tova"]["kv_bytes"]  # the same post-prefill budget ...
    assert holds(evicting["peak_kv_bytes"], evicting["kv_bytes"] + (question + 8) * per_token)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "kv", "--methods", "snapkv,nope"], "unknown method 'nope'; choose one of:"),
        (["bench", "kv", "--keep", "0"], "keep must be in (0, 1]"),
        (["bench", "kv", "--methods", "keydiff-pool:window=3"], "method 'keydiff-pool' has no option 'window'"),
        (["bench", "kv", "--task", "qa"], "unknown task 'qa'; choose one of: niah, multikey, multivalue, multiquery, cwe, vartrack, squad, ppl"),
        (["bench", "kv", "--setting", "both"], "unknown setting 'both'"),
        (["bench", "kv", "--compare", "llmlingua"], "unknown peer 'llmlingua'"),
        (["bench", "kv", "--model", "./no/such/dir"], "no such model folder"),
        (["bench", "kv", "--model", "someone/some-model"], "Models available offline: smollm2-135m"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_too_long_context_is_refused(tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"context": "word " * 9000, "question": "q", "answers": ["a"]}) + "\n")
    assert main(["bench", "kv", "--data", str(data), "--methods", "knorm"]) == 2
    assert "the model allows 8192" in capsys.readouterr().err


def test_methods_lists_every_method(capsys):
    assert main(["methods", "--papers"]) == 0
    printed = capsys.readouterr().out
    for name in METHODS:  # whole names: "keydiff" must not be found inside "keydiff-pool"
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", printed), name
    assert "arXiv:2404.14469" in printed


def test_transformers_quantized_cache_runs_side_by_side_and_its_bytes_are_counted(smollm2, needle):
    pytest.importorskip("optimum.quanto")
    model, tokenizer = smollm2
    config = KVBenchConfig(["streamingllm"], [0.5], ["agnostic"], compare=["quanto"])
    rows = {r.label: r for r in KVBench(model, tokenizer, config).run_sample(0, needle[0])}
    full, four, two = rows["full"], rows["quanto:bits=4"], rows["quanto:bits=2"]
    assert four.error is None and two.error is None and four.keep == two.keep == four.kept_fraction == 1.0
    assert four.answer == full.answer  # 4 bits keep the needle
    # float32 entries: 4-bit codes + a float32 scale and shift per 64 values ~ 5/32 of the bytes, 2-bit ~ 3/32
    assert 0.14 < four.kv_bytes / full.kv_bytes < 0.17 and 0.08 < two.kv_bytes / full.kv_bytes < 0.11


def test_a_missing_quanto_fails_before_the_model_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optimum.quanto" else real(name, *a))
    with pytest.raises(tokenomy.TokenomyError, match=r"tokenomy\[compare\]"):
        KVBenchConfig(["snapkv"], [0.5], ["agnostic"], compare=["quanto"])
