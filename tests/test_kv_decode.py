"""`tokenomy bench kv-decode` on a tiny random-weight model: rows, resident bytes, the CLI's validation."""

import pytest
import torch
from transformers import DynamicCache

import tokenomy
from tokenomy.budget import kept_count
from tokenomy.bench import kv_decode
from tokenomy.adapters.caches import cache_bytes, copy_cache
from tokenomy.sites import kv_layers

from conftest import tiny_llama


class ByteTokenizer:
    """Enough of a tokenizer for the benchmark's context: one id per character, within the tiny vocabulary."""

    def encode(self, text, add_special_tokens=False):
        return [3 + ord(c) % 120 for c in text]


def test_resident_bytes_follow_the_kept_entries_for_uniform_and_ragged_budgets():
    model = tiny_llama()
    records = kv_decode.run(model, ByteTokenizer(), [96], ["snapkv", "kvzip"], 0.25, steps=3, repeats=2, seed=1)
    assert len(records) == 4 * 2 and all(len(r["step_seconds"]) == 3 for r in records)
    rows = {row["method"]: row for row in kv_decode.summarize(records)}
    assert list(rows) == ["full", kv_decode.IN_PLACE, "snapkv", "kvzip"]
    share = kept_count(0.25, 96).item() / 96
    assert rows["full"]["resident_share"] == 1.0 and rows["full"]["speedup"] == 1.0
    in_place = rows[kv_decode.IN_PLACE]  # the same entries, the same attention: the same tokens, nothing evicted
    assert in_place["keep"] == 1.0 and in_place["resident_share"] == 1.0 and in_place["same_tokens"] == 1.0
    for name in ("snapkv", "kvzip"):  # kvzip's heads keep ragged counts: stored packed, nothing padded
        assert rows[name]["resident_share"] == pytest.approx(share, abs=1e-12)
        assert 0.0 <= rows[name]["same_tokens"] <= 1.0 and rows[name]["tokens_per_s"] > 0


@pytest.mark.parametrize("name, options", [("snapkv", {}), ("kvzip", {}), ("snapkv", {"bits": 4}),
                                           ("kvzip", {"bits": 4}), ("h2o", {"evict_every": 8}),
                                           ("snapkv", {"evict_every": 8, "bits": 4})])
def test_decoding_into_spare_room_changes_no_logit_and_copies_of_a_cache_never_share_it(name, options, monkeypatch):
    """Appends go into room a layer made after what it stores (rectangular for SnapKV, per segment for KVzip's
    packed heads, quantized or not; evicting while decoding in between). The logits equal those of layers
    that copy everything at every step, and copies of one cache (`copy_cache` shares tensors), decoded in
    turns with different tokens and one copied mid-way, each get what they get alone."""
    model = tiny_llama()
    context = torch.randint(3, 128, (1, 96), generator=torch.Generator().manual_seed(1))
    streams = torch.randint(3, 128, (3, 70), generator=torch.Generator().manual_seed(2))

    def session():
        return tokenomy.apply(model, name, keep=0.5, **options)

    with session(), torch.no_grad():
        prefilled = DynamicCache()
        model(context, past_key_values=prefilled)

    def decode(cache, stream):
        return [model(t.view(1, 1), past_key_values=cache).logits[0, -1] for t in stream]

    with session(), torch.no_grad():
        monkeypatch.setattr(kv_layers, "SPARE", 10 ** 9)  # no room: every append copies (as torch.cat does)
        plain = [copy_cache(prefilled) for _ in streams]
        expected = [torch.stack(decode(cache, stream)) for cache, stream in zip(plain, streams)]
        monkeypatch.setattr(kv_layers, "SPARE", 2)  # room for half more: most appends in place, a quantized group too
        for stream, want in zip(streams, expected):
            assert torch.equal(torch.stack(decode(copy_cache(prefilled), stream)), want)
        first, second = copy_cache(prefilled), copy_cache(prefilled)
        got = [[], [], []]
        for i in range(70):
            if i == 40:
                third = copy_cache(first)  # holds the first stream's 40 tokens, goes on with the third's
            got[0] += decode(first, streams[0, i:i + 1])
            got[1] += decode(second, streams[1, i:i + 1])
            if i >= 40:
                got[2] += decode(third, streams[2, i:i + 1])
        third_got = torch.stack(got[2])
        reference = copy_cache(prefilled)
        decode(reference, streams[0, :40])
        third_expected = torch.stack(decode(reference, streams[2, 40:]))
    assert torch.equal(torch.stack(got[0]), expected[0]) and torch.equal(torch.stack(got[1]), expected[1])
    assert torch.equal(third_got, third_expected)
    assert cache_bytes(plain[0]) <= cache_bytes(first) <= 1.5 * cache_bytes(plain[0])  # room: at most 1/SPARE more


