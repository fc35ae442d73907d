"""KV methods with a part fitted per model — kvzap's surrogate of KVzip's scores, duoattention's head profile —
fitted here for the tiny random Llama, then held to the invariants every KV method keeps; and the parts shipped
for SmolLM2 against what they stand for."""

import pytest
import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

import tokenomy
from tokenomy._validation import TokenomyError
from tokenomy.budget import kept_count
from tokenomy.catalog import create_spec
from tokenomy.registry import get
from tokenomy.models import kv_heads
from tokenomy.models.kv_surrogate import SHIPPED, fit, label, load_surrogate, save
from tokenomy.score.surrogate import entry_features
from tokenomy.sites.kv_layers import PackedLayer

from conftest import tiny_llama
from test_kv_site import assert_padded_batch_matches_each_row


def ids(n=60, seed=1):
    return torch.randint(3, 128, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_surrogate(tmp_path_factory):
    """A surrogate trained (a few seconds) on KVzip's scores of the tiny Llama over random token windows."""
    model = tiny_llama()
    samples = [label(model, ids(64, seed)) for seed in range(10)]
    net = fit(samples, hidden=8, epochs=20, seed=0, trained_for="tiny-llama", log=lambda *_: None)
    return str(save(net, tmp_path_factory.mktemp("kvzap") / "tiny.safetensors", {}))


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """A head profile in which layer 1's KV head 0 retrieves most, then layer 0's head 1; the rest barely."""
    profile = torch.tensor([[0.01, 0.5], [0.9, 0.02], [0.03, 0.04]])
    return str(kv_heads.save_profile(profile, tmp_path_factory.mktemp("duo") / "tiny.json", "tiny-llama", {}))


def test_entry_features_ignore_the_rotary_position():
    """The same key rotated to two positions gives the same features: the surrogate sees the token, not where."""
    model = tiny_llama()
    rotary = LlamaRotaryEmbedding(model.config)
    keys, values = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    at = {}
    for offset in (0, 37):
        cos, sin = rotary(values, torch.arange(offset, offset + 5)[None])
        rotated, _ = apply_rotary_pos_emb(keys, keys, cos, sin)
        at[offset] = entry_features(rotated, values)
    assert at[0].shape == (1, 5, 2 * 24)
    assert torch.allclose(at[0], at[37], atol=1e-5)
    assert not torch.allclose(at[0][0, 0], at[0][0, 1])


def test_labels_are_kvzips_log_scores():
    model = tiny_llama()
    layers = label(model, ids(40))
    assert len(layers) == model.config.num_hidden_layers
    for features, scores in layers:
        assert features.shape == (40, 2 * 24) and scores.shape == (40, 2)
        assert (scores <= 0).all() and (scores >= -20).all() and scores.std() > 0


@pytest.mark.parametrize("name, option, fitted", [("kvzap", "surrogate", "tiny_surrogate"),
                                                  ("duoattention", "profile", "tiny_profile")])
def test_keep_one_changes_nothing(name, option, fitted, request):
    model, x = tiny_llama(), ids()
    reference = model(x).logits
    with tokenomy.apply(model, name, keep=1.0, **{option: request.getfixturevalue(fitted)}) as session:
        out = model(x, past_key_values=DynamicCache()).logits
    assert torch.equal(out, reference) and session.stats.layers_compressed == 0


@pytest.mark.parametrize("name, option, fitted", [("kvzap", "surrogate", "tiny_surrogate"),
                                                  ("duoattention", "profile", "tiny_profile")])
def test_left_padded_batch_matches_each_row_alone(name, option, fitted, request):
    """The site invariant test_kv_site.py holds every other method to, with the fitted part given."""
    assert_padded_batch_matches_each_row(tiny_llama(), name, 6, **{option: request.getfixturevalue(fitted)})


@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1])
def test_budget_is_shared_by_all_layers_and_honoured_exactly(tiny_surrogate, keep):
    """Without the guards (``recent=0, floor=0``) every entry but the sinks competes across layers."""
    model, x = tiny_llama(), ids(80)
    cache = DynamicCache()
    with tokenomy.apply(model, "kvzap", keep=keep, surrogate=tiny_surrogate, recent=0, floor=0.0) as session:
        model(x, past_key_values=cache)
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
    layers, heads = model.config.num_hidden_layers, model.config.num_key_value_heads
    assert session.stats.entries_kept == 2 * layers * heads * kept_count(keep, 80)  # two prefills
    assert len(set(session.stats.per_layer_kept)) > 1  # layers compete for the budget
    assert all(isinstance(layer, PackedLayer) for layer in cache.layers)  # ragged, stored exactly
    assert all(layer.get_seq_length() == 80 for layer in cache.layers)
    assert out.shape == (1, 86)


@pytest.mark.parametrize("recent, floor", [(32, 0.5), (8, 0.9)])
def test_every_head_keeps_its_floor_and_its_latest_tokens(tiny_surrogate, recent, floor):
    """The guards: each (layer, KV head) keeps at least ``floor`` of its even budget and the ``recent`` latest
    tokens; the total is still exact and the rest is shared, so heads keep different counts."""
    model, n, keep = tiny_llama(), 200, 0.25
    cache = DynamicCache()
    with tokenomy.apply(model, "kvzap", keep=keep, surrogate=tiny_surrogate, recent=recent, floor=floor) as session:
        model(ids(n), past_key_values=cache)
    even = kept_count(keep, n)
    counts = []
    for layer in cache.layers:
        _, _, positions, valid = layer.padded()
        valid = torch.ones_like(positions, dtype=torch.bool) if valid is None else valid
        for head, flags in zip(positions[0], valid[0]):
            kept = set(head[flags].tolist())
            counts.append(len(kept))
            assert len(kept) >= int(even * floor) and set(range(n - recent, n)) <= kept
    assert sum(counts) == session.stats.entries_kept == len(counts) * even
    assert len(set(counts)) > 1


