"""The packaged Gemma-3-270M tokenizer splits text as llama.cpp does (SentencePiece BPE), not character by character."""

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    from tokenomy.models.loader import converted_dir

    return AutoTokenizer.from_pretrained(converted_dir("gemma3-270m"))


def test_bos_then_whole_word_pieces(gemma_tokenizer):
    ids = gemma_tokenizer("The capital of France is").input_ids
    assert ids == [2, 818, 5279, 529, 7001, 563]  # <bos> The ▁capital ▁of ▁France ▁is
    assert gemma_tokenizer.bos_token_id == 2 and gemma_tokenizer.eos_token_id == 1


def test_newline_runs_and_spaces_are_whole_tokens_and_rare_characters_fall_back_to_bytes(gemma_tokenizer):
    ids = gemma_tokenizer("a\n\nb  c\n𐍈", add_special_tokens=False).input_ids
    assert ids == [236746, 108, 236763, 138, 236755, 107, 478, 382, 379, 374]  # a \n\n b "  " c \n <0xF0>...


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is",
        "  leading and trailing spaces  ",
        "line one\nline two\n\n\ttabbed",
        "Grüße aus München, ça va? 日本語。 Привет!",
        "emoji 😀👍🏽 and a rare 𐍈",
    ],
)
def test_decode_inverts_encode(gemma_tokenizer, text):
    assert gemma_tokenizer.decode(gemma_tokenizer(text, add_special_tokens=False).input_ids) == text
