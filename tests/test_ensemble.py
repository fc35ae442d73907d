"""Byte-level probabilities, alignments, strategies and CoRE on a toy tokenizer and tiny random models."""

import itertools
import math

import pytest
import torch

from tokenomy._validation import TokenomyError


def toy_tokenizer(merges=(("a", "b"), ("b", "c"), ("ab", "c"), (" ", "a"), ("c", "a")), extra=()):
    """A BPE tokenizer over 'a', 'b', 'c', ' ' whose merges give every short string several spellings
    (``extra``: more pieces, e.g. a byte piece "<0x61>" that spells "a" a second time)."""
    from tokenizers import Tokenizer, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "a": 2, "b": 3, "c": 4, " ": 5}
    for piece in [left + right for left, right in merges] + list(extra):
        vocab[piece] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=list(merges)))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


def toy_model(vocab_size, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=0, eos_token_id=1)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen the random logits so probabilities differ a lot between tokens
        model.lm_head.weight.mul_(8.0)
    return model


@torch.no_grad()
def brute_force_prefix_probability(model, vocabulary, context, target: bytes) -> float:
    """P(the model's text after ``context`` starts with ``target``), enumerating every token sequence
    that covers it: each token spelling a piece of ``target``, the last one reaching its end or past."""
    texts = {i: b for i, b in enumerate(vocabulary.spelled) if b}

    def next_probs(ids):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
        return torch.softmax(logits, -1)

    def walk(ids, done):
        probs = next_probs(ids)
        total = 0.0
        rest = target[done:]
        for token, spelled in texts.items():
            if spelled.startswith(rest):  # covers the end of target
                total += float(probs[token])
            elif rest.startswith(spelled):
                total += float(probs[token]) * walk(ids + [token], done + len(spelled))
        return total

    return walk(list(context), 0) if target else 1.0


def exact_byte_lm(model, tokenizer, **options):
    from tokenomy.ensemble.bytelevel import ByteLevelLM

    return ByteLevelLM(model, tokenizer, max_hypotheses=None, prune=0.0, **options)


@pytest.mark.parametrize("prompt, text", [("ab", "ca b"), ("c", "abca"), ("ba c", " abc"), ("a", "bcab")])
def test_next_byte_products_equal_enumerated_tokenizations(prompt, text):
    tok = toy_tokenizer()
    model = toy_model(len(tok))
    lm = exact_byte_lm(model, tok)
    lm.start(prompt)
    tail = lm.stream  # the prompt's last token, replayed as bytes
    product = 1.0
    for byte in text.encode():
        product *= float(lm.distribution()[byte])
        lm.advance(byte)
    # the reference conditions on the same committed tokens and enumerates the rest
    prefix = tok("", add_special_tokens=True)["input_ids"]
    ids = lm.vocabulary.encode(prompt.encode())
    context = prefix + ids[:-1]
    head = lm.vocabulary.bytes_tokenizer.decode(ids[-1:])
    expected = (brute_force_prefix_probability(model, lm.vocabulary, context, head + text.encode())
                / brute_force_prefix_probability(model, lm.vocabulary, context, head))
    assert tail == head
    assert product == pytest.approx(expected, rel=1e-5)  # float32 logits: cached vs full forward
    assert lm.stats.pruned_mass == pytest.approx(0.0, abs=1e-12)


def test_distribution_sums_to_one_and_end_is_the_non_text_mass():
    tok = toy_tokenizer()
    model = toy_model(len(tok))
    lm = exact_byte_lm(model, tok, backoff=0)
    lm.start("ab")
    dist = lm.distribution()
    assert dist.sum().item() == pytest.approx(1.0, abs=1e-12)
    with torch.no_grad():
        ids = tok("", add_special_tokens=True)["input_ids"] + lm.vocabulary.encode(b"ab")
        probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
    assert dist[256].item() == pytest.approx((probs[0] + probs[1]).item(), rel=1e-5)


def test_hypothesis_cap_drops_mass_and_reports_it():
    tok = toy_tokenizer()
    model = toy_model(len(tok))
    from tokenomy.ensemble.bytelevel import ByteLevelLM

    exact, capped = exact_byte_lm(model, tok), ByteLevelLM(model, tok, max_hypotheses=1, prune=0.0)
    for lm in (exact, capped):
        lm.start("c")
        for byte in b"abcab":
            lm.advance(byte)
    assert capped.stats.max_hypotheses == 1 and capped.stats.capped_steps > 0
    assert 0.0 < capped.stats.pruned_mass < 1.0
    assert exact.stats.max_hypotheses > 1 and exact.stats.pruned_mass == 0.0
    assert capped.distribution().sum().item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("floor", [0.05, 0.3])