def test_scores_follow_the_surrogate_not_the_replay(tiny_surrogate, monkeypatch):
    """No replay runs: the model sees one forward per prefill."""
    model, calls = tiny_llama(), []
    model.model.register_forward_pre_hook(lambda *_: calls.append(1))
    with tokenomy.apply(model, "kvzap", keep=0.5, surrogate=tiny_surrogate):
        model(ids(), past_key_values=DynamicCache())
    assert len(calls) == 1
    with tokenomy.apply(model, "kvzip", keep=0.5):
        model(ids(), past_key_values=DynamicCache())
    assert len(calls) == 3  # KVzip: the prefill and its replay


def test_a_surrogate_for_another_model_is_refused(tmp_path):
    net = fit([label(tiny_llama(layers=2), ids(32, s)) for s in range(3)], hidden=4, epochs=1, seed=0,
              trained_for="two-layer-llama", log=lambda *_: None)
    path = str(save(net, tmp_path / "other.safetensors", {}))
    model = tiny_llama()
    with pytest.raises(TokenomyError, match="trained for two-layer-llama .*train-kv kvzap"):
        with tokenomy.apply(model, "kvzap", keep=0.5, surrogate=path):
            model(ids(), past_key_values=DynamicCache())


def test_bad_surrogate_files_fail_when_the_method_is_built(tmp_path):
    with pytest.raises(TokenomyError, match="no KVzap surrogate at"):
        create_spec(f"kvzap:surrogate={tmp_path / 'missing.safetensors'}")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(TokenomyError, match="is not a KVzap surrogate"):
        create_spec(f"kvzap:surrogate={junk}")


def test_the_shipped_surrogate_is_declared_for_smollm2():
    net = load_surrogate()
    assert SHIPPED.stat().st_size < 2_000_000
    assert get("kvzap").trained_for == net.trained_for == "smollm2-135m"


def test_shipped_surrogate_predicts_kvzip_on_unseen_text(smollm2):
    """On a passage of *Alice* (never trained on), the shipped surrogate's scores rank SmolLM2's entries as KVzip
    does: Pearson correlation of log scores over every layer and head."""
    from tokenomy.bench.kv_decode import context_ids

    model, tokenizer = smollm2
    layers = label(model, context_ids(tokenizer, 512, seed=3))
    net = load_surrogate()
    features = torch.stack([f for f, _ in layers])
    with torch.no_grad():
        predicted = net(features, list(range(len(layers))))
    truth = torch.stack([s for _, s in layers])
    assert torch.corrcoef(torch.stack([predicted.flatten(), truth.flatten()]))[0, 1] > 0.6


def test_passkey_samples_hold_the_key_where_they_say(smollm2):
    import random

    _, tokenizer = smollm2
    ids, (start, stop), answer = kv_heads.passkey_sample(tokenizer, "lorem ipsum dolor " * 400, 300,
                                                         random.Random(0))
    assert ids.shape == (1, 300)
    key = tokenizer.decode(ids[0, start:stop])
    assert key.isdigit() and len(key) == 5 and tokenizer.decode(ids[0, -answer:]) == key
    assert "What is the pass key?" in tokenizer.decode(ids[0, stop:])


def test_retrieval_scores_are_attention_shares_per_kv_head():
    model = tiny_llama()
    scores = kv_heads.retrieval_scores(model, ids(50), (20, 24), 3)
    assert scores.shape == (3, 2) and (scores >= 0).all() and (scores <= 1).all() and scores.sum() > 0


def test_duoattention_gives_retrieval_heads_everything_and_streaming_heads_their_window(tiny_profile):
    model, x, n, keep = tiny_llama(), ids(80), 80, 0.5
    cache = DynamicCache()
    with tokenomy.apply(model, "duoattention", keep=keep, profile=tiny_profile, recent=0.25) as session:
        model(x, past_key_values=cache)
        lengths = [layer.lengths[0].tolist() for layer in cache.layers]
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=0)
    budget = kept_count(keep, n)  # 40 per head on average, 6 heads
    window = 4 + int(0.25 * budget)  # sinks + recent share of the budget
    assert session.stats.entries_kept == 2 * 6 * budget
    assert lengths[1][0] == n and lengths[0][1] == n  # the two retrieval heads keep everything
    spare = 6 * budget - 2 * n - 4 * window  # what is left goes to the next head in the profile: layer 2, head 1
    assert lengths[2][1] == window + spare and lengths[0][0] == lengths[1][1] == lengths[2][0] == window
    assert out.shape == (1, 84)


def test_head_profiles_for_another_model_or_broken_files_are_refused(tmp_path):
    other = str(kv_heads.save_profile(torch.rand(2, 2), tmp_path / "two.json", "two-layer-llama", {}))
    model = tiny_llama()
    with pytest.raises(TokenomyError, match="measured on two-layer-llama .*train-kv duoattention"):
        with tokenomy.apply(model, "duoattention", keep=0.5, profile=other):
            model(ids(), past_key_values=DynamicCache())
    with pytest.raises(TokenomyError, match="no head profile at"):
        create_spec(f"duoattention:profile={tmp_path / 'missing.json'}")
    (tmp_path / "junk.json").write_text('{"profile": [1, 2]}')
    with pytest.raises(TokenomyError, match="is not a head profile"):
        create_spec(f"duoattention:profile={tmp_path / 'junk.json'}")


def test_the_shipped_head_profile_is_declared_for_smollm2():
    profile, trained_for = kv_heads.load_profile()
    assert profile.shape == (30, 3)
    assert get("duoattention").trained_for == trained_for == "smollm2-135m"