def test_a_replay_past_the_window_is_refused_before_any_prefill(monkeypatch):
    model = tiny_llama()
    limit = model.config.max_position_embeddings
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("a prefill ran"))
    with pytest.raises(tokenomy.TokenomyError, match=f"replaying a {limit - 8}-token context .*chunk=8 or less"):
        kv_decode.run(model, ByteTokenizer(), [96, limit - 8], ["snapkv", "kvzip"], 0.25, steps=2, repeats=1, seed=0)
    with pytest.raises(tokenomy.TokenomyError, match="no chunk fits"):
        kv_decode.run(model, ByteTokenizer(), [limit], ["kvzip:chunk=16"], 0.25, steps=2, repeats=1, seed=0)


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


def test_the_default_methods_pass_the_checks_at_the_default_lengths_in_smollm2s_window():
    """A bare `tokenomy bench kv-decode` must not be refused: no default method's replay overruns 8,192 positions."""
    from tokenomy.catalog import create_spec
    from tokenomy.cli import build_parser
    from tokenomy.sites.kv_session import check_replay_fits

    args = build_parser().parse_args(["bench", "kv-decode"])
    model = tiny_llama()
    model.config.max_position_embeddings = 8192
    for spec in args.methods:
        method = create_spec(spec, keep=args.keep)
        if method.replays:
            check_replay_fits(model, max(args.length), method.replay_chunk)


def test_the_full_cache_held_in_place_decodes_as_hf_s_and_appends_without_copying():
    """`held_in_place` shares the prefill's tensors, gives HF's cache's logits, and after its first append (which
    makes room for 1/`SPARE` more) writes each token into that room: the stored keys stay where they are."""
    model = tiny_llama()
    context = torch.randint(3, 128, (1, 300), generator=torch.Generator().manual_seed(0))  # room for 301 // 128
    with torch.no_grad():
        prefilled = DynamicCache()
        model(context, past_key_values=prefilled)
        held = kv_layers.held_in_place(prefilled)
        assert held.layers[0].keys.data_ptr() == prefilled.layers[0].keys.data_ptr()
        expected = [model(torch.tensor([[t]]), past_key_values=prefilled).logits for t in (5, 6, 7)]
        with tokenomy.apply(model, "streamingllm", keep=1.0):
            got, places = [], []
            for t in (5, 6, 7):
                got.append(model(torch.tensor([[t]]), past_key_values=held).logits)
                places.append(held.layers[0].keys.data_ptr())
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected))
    assert places[0] == places[1] == places[2] and held.get_seq_length() == 303


def test_held_in_place_refuses_layers_that_do_not_hold_every_token_seen():
    """A sliding-window layer holds only the window: held as if it held everything, its positions would be
    wrong, so it is refused by name."""
    from transformers.cache_utils import DynamicSlidingWindowLayer

    cache = DynamicCache()
    cache.layers.append(DynamicSlidingWindowLayer(sliding_window=4))
    cache.layers[0].update(torch.randn(1, 2, 6, 16), torch.randn(1, 2, 6, 16))
    with pytest.raises(tokenomy.TokenomyError, match="DynamicSlidingWindowLayer"):
        kv_layers.held_in_place(cache)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_a_decoding_step_attends_a_segment_as_sdpa_does(dtype, atol, mask):
    """One query per head (the matrix-product path) against the fused kernel, with no mask, a boolean one and an
    additive one, in float32 and bfloat16 (softmax in float32 either way)."""
    generator = torch.Generator().manual_seed(0)
    query, keys, values = (torch.randn(*shape, generator=generator).to(dtype) for shape in
                           [(3, 1, 16), (40, 16), (40, 16)])
    allowed = {None: None, "bool": torch.rand(1, 40, generator=generator) > 0.3,
               "float": torch.randn(1, 40, generator=generator).to(dtype)}[mask]
    got = kv_layers._segment_attention(query, keys, values, allowed, 0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query.float()[None], keys.float().expand(1, 3, 40, 16), values.float().expand(1, 3, 40, 16),
        attn_mask=None if allowed is None else (allowed if mask == "bool" else allowed.float())[None, None],
        scale=0.25)[0]
    assert got.shape == (3, 1, 16) and got.dtype == dtype
    assert torch.allclose(got.float(), expected, atol=atol)