def test_prune_floor_moves_the_distribution_by_at_most_the_share_it_reports(floor):
    """A dropped tokenization held share s of the candidates' mass, so the next-byte distribution after the
    first drop is within s (total variation) of the exact one; and dropping saves model steps."""
    tok = toy_tokenizer()
    model = toy_model(len(tok))
    from tokenomy.ensemble.bytelevel import ByteLevelLM

    exact, floored = exact_byte_lm(model, tok), ByteLevelLM(model, tok, max_hypotheses=None, prune=floor)
    for lm in (exact, floored):
        lm.start("c")
    for byte in b"abcabcab":
        for lm in (exact, floored):
            lm.advance(byte)
        if floored.stats.pruned_mass > 0.0:
            break
    dropped = floored.stats.pruned_mass
    assert 0.0 < dropped < floor * len(exact.hypotheses)  # each dropped one was below floor x the best
    distance = 0.5 * (exact.distribution() - floored.distribution()).abs().sum().item()
    assert distance <= dropped + 1e-9
    assert floored.forwarded < exact.forwarded and floored.stats.capped_steps == 0


def test_a_byte_every_kept_tokenization_misses_is_respelled_not_refused():
    """With a floor and a cap, a model can keep only tokenizations that cannot continue with the byte an
    ensemble chose for another model's sake; it then re-spells its best one and goes on."""
    tok = toy_tokenizer()
    model = toy_model(len(tok))
    from tokenomy.ensemble.bytelevel import ByteLevelLM

    total = 0
    for text in (b"acbb", b"bbac", b"a ca", b"cbba"):  # "ac", "bb", "a ": no token has them as a prefix
        lm = ByteLevelLM(model, tok, max_hypotheses=1, prune=0.5, backoff=0)
        lm.start("c")
        respelled = 0
        for byte in text:
            zero = float(lm.distribution()[byte]) == 0.0
            lm.advance(byte)
            respelled += zero
            assert lm.stats.respelled == respelled
            prefix = len(tok("", add_special_tokens=True)["input_ids"]) + len(lm.vocabulary.encode(b"c"))
            for h in lm.hypotheses:  # every kept tokenization still spells the stream
                assert lm.stream.startswith(lm.vocabulary.bytes_tokenizer.decode(h.branch.ids[prefix:]))
            assert lm.distribution().sum().item() == pytest.approx(1.0, abs=1e-12)
        total += respelled
    assert total > 0
    forwarded = lm.forwarded
    with pytest.raises(TokenomyError, match="no token spells it"):
        lm.advance(ord("z"))
    assert lm.stats.respelled == respelled and lm.forwarded == forwarded  # refused before any re-spelling


def test_cli_byte_level_defaults_are_the_librarys():
    from tokenomy.cli import build_parser
    from tokenomy.ensemble.bytelevel import MAX_HYPOTHESES, PRUNE, ByteLevelLM

    assert (ByteLevelLM.max_hypotheses, ByteLevelLM.prune) == (MAX_HYPOTHESES, PRUNE)
    for argv in (["ensemble", "prompt"], ["bench", "ensemble"]):
        args = build_parser().parse_args(argv)
        assert (args.max_hypotheses, args.prune) == (MAX_HYPOTHESES, PRUNE)


def test_every_live_tokenization_spells_the_stream():
    tok = toy_tokenizer()
    lm = exact_byte_lm(toy_model(len(tok)), tok)
    lm.start("ba")
    committed = b"ba"[: 2 - len(lm.stream)]  # the stream starts with the prompt's re-read last token
    prefix = len(tok("", add_special_tokens=True)["input_ids"])
    for byte in b"bcabca":
        lm.advance(byte)
        for h in lm.hypotheses:
            spelled = lm.vocabulary.bytes_tokenizer.decode(h.branch.ids[prefix:])
            assert spelled == committed + lm.stream[: h.end]
            assert len(h.branch.ids) == h.branch.cache.get_seq_length()


# --- strategies and CoRE ------------------------------------------------------------------------------


def _rows(*rows):
    probs = torch.tensor(rows, dtype=torch.float64)
    return probs / probs.sum(dim=1, keepdim=True)


