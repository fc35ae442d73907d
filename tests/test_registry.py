"""Method lookup: names are checked against the site a command works at, and `tokenomy methods` reads well."""

import pytest

import tokenomy
from tokenomy.cli import main


def test_a_method_of_another_site_is_refused_with_this_sites_choices():
    with pytest.raises(tokenomy.TokenomyError) as caught:
        tokenomy.get("fastv", "kv-cache")
    message = str(caught.value)
    listed = set(message.split("choose one of: ")[1].split(", "))
    assert "works at site 'in-llm'" in message and listed == {m.name for m in tokenomy.methods("kv-cache")}


def test_an_unknown_name_lists_only_the_sites_methods():
    with pytest.raises(tokenomy.TokenomyError) as caught:
        tokenomy.get("bogus", "prompt")
    listed = str(caught.value).split("choose one of: ")[1].split(", ")
    assert sorted(listed) == sorted(m.name for m in tokenomy.methods("prompt"))


def test_get_without_a_site_finds_any_method():
    assert tokenomy.get("fastv").site == "in-llm" and tokenomy.get("fastv", ["in-llm", "pre-llm"]).name == "fastv"


@pytest.mark.parametrize("argv, valid", [(["bench", "kv", "--methods", "tome"], "snapkv"),
                                          (["bench", "prompt", "--methods", "snapkv"], "llmlingua")])
def test_bench_commands_name_only_their_own_methods(argv, valid, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert valid in err and "divprune" not in err


def test_methods_listing_wraps_to_the_terminal(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 100 and all(line == line.rstrip() for line in lines)
    names = {line.split()[0] for line in lines[2:] if not line.startswith(" ")}
    assert names == {m.name for m in tokenomy.methods()}
