"""The ensemble on the real packaged models: the FIM case and a SmolLM2 + Gemma-3 run through the CLI."""

import pytest

pytestmark = pytest.mark.integration


def test_prompt_ending_mid_token_is_continued_correctly_at_byte_level(smollm2):
    from tokenomy.ensemble import Combiner, Strategy, decode, single

    model, tok = smollm2
    prompt = b"The capital of France is Par"
    as_bytes = decode(single(model, tok, byte_level=True), Combiner(Strategy()), prompt, max_new_bytes=3)
    as_tokens = decode(single(model, tok), Combiner(Strategy()), prompt, max_new_bytes=3)
    assert as_bytes.data.startswith(b"is")  # "Par" re-read as bytes: the model completes "Paris"
    assert not as_tokens.data.startswith(b"is")  # token " Par" forces an unusual split (the tokenization bias)


def test_cli_ensemble_of_smollm2_and_gemma3(capsys):
    from tokenomy.cli import main

    assert main(["ensemble", "The capital of France is", "--max-new-bytes", "6", "--core"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith(" Paris")
    assert "CoRE changed" in out.err


def test_cli_ensemble_needs_two_models(capsys):
    from tokenomy.cli import main

    assert main(["ensemble", "hello", "--models", "smollm2-135m"]) == 2
    assert "at least two models" in capsys.readouterr().err


def test_byte_probabilities_are_exact_on_the_real_tokenizer(smollm2):
    """Product of next-byte probabilities = P(text starts with the string), enumerating every SmolLM2
    tokenization of it (49k-token vocabulary)."""
    from test_ensemble import brute_force_prefix_probability

    from tokenomy.ensemble.bytelevel import ByteLevelLM

    model, tok = smollm2
    lm = ByteLevelLM(model, tok, max_hypotheses=None, prune=0.0, backoff=0)
    prompt, target = "The capital of France is", b" Par"
    lm.start(prompt)
    product = 1.0
    for byte in target:
        product *= float(lm.distribution()[byte])
        lm.advance(byte)
    context = lm.vocabulary.prompt_ids(tok, prompt.encode())
    assert product == pytest.approx(brute_force_prefix_probability(model, lm.vocabulary, context, target), rel=1e-4)


def test_cli_core_beta_needs_core(capsys):
    from tokenomy.cli import main

    assert main(["ensemble", "hello", "--core-beta", "3"]) == 2
    assert "turn CoRE on too" in capsys.readouterr().err