def test_strategies_on_known_distributions():
    from tokenomy.ensemble import Strategy

    probs = _rows([0.6, 0.3, 0.1], [0.1, 0.1, 0.8])
    uniform = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.allclose(Strategy("average").combine(probs, uniform), torch.tensor([0.35, 0.2, 0.45], dtype=torch.float64))
    assert torch.equal(Strategy("max-confidence").combine(probs, uniform), probs[1])
    weighted = Strategy("weighted", (3.0, 1.0))
    w = weighted.model_weights(2)
    assert torch.allclose(w, torch.tensor([0.75, 0.25], dtype=torch.float64))
    assert torch.allclose(weighted.combine(probs, w), torch.tensor([0.475, 0.25, 0.275], dtype=torch.float64))


def test_core_is_neutral_when_models_agree_and_follows_its_formulas_otherwise():
    from tokenomy.ensemble import Combiner, Core, Strategy

    same = _rows([0.7, 0.2, 0.1], [0.7, 0.2, 0.1])
    combined, changed = Combiner(Strategy(), Core())(same)
    assert torch.allclose(combined, same[0]) and not changed

    probs = _rows([0.8, 0.15, 0.05, 0.0], [0.1, 0.3, 0.5, 0.1])
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    filtered, model_weights = Core(beta=2.0).reweigh(probs, weights)
    # by hand: d = |p_m - mean| is (0.35, 0.075, 0.225, 0.05) for both rows; main support 3 symbols, assist 4
    d = torch.tensor([0.35, 0.075, 0.225, 0.05], dtype=torch.float64)
    s = (torch.exp(-2 * d) - math.exp(-2)) / (1 - math.exp(-2))
    assert torch.equal(filtered[0], probs[0])  # the main model is not filtered
    assert torch.allclose(filtered[1], s / s.mean() * probs[1])
    h = -(probs * probs.clamp_min(1e-300).log()).sum(1)
    scores = torch.stack([s[:3].sum() / h[0], s.sum() / h[1]])
    assert scores[0] > scores[1]  # the main model is the more confident here: no clamp
    assert torch.allclose(model_weights, scores / scores.sum())


def test_core_anchors_the_main_model_and_filters_what_only_an_assistant_is_sure_of():
    from tokenomy.ensemble import Combiner, Core, Strategy

    # the plain average follows the assistant's confident, isolated symbol 1; CoRE keeps the main model's 0
    probs = _rows([0.8, 0.15, 0.05], [0.02, 0.95, 0.03])
    plain, _ = Combiner(Strategy())(probs)
    robust, changed = Combiner(Strategy(), Core())(probs)
    assert int(plain.argmax()) == 1 and int(robust.argmax()) == 0 and changed
    # the assistant is far more confident, so its model score is higher; the anchor still holds half
    _, model_weights = Core().reweigh(probs, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert torch.allclose(model_weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # swapped roles: the same two distributions with the confident one as the main model stay on symbol 1
    swapped, _ = Combiner(Strategy(), Core())(probs.flip(0))
    assert int(swapped.argmax()) == 1


def test_core_beta_without_core_is_refused(two_members):
    from tokenomy.ensemble import Ensemble

    with pytest.raises(TokenomyError, match="turn CoRE on too"):
        Ensemble(two_members, core_beta=3.0)
    assert Ensemble(two_members, core=True, core_beta=3.0).combiner.core.beta == 3.0


@pytest.mark.parametrize("beta", [0, -1.0, "2", True])
def test_bad_core_beta_raises_one_clear_error(beta):
    from tokenomy.ensemble import Core

    with pytest.raises(TokenomyError, match="core beta must be a positive number"):
        Core(beta)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "median"}, "unknown strategy"),
    ({"name": "weighted"}, "needs weights"),
    ({"name": "weighted", "weights": (1.0, -1.0)}, "positive"),
    ({"name": "average", "weights": (1.0, 2.0)}, "'weighted' only"),
])
def test_bad_strategies_raise_one_clear_error(kwargs, message):
    from tokenomy.ensemble import Strategy

    with pytest.raises(TokenomyError, match=message):
        Strategy(**kwargs)


# --- ensembles of models with different tokenizers -----------------------------------------------------


@pytest.fixture
def two_members():
    first = toy_tokenizer()
    second = toy_tokenizer(merges=(("b", "c"), (" ", "b"), ("c", "c"), ("a", "a"), ("bc", "a")))
    return [(toy_model(len(first), seed=1), first), (toy_model(len(second), seed=2), second)]


