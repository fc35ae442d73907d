"""Benchmark tasks and prompts: deterministic, answerable, never truncated; bad data named by line."""

import json

import pytest
import torch

from tokenomy import TokenomyError
from tokenomy.bench.prompts import Prompt, build_prompt, check_fits
from tokenomy.bench.tasks import TASKS, Sample, haystack_paragraphs, read_jsonl, shared_data_dir


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2[1]


def test_haystack_ships_with_the_package():
    paragraphs = haystack_paragraphs()
    assert len(paragraphs) > 500 and "Alice" in paragraphs[10] + paragraphs[11] + paragraphs[12]


@pytest.mark.parametrize("task", ["niah", "multikey", "multivalue", "multiquery", "vartrack", "cwe"])
def test_tasks_are_deterministic_and_answerable(tokenizer, task):
    a = TASKS[task](tokenizer, [300, 500], 4, seed=1)
    b = TASKS[task](tokenizer, [300, 500], 4, seed=1)
    c = TASKS[task](tokenizer, [300, 500], 4, seed=2)
    assert [s.context for s in a] == [s.context for s in b]
    assert [s.context for s in a] != [s.context for s in c]
    assert [s.meta["length"] for s in a] == [300, 500, 300, 500]
    for s in a:
        assert all(answer in s.context for answer in s.answers)
        n = len(tokenizer.encode(s.context))
        assert s.meta["length"] <= n <= s.meta["length"] + 400


def test_niah_depths_sweep_the_context(tokenizer):
    samples = TASKS["niah"](tokenizer, [300], 3, seed=0)
    assert [s.meta["depth"] for s in samples] == [0.0, 0.5, 1.0]
    first = samples[0].context.index(samples[0].answers[0])
    last = samples[2].context.index(samples[2].answers[0])
    assert first < len(samples[0].context) * 0.2 and last > len(samples[2].context) * 0.8


def test_multikey_asks_one_of_several_needles(tokenizer):
    s = TASKS["multikey"](tokenizer, [400], 1, seed=0)[0]
    assert s.context.count("The special magic number for") == 4
    assert s.question.split("for ")[1].split(" ")[0] in s.context


@pytest.mark.parametrize("task, sentence", [("multivalue", "One of the special magic numbers for"),
                                            ("multiquery", "The special magic number for")])
def test_multi_answer_tasks_need_every_number(tokenizer, task, sentence):
    s = TASKS[task](tokenizer, [400], 1, seed=0)[0]
    assert s.context.count(sentence) == len(s.answers) == 4 and s.every_answer
    assert all(f"{number}." in s.context for number in s.answers)
    assert s.judge(" ".join(s.answers)) and not s.judge(" ".join(s.answers[:3]))
    if task == "multiquery":
        keys = [line.split("for ")[1].split(" is:")[0] for line in s.context.split("\n") if line.startswith(sentence)]
        assert all(key in s.question for key in keys)


@pytest.mark.skipif(shared_data_dir() is None or not (shared_data_dir() / "squad/dev-v2.0.json").exists(),
                    reason="reads ../shared/data/squad/dev-v2.0.json")
def test_squad_hides_the_answering_paragraph_among_others_at_its_depth(tokenizer):
    samples = TASKS["squad"](tokenizer, [600], 3, seed=0)
    for s in samples:
        n = len(tokenizer.encode(s.context))
        assert 600 <= n <= 1200 and s.context.count("Document ") >= 3 and s.answers
        assert s.question.endswith("?") or "Question:" in s.question
    assert [s.meta["depth"] for s in samples] == [0.0, 0.5, 1.0]


def test_single_answer_tasks_accept_any_answer(tokenizer):
    s = TASKS["niah"](tokenizer, [300], 1, seed=0)[0]
    assert s.judge(f"It is {s.answers[0]}.") and not s.judge("It is 12.")


def test_vartrack_chain_is_in_order(tokenizer):
    s = TASKS["vartrack"](tokenizer, [400], 1, seed=0)[0]
    value = s.answers[0]
    first = s.context.index(f"= {value}.")
    last_var = s.question.split("VAR ")[1].split("?")[0]
    assert first < s.context.index(f"VAR {last_var} = VAR")


def test_perplexity_samples_carry_a_continuation(tokenizer):
    s = TASKS["ppl"](tokenizer, [300], 1, seed=0)[0]
    assert s.continuation and not s.answers and len(tokenizer.encode(s.context)) >= 290


def test_prompt_splits_at_the_question_and_keeps_every_token(tokenizer):
    sample = Sample("Some context.", "\nWhat?", ["x"], answer_prefix="The answer is")
    prompt = build_prompt(tokenizer, sample)
    text = tokenizer.decode(prompt.full[0])
    assert text.index("Some context.") < text.index("What?") < text.index("The answer is")
    assert tokenizer.decode(prompt.context[0]).endswith("Some context.")
    assert text.endswith("assistant\nThe answer is")


def test_prompt_without_chat_template_uses_plain_text(tokenizer):
    template, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        prompt = build_prompt(tokenizer, Sample("Context.", " Question?", ["a"]))
    finally:
        tokenizer.chat_template = template
    assert tokenizer.decode(prompt.full[0]).endswith("Context. Question?\n")