@pytest.mark.parametrize("alignment", ["bytes", "union"])
@pytest.mark.parametrize("core", [False, True])
def test_ensemble_generates_and_every_model_stays_on_the_text(two_members, alignment, core):
    from tokenomy.ensemble import Ensemble

    ens = Ensemble(two_members, alignment=alignment, strategy="average", core=core)
    out = ens.generate(["ab c", "c"], max_new_bytes=12)
    assert len(out) == 2
    for o in out:
        assert len(o.data) <= 12 and o.stopped in {"end", "length"}
        assert o.core_changed <= o.steps
        assert set(o.data) <= set(b"abc ")
    if alignment == "union":  # each model's own tokens spell prompt + output so far
        for member in ens.alignment.members:
            prefix = len(member.tokenizer("", add_special_tokens=True)["input_ids"])
            spelled = member.vocabulary.bytes_tokenizer.decode(member.branch.ids[prefix:])
            full = b"c" + out[1].data  # the last chosen string ends decoding before it is appended
            assert full.startswith(spelled) and len(full) - len(spelled) <= member.vocabulary.max_token_bytes


def test_stop_strings_and_byte_budget_are_honoured(two_members):
    from tokenomy.ensemble import Ensemble

    ens = Ensemble(two_members, alignment="bytes")
    full = ens.generate("ab", max_new_bytes=16)[0]
    assert len(full.data) <= 16
    if full.stopped == "length":
        assert len(full.data) == 16
    assert len(full.text) >= 5, full.text  # room for a stop string after three characters
    stop = full.text[3:5]
    cut = ens.generate("ab", max_new_bytes=16, stop=[stop])[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.stopped == "stop"


def test_sampling_is_seeded(two_members):
    from tokenomy.ensemble import Ensemble

    ens = Ensemble(two_members, alignment="bytes", strategy="max-confidence", core=True)
    first = ens.generate("ab", max_new_bytes=10, temperature=1.0, seed=3)[0].data
    again = ens.generate("ab", max_new_bytes=10, temperature=1.0, seed=3)[0].data
    assert first == again


@pytest.mark.parametrize("models, kwargs, message", [
    (1, {}, "at least two models"),
    (2, {"strategy": "vote"}, "unknown strategy"),
    (2, {"alignment": "chars"}, "unknown alignment"),
    (2, {"strategy": "weighted", "weights": [1.0]}, "1 weights for 2 models"),
    (2, {"max_hypotheses": 0}, "max_hypotheses"),
    (2, {"prune": 1.5}, "prune"),
])
def test_bad_ensembles_raise_one_clear_error(two_members, models, kwargs, message):
    from tokenomy.ensemble import Ensemble

    with pytest.raises(TokenomyError, match=message):
        Ensemble(two_members[:models], **kwargs)


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([""], {}, "non-empty"),
    (["ab"], {"max_new_bytes": 0}, "max_new_bytes"),
    (["ab"], {"temperature": -1.0}, "temperature"),
    (["ab"], {"stop": [""]}, "stop strings"),
])
def test_bad_generation_arguments_raise_one_clear_error(two_members, prompts, kwargs, message):
    from tokenomy.ensemble import Ensemble

    with pytest.raises(TokenomyError, match=message):
        Ensemble(two_members).generate(prompts, **kwargs)


# --- benchmark rules ---------------------------------------------------------------------------------------


def test_benchmark_answer_rules():
    from tokenomy.bench.ensemble import Item, correct, first_word, first_word_done

    assert first_word(' Orson,"') == "Orson" and first_word("\n dog.") == "dog" and first_word("") == ""
    assert not first_word_done(b" Ors") and first_word_done(b" Orson,")
    assert correct(Item("p", ["Orson"], "lambada"), " Orson, he said")
    assert not correct(Item("p", ["Orson"], "lambada"), " Orsons")
    assert correct(Item("p", ["The Eiffel Tower"], "squad"), " it is the eiffel tower.")
    assert not correct(Item("p", ["1804"], "squad"), " in 1805")