def test_too_long_prompts_are_refused_not_truncated(smollm2):
    model = smollm2[0]
    prompt = Prompt(torch.zeros(1, 8000, dtype=torch.long), torch.zeros(1, 190, dtype=torch.long))
    with pytest.raises(TokenomyError, match="needs 8206 positions .* allows 8192"):
        check_fits(model, prompt, 16, "sample 3")



def test_a_continuation_past_the_window_is_refused_not_truncated(smollm2):
    from tokenomy.bench.kv import KVBench, KVBenchConfig

    model, tokenizer = smollm2
    sample = TASKS["ppl"](tokenizer, [300], 1, seed=0, continuation_tokens=8000)[0]
    bench = KVBench(model, tokenizer, KVBenchConfig(["streamingllm"], [0.5], ["agnostic"]))
    with pytest.raises(TokenomyError, match="sample 0 needs .* allows 8192"):
        bench.run_sample(0, sample)


def test_a_replay_past_the_window_is_refused_before_any_prefill(smollm2, monkeypatch):
    """KVzip replaying a 4,200-token context whole needs 8,400+ of SmolLM2's 8,192 positions: the benchmark's
    check names the sample and a chunk that fits before anything runs; the default chunk (2,048) passes."""
    from tokenomy.bench.kv import KVBench, KVBenchConfig

    model, tokenizer = smollm2
    samples = TASKS["niah"](tokenizer, [4200], 1, seed=0)
    whole = KVBench(model, tokenizer, KVBenchConfig(["snapkv", "kvzip:chunk=0"], [0.5], ["agnostic"]))
    monkeypatch.setattr(whole, "_prefill", lambda *a: pytest.fail("a prefill ran"))
    with pytest.raises(TokenomyError, match=r"sample 0's 4\d{3}-token context .*chunk=\d+ or less"):
        whole.check(samples)
    KVBench(model, tokenizer, KVBenchConfig(["kvzip"], [0.5], ["agnostic"])).check(samples)


def write_lines(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_reads_samples(tmp_path):
    good = {"context": "c", "question": "q", "answers": ["a", "b"], "answer_prefix": "p"}
    path = write_lines(tmp_path, [json.dumps(good), "", json.dumps({**good, "context": ""})])
    samples = read_jsonl(path)
    assert len(samples) == 2 and samples[0].answers == ["a", "b"] and samples[1].meta == {"line": 3}
    assert samples[0].question == "\nq"  # on a new line, as every built-in task's question


def test_jsonl_questions_follow_a_template(tmp_path):
    row = {"context": "c", "question": "q?", "answers": ["a"]}
    path = write_lines(tmp_path, [json.dumps(row), json.dumps({**row, "template": " {question} Answer briefly."})])
    plain, own = read_jsonl(path, template="\n\nQuestion: {question}")
    assert plain.question == "\n\nQuestion: q?" and own.question == " q? Answer briefly."
    with pytest.raises(TokenomyError, match="exactly once"):
        read_jsonl(path, template="no placeholder")


def test_rows_without_an_answer_prefix_are_counted(tmp_path):
    from tokenomy.bench.tasks import missing_prefix_note

    row = {"context": "c", "question": "q", "answers": ["a"]}
    path = write_lines(tmp_path, [json.dumps(row), json.dumps({**row, "answer_prefix": "It is"})])
    assert missing_prefix_note(read_jsonl(path)).startswith("1 of 2 --data rows have no answer_prefix")
    assert missing_prefix_note(read_jsonl(path)[1:]) is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "data.jsonl:2: not valid JSON"),
        ("[1, 2]", "data.jsonl:2: expected a JSON object"),
        ('{"context": "c", "question": "q"}', "data.jsonl:2: missing field"),
        ('{"context": "c", "question": "q", "answers": "a"}', "data.jsonl:2: 'answers' must be"),
        ('{"context": "c", "question": "q", "answers": []}', "data.jsonl:2: 'answers' must be"),
        ('{"context": 3, "question": "q", "answers": ["a"]}', "data.jsonl:2: 'context' must be a string"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, line, message):
    good = json.dumps({"context": "c", "question": "q", "answers": ["a"]})
    with pytest.raises(TokenomyError, match=message):
        read_jsonl(write_lines(tmp_path, [good, line]))


def test_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(TokenomyError, match="cannot read --data file"):
        read_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(TokenomyError, match="holds no samples"):
        read_jsonl(write_lines(tmp_path, [""]))


def test_cwe_common_words_outnumber_every_other_word(tokenizer):
    sample = TASKS["cwe"](tokenizer, [1200], 1, seed=3)[0]
    words = [token for token in sample.context.split("\n", 1)[1].split() if not token.endswith(".")]
    counts = {w: words.count(w) for w in set(words)}
    assert sample.meta["repeats"] == 1200 // (16 * 5) and len(words) == sample.meta["entries"]
    assert sorted(w for w, c in counts.items() if c == 15) == sample.answers and len(sample.answers) == 5
    assert set(counts.values()) == {15, 3} and sample.every_answer
    assert sample.judge("are: " + ", ".join(reversed(sample.answers))) and not sample.judge(sample.answers[0])