def test_benchmark_reads_custom_jsonl_and_rejects_bad_lines(tmp_path):
    from tokenomy.bench.ensemble import read_jsonl

    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "2+2=", "answers": ["4"]}\n\n{"prompt": "Sky:", "answers": ["blue"]}\n')
    assert sorted(i.prompt for i in read_jsonl(str(good), 10, 0)) == ["2+2=", "Sky:"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(TokenomyError, match="bad.jsonl:1"):
        read_jsonl(str(bad), 10, 0)


class _Script:
    """A fake alignment emitting fixed multi-byte pieces, one per step, then END."""

    def __init__(self, pieces):
        from tokenomy.ensemble.align import Parallel

        self.pieces, self.end, self.forwarded, self.parallel = list(pieces), len(pieces), 0, Parallel(1)

    def start(self, prompt):
        self.step = 0

    def distributions(self):
        probs = torch.zeros(1, self.end + 1, dtype=torch.float64)
        probs[0, min(self.step, self.end)] = 1.0
        return probs

    def advance(self, symbol):
        self.step += 1

    def spell(self, symbol):
        return self.pieces[symbol]


@pytest.mark.parametrize("stop, expected, why", [
    ([b"bc"], b"a", "stop"),  # spans two pieces
    ([b"zz"], b"abcdef", "end"),
    ([b"f", b"cd"], b"ab", "stop"),  # the earliest stop string wins
])
def test_decode_cuts_at_the_first_stop_string_across_pieces(stop, expected, why):
    from tokenomy.ensemble import Combiner, Strategy, decode

    out = decode(_Script([b"ab", b"cd", b"ef"]), Combiner(Strategy()), b"p", max_new_bytes=64, stop=stop)
    assert (out.data, out.stopped) == (expected, why)


def test_decode_cuts_an_overshooting_piece_at_the_byte_budget():
    from tokenomy.ensemble import Combiner, Strategy, decode

    seen = []
    out = decode(_Script([b"abc", b"def"]), Combiner(Strategy()), b"p", max_new_bytes=4, progress=seen.append)
    assert (out.data, out.stopped, seen) == (b"abcd", "length", [3, 3])


def test_models_stepping_side_by_side_decode_exactly_as_one_after_another(two_members):
    from tokenomy.ensemble import Ensemble
    from tokenomy.ensemble.align import Parallel

    before = torch.get_num_threads()
    for alignment in ("bytes", "union"):
        ens = Ensemble(two_members, alignment=alignment, core=True)
        side = [o.data for o in ens.generate(["ab c", "c"], max_new_bytes=12)]
        assert torch.get_num_threads() == before  # restored after decoding
        ens.alignment.parallel = Parallel(1)
        torch.set_num_threads(1)  # the same arithmetic as inside the side-by-side threads
        try:
            one_by_one = [o.data for o in ens.generate(["ab c", "c"], max_new_bytes=12)]
        finally:
            torch.set_num_threads(before)
        assert side == one_by_one


def test_tokens_spelling_the_same_bytes_are_separate_tokenizations():
    """Two ids spell "d" (a letter and a byte piece) and no longer token starts with "d": each id is its own
    path, both counted, and neither may extend the other's cache."""
    tok = toy_tokenizer(extra=("d", "<0x64>"))
    model = toy_model(len(tok), seed=4)
    lm = exact_byte_lm(model, tok, backoff=0)
    assert len(lm.vocabulary.exact[b"d"]) == 2
    lm.start("c")
    product = 1.0
    for byte in b"dad":
        product *= float(lm.distribution()[byte])
        lm.advance(byte)
    context = lm.vocabulary.prompt_ids(tok, b"c")
    assert product == pytest.approx(brute_force_prefix_probability(model, lm.vocabulary, context, b"dad"), rel=1e-5)


def test_next_byte_table_spells_every_token_then_end():
    from tokenomy.ensemble.vocab import END, _byte_table

    table = _byte_table([b"", b"ab", b"b", b"\xffa\x00"])
    assert table.tolist() == [[END, 97, 98, 255], [END, 98, END, 97], [END, END, END, 0], [END, END, END, END]]
    assert _byte_table([b"", b""]).tolist() == [[END, END]]


@pytest.mark.parametrize("argv, message", [
    (["ensemble", ""], "non-empty strings"),
    (["ensemble", "hi", "--max-new-bytes", "0"], "max_new_bytes"),
    (["ensemble", "hi", "--stop", ""], "stop strings must be non-empty"),
    (["ensemble", "hi", "--weights", "1,2,3"], "weights"),
    (["ensemble", "hi", "--alignment", "words"], "unknown alignment"),
    (["bench", "ensemble", "--weights", "1,2,3", "--strategies", "weighted"], "--weights gives 3 numbers"),
])
def test_cli_refuses_bad_requests_before_loading_any_model(argv, message, capsys, monkeypatch):
    import tokenomy.models.loader as loader
    from tokenomy.cli import main

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the request was checked")

    monkeypatch.setattr(loader, "load", no_loading)
    assert main(argv + ["--models", "smollm2-135m,gemma3-270m"]) == 2
    assert message in capsys.readouterr().err
