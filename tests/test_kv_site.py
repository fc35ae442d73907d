"""Every KV method on a tiny random Llama (GQA): invariants of the site and of each recipe."""

import pytest
import torch
from transformers import DynamicCache

import tokenomy
from tokenomy.budget import HeadAdaptive, Keep, Pyramid, kept_count
from tokenomy.adapters.caches import copy_cache
from tokenomy.score.base import LayerObservation, attention_and_received
from tokenomy.score.norms import KeyNorm
from tokenomy.sites.kv_cache import SITE, KVCompression
from tokenomy.sites.kv_recorder import PrefillRecorder
from tokenomy.sites.kv_session import KVStats
from tokenomy.sites.kv_layers import CompressedLayer, PackedLayer, PrunedLayer
from tokenomy.sites.kv_policies import EvictWhileDecoding, SelectPerStep

from conftest import tiny_gemma3, tiny_llama

# Methods with a learned part trained for one real model (kvzap, duoattention) run on the tiny model in
# test_kv_learned.py, with a part trained for it. The groups below follow what each recipe declares.
RECIPES = {m.name: m.create() for m in tokenomy.methods(SITE) if m.trained_for is None}
METHODS = list(RECIPES)
EVICTING = [m for m, r in RECIPES.items() if not r.selects_per_step]
UNIFORM = [m for m in EVICTING  # the same count in every head of every layer
           if not isinstance(RECIPES[m].heads, HeadAdaptive) and type(RECIPES[m].budget) is Keep]
EVICT_WHILE_DECODING = [m for m in EVICTING if not isinstance(RECIPES[m].heads, HeadAdaptive)]
ACCUMULATING = [m for m in EVICTING if RECIPES[m].sums_received]  # scores summed over every query (H2O)


def ids(n=60, seed=1, batch=1):
    return torch.randint(3, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def generate(model, x, **kwargs):
    return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                          output_scores=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_keep_one_changes_nothing(model, name):
    x = ids()
    reference = generate(model, x)
    options = {"evict_every": 2} if name in EVICT_WHILE_DECODING else {}
    with tokenomy.apply(model, name, keep=1.0, **options) as session:
        out = generate(model, x)
    assert torch.equal(out.sequences, reference.sequences)
    for a, b in zip(out.scores, reference.scores):
        assert torch.allclose(a, b)
    assert session.stats.layers_compressed == 0


@pytest.mark.parametrize("name", METHODS)
def test_generation_after_compression_is_coherent(model, name):
    x = ids(80)
    with tokenomy.apply(model, name, keep=0.3):
        out = generate(model, x, max_length=None)
        cache = DynamicCache()
        model(x, past_key_values=cache)
    assert out.sequences.shape == (1, 88)
    for layer in cache.layers:
        assert isinstance(layer, CompressedLayer)
        assert layer.get_seq_length() == 80  # positions stay those of the uncompressed sequence


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", METHODS)
def test_methods_run_where_the_model_is(name):
    gpu, x = tiny_llama().to("cuda"), ids(80).cuda()
    with torch.no_grad(), tokenomy.apply(gpu, name, keep=0.3) as session:
        out = gpu.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.device.type == "cuda" and out.shape == (1, 88)
    assert RECIPES[name].selects_per_step or session.stats.entries_kept < session.stats.entries_seen


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", EVICT_WHILE_DECODING)
def test_eviction_while_decoding_runs_where_the_model_is(name):
    gpu, x = tiny_llama().to("cuda"), ids(80).cuda()
    with torch.no_grad(), tokenomy.apply(gpu, name, keep=0.3, evict_every=4) as session:
        out = gpu.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert out.device.type == "cuda" and out.shape == (1, 90)
    assert session.stats.evictions == 2 * len(gpu.model.layers)


@pytest.mark.parametrize("with_config", [True, False])
@pytest.mark.parametrize("name", ["pyramidkv", "snapkv", "h2o", "kvzip"])
def test_sliding_window_layers_are_left_alone_and_budgets_spread_over_the_others(name, with_config):
    """Gemma-3's local layers bound their own cache (or, in a cache built without the config, keep it whole);
    the budget (PyramidKV's schedule too) is honoured over the full-attention layers the site compresses."""
    model, x = tiny_gemma3(), ids(60)
    cache = DynamicCache(config=model.config) if with_config else DynamicCache()
    with tokenomy.apply(model, name, keep=0.25) as session:
        model(x, past_key_values=cache)
    compressed = [t == "full_attention" for t in model.config.layer_types]
    assert [isinstance(layer, CompressedLayer) for layer in cache.layers] == compressed
    assert session.stats.entries_kept == sum(compressed) * kept_count(0.25, 60) * 2  # 2 KV heads


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_kvzip_keeps_what_the_replayed_context_attends_to_most(implementation, monkeypatch):
    """KVzip end to end against HF's own attention weights: the model fed the context twice attends, from the
    second copy, to the first; an entry's score is the largest of those weights (over its KV group's query
    heads and the copy's tokens), every layer's heads share one budget (the top half of all scores), and
    the replay leaves nothing behind in the cache. On SDPA the replay's fused attention hands its
    log-normalisers over (the scorer computes none; without gradients); on eager the scorer computes them."""
    from tokenomy.score import reconstruction

    computed = []
    fallback = reconstruction._log_normalizers
    monkeypatch.setattr(reconstruction, "_log_normalizers", lambda *a: computed.append(1) or fallback(*a))
    model = tiny_llama()
    model.set_attn_implementation("eager")
    x = ids(40)
    twice = model(torch.cat([x, x], dim=1), output_attentions=True).attentions  # (1, 4, 80, 80) per layer
    model.set_attn_implementation(implementation)
    scores = torch.stack([a[0, :, 40:, :40].amax(dim=1).view(2, 2, 40).amax(dim=1) for a in twice])  # (3, 2, 40)
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[scores.flatten().topk(3 * 2 * 20).indices] = True
    chosen = chosen.view(3, 2, 40)
    plain, cache = DynamicCache(), DynamicCache()
    model(x, past_key_values=plain)
    with tokenomy.apply(model, "kvzip", keep=0.5, sinks=0) as session, torch.no_grad():  # fused: no gradients
        model(x, past_key_values=cache)
    assert session.stats.entries_kept == 3 * 2 * 20 and session.stats.scoring_seconds > 0
    assert len(computed) == (3 if implementation == "eager" else 0)
    assert model.config._attn_implementation == implementation
    assert len({layer.kept_entries() for layer in cache.layers}) > 1  # the layers did not share evenly
    for expected, layer, full in zip(chosen, cache.layers, plain.layers):
        assert layer.seen == 40
        keys, _, positions, valid = layer.padded()
        for head in range(2):
            in_use = valid[0, head] if valid is not None else slice(None)
            assert torch.equal(positions[0, head][in_use], expected[head].nonzero().flatten())
        gather = positions.unsqueeze(-1).expand(-1, -1, -1, 16)
        assert torch.equal(keys, full.keys.gather(2, gather))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_kvzip_replays_a_long_context_chunk_by_chunk_after_the_whole_context(implementation):
    """``chunk=15`` on 40 tokens: three replays (15, 15, 10 tokens), each fed right after the whole context,
    positions continuing from it; an entry's score is the most attention any chunk's query pays it, against
    HF's own attention weights for each chunk appended to the context."""
    model = tiny_llama()
    model.set_attn_implementation("eager")
    x, n = ids(40), 40
    per_chunk = []
    for first in range(0, n, 15):
        part = x[:, first:first + 15]
        positions = torch.cat([torch.arange(n), n + torch.arange(part.shape[1])])[None]
        attentions = model(torch.cat([x, part], dim=1), position_ids=positions, output_attentions=True).attentions
        per_chunk.append(torch.stack([a[0, :, n:, :n].amax(dim=1).view(2, 2, n).amax(dim=1) for a in attentions]))
    scores = torch.stack(per_chunk).amax(dim=0)  # (3 layers, 2 KV heads, 40)
    chosen = torch.zeros(scores.numel(), dtype=torch.bool)
    chosen[scores.flatten().topk(3 * 2 * 20).indices] = True
    model.set_attn_implementation(implementation)
    cache = DynamicCache()
    with tokenomy.apply(model, "kvzip", keep=0.5, sinks=0, chunk=15), torch.no_grad():
        model(x, past_key_values=cache)
    for expected, layer in zip(chosen.view(3, 2, n), cache.layers):
        _, _, positions, valid = layer.padded()
        for head in range(2):
            in_use = valid[0, head] if valid is not None else slice(None)
            assert torch.equal(positions[0, head][in_use], expected[head].nonzero().flatten())


def test_kvzip_refuses_a_replay_past_the_models_positions_and_names_a_chunk_that_fits():
    model = tiny_llama()
    limit = model.config.max_position_embeddings
    x = ids(limit // 2 + 10)
    with tokenomy.apply(model, "kvzip", keep=0.5), pytest.raises(tokenomy.TokenomyError, match="chunk=\\d+ or less"):
        model(x, past_key_values=DynamicCache())
    with tokenomy.apply(model, "kvzip", keep=0.5, chunk=limit // 4) as session:
        model(x, past_key_values=DynamicCache())
    assert session.stats.layers_compressed == 3


def test_kvzip_leaves_sliding_window_layers_as_the_prefill_left_them():
    """The replay runs on a copy of the cache: Gemma-3's local layers (which would roll over to the replay's
    tokens) hold exactly what a plain prefill leaves."""
    model, x = tiny_gemma3(), ids(60)
    plain, cache = DynamicCache(config=model.config), DynamicCache(config=model.config)
    model(x, past_key_values=plain)
    with tokenomy.apply(model, "kvzip", keep=0.25):
        model(x, past_key_values=cache)
    for kind, layer, full in zip(model.config.layer_types, cache.layers, plain.layers):
        if kind == "sliding_attention":
            assert torch.equal(layer.keys, full.keys) and torch.equal(layer.values, full.values)
        else:
            assert isinstance(layer, CompressedLayer) and layer.seen == 60


def test_kvzip_replays_embeddings_as_it_replays_token_ids(model):
    """A prefill fed embeddings (as a VLM's language model is) is replayed as embeddings: same kept entries."""
    x = ids(40)
    by_ids, by_embeddings = DynamicCache(), DynamicCache()
    with tokenomy.apply(model, "kvzip", keep=0.4):
        model(x, past_key_values=by_ids)
        model(inputs_embeds=model.get_input_embeddings()(x), past_key_values=by_embeddings)
    for a, b in zip(by_ids.layers, by_embeddings.layers):
        assert torch.equal(a.positions, b.positions) and torch.allclose(a.keys, b.keys)


def test_kvzip_needs_its_own_prefill():
    model, x = tiny_llama(), ids(30)
    recorder, plain = PrefillRecorder(model), DynamicCache()
    with recorder.record():
        model(x, past_key_values=plain)
    with tokenomy.apply(model, "kvzip", keep=0.5) as session, pytest.raises(tokenomy.TokenomyError, match="replays the"):
        session.compress(copy_cache(plain), recorder.observations)


@pytest.mark.parametrize("name", METHODS)
def test_methods_decode_coherently_with_sliding_window_layers(name):
    model, x = tiny_gemma3(), ids(40)
    reference = generate(model, x)
    with tokenomy.apply(model, name, keep=1.0):
        assert torch.equal(generate(model, x).sequences, reference.sequences)
    with tokenomy.apply(model, name, keep=0.3) as session:
        out = generate(model, x)
    assert out.sequences.shape == (1, 48)
    assert RECIPES[name].selects_per_step or session.stats.entries_kept < session.stats.entries_seen


@pytest.mark.parametrize("name", UNIFORM)
@pytest.mark.parametrize("keep", [0.5, 0.25, 0.013])
def test_budget_is_honoured_exactly(model, name, keep):
    x = ids(77)
    cache = DynamicCache()
    with tokenomy.apply(model, name, keep=keep) as session:
        model(x, past_key_values=cache)
    expected = kept_count(keep, 77).item()
    for layer in cache.layers:
        assert layer.stored == expected and layer.valid is None
        assert (layer.positions.diff(dim=-1) > 0).all()  # distinct, in causal order
    assert session.stats.entries_kept == expected * 2 * 3  # 2 KV heads x 3 layers


def test_kvzip_pool_keeps_neighbours_of_what_it_keeps(model):
    """``pool=3``: the same exact budget, and a kept entry (sinks aside) mostly arrives with a neighbour."""
    x = ids(90)
    kept = {}
    for pool in (1, 3):
        cache = DynamicCache()
        with tokenomy.apply(model, "kvzip", keep=0.2, pool=pool) as session:
            model(x, past_key_values=cache)
        assert session.stats.entries_kept == kept_count(0.2, 90).item() * 2 * 3
        runs = []
        for layer in cache.layers:
            _, _, positions, valid = layer.padded()
            for head in range(2):
                chosen = positions[0, head][valid[0, head]] if valid is not None else positions[0, head]
                chosen = chosen[chosen >= 4]
                runs.append(float((chosen.diff() == 1).float().mean()) if len(chosen) > 1 else 0.0)
        kept[pool] = sum(runs) / len(runs)
    assert kept[3] > kept[1]  # more kept entries sit next to another kept one


@pytest.mark.parametrize("keep", [0.5, 0.25, 0.013])
def test_kvzip_shares_the_exact_total_across_layers_and_heads(model, keep):
    x = ids(77)
    cache = DynamicCache()
    with tokenomy.apply(model, "kvzip", keep=keep) as session:
        model(x, past_key_values=cache)
    assert session.stats.entries_kept == sum(layer.kept_entries() for layer in cache.layers)
    assert session.stats.entries_kept == kept_count(keep, 77).item() * 2 * 3  # 2 KV heads x 3 layers
    for layer in cache.layers:
        _, _, positions, valid = layer.padded()
        in_use = valid if valid is not None else torch.ones_like(positions, dtype=torch.bool)
        for head in range(2):  # distinct, in causal order, the 4 sinks first where the head keeps anything
            kept = positions[0, head][in_use[0, head]]
            sinks = min(4, len(kept))
            assert (kept.diff() > 0).all() and torch.equal(kept[:sinks], torch.arange(sinks))


def test_a_budget_shared_across_layers_is_the_same_hooked_or_recorded(model):
    """Any scorer can share one budget across layers (`HeadAdaptive(across_layers=True)`): the hooks wait for
    the whole prefill, the recorded path allocates the same way, and the total is exact."""
    method = KVCompression(score=KeyNorm(), budget=Keep(0.3), heads=HeadAdaptive(0.0, across_layers=True))
    x = ids(64)
    hooked = DynamicCache()
    with method.apply(model) as session:
        model(x, past_key_values=hooked)
    assert session.stats.entries_kept == kept_count(0.3, 64).item() * 2 * 3
    recorder, plain = PrefillRecorder(model), DynamicCache()
    with recorder.record():
        model(x, past_key_values=plain)
    recorded = copy_cache(plain)
    with method.apply(model) as session:
        session.compress(recorded, recorder.observations)
    for a, b in zip(hooked.layers, recorded.layers):
        assert type(a) is type(b)
        (a_keys, _, a_positions, a_valid), (b_keys, _, b_positions, b_valid) = a.padded(), b.padded()
        assert torch.equal(a_positions, b_positions) and torch.equal(a_keys, b_keys)
        assert (a_valid is None and b_valid is None) or torch.equal(a_valid, b_valid)


def test_pyramid_budgets_sum_to_the_uniform_total(model):
    cache = DynamicCache()
    with tokenomy.apply(model, "pyramidkv", keep=0.5, window=4):
        model(ids(100), past_key_values=cache)
    stored = [layer.stored for layer in cache.layers]
    assert sum(stored) == 3 * 50 and stored[0] > stored[-1]


def test_adakv_shares_each_layer_budget_across_heads(model):
    cache = DynamicCache()
    with tokenomy.apply(model, "adakv", keep=0.5) as session:
        model(ids(100), past_key_values=cache)
    for layer in cache.layers:
        _, _, positions, valid = layer.padded()
        in_use = valid.sum(-1) if valid is not None else torch.full((1, 2), positions.shape[-1])
        assert in_use.sum().item() == 2 * 50
        assert (in_use >= int(50 * 0.2)).all()
    assert session.stats.entries_kept == 3 * 2 * 50


def test_adakv_unused_slots_are_never_attended(model):
    """On an implementation the site cannot attend for (eager), ragged budgets stay rectangular, masked."""
    model.set_attn_implementation("eager")
    x = ids(100)
    cache = DynamicCache()
    with tokenomy.apply(model, "adakv", keep=0.3, floor=0.0, scorer="knorm"):
        model(x, past_key_values=cache)
        ragged = [layer for layer in cache.layers if layer.valid is not None]
        assert ragged, "expected at least one layer with unequal head budgets"
        nxt = torch.tensor([[5]])
        before = model(nxt, past_key_values=copy_cache(cache)).logits
        for layer in ragged:  # garbage in every unused slot must not change anything
            layer.keys = layer.keys.masked_fill(~layer.valid.unsqueeze(-1), 1e4)
            layer.values = layer.values.masked_fill(~layer.valid.unsqueeze(-1), 1e4)
        after = model(nxt, past_key_values=copy_cache(cache)).logits
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("name, options", [("adakv", {"scorer": "knorm", "floor": 0.0}), ("kvzip", {})])
def test_ragged_budgets_are_stored_packed_and_decode_as_the_rectangle_does(name, options):
    """On SDPA, layers whose heads (or rows) keep different counts store exactly the kept entries
    (`PackedLayer`): resident bytes = kept entries, and a question, a step and a padded batch give what the
    rectangular, masked layout gives on eager attention."""
    long, short = ids(70, seed=3), ids(52, seed=4)
    batch = torch.cat([torch.cat([torch.zeros(1, 18, dtype=torch.long), short], dim=1), long])
    mask = torch.cat([torch.cat([torch.zeros(1, 18), torch.ones(1, 52)], dim=1), torch.ones(1, 70)]).long()
    question = torch.cat([ids(6, seed=2)] * 2)
    outputs, caches = {}, {}
    for implementation in ("eager", "sdpa"):
        model = tiny_llama()
        model.set_attn_implementation(implementation)
        cache = DynamicCache()
        with tokenomy.apply(model, name, keep=0.3, **options) as session:
            model(batch, attention_mask=mask, past_key_values=cache)
            full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], dim=1)
            answer = model(question, attention_mask=full_mask, past_key_values=cache).logits
            step = model(torch.tensor([[7], [7]]), attention_mask=torch.cat([full_mask, torch.ones(2, 1)], dim=1),
                         past_key_values=cache).logits
        outputs[implementation], caches[implementation] = (answer, step), (cache, session.stats)
    packed, stats = caches["sdpa"]
    assert all(isinstance(layer, PackedLayer) for layer in packed.layers)
    assert stats.bytes_kept == stats.entries_kept * 2 * 16 * 4  # keys + values, head size 16, float32
    assert sum(layer.resident_bytes() for layer in caches["eager"][0].layers) > stats.bytes_kept
    for ours, reference in zip(outputs["sdpa"], outputs["eager"]):
        assert torch.allclose(ours[1], reference[1], atol=1e-4)  # the real row
        assert torch.allclose(ours[0, -1:], reference[0, -1:], atol=1e-4)  # the padded row's last token


@pytest.mark.parametrize("name", UNIFORM)
def test_decoding_matches_a_plain_cache_of_the_kept_entries(model, name):
    """Mask mapping and positions: the compressed cache behaves exactly like a plain HF cache holding the
    kept entries, fed with explicit positions (the kvpress way), for a multi-token question and a step."""
    context, question = ids(70), ids(6, seed=2)
    cache = DynamicCache()
    with tokenomy.apply(model, name, keep=0.4):
        model(context, past_key_values=cache)
        plain = DynamicCache()
        for i, layer in enumerate(cache.layers):
            plain.update(layer.keys, layer.values, i)
        ours = model(question, past_key_values=cache).logits
        ours_step = model(torch.tensor([[7]]), past_key_values=cache).logits
    positions = torch.arange(70, 76)[None]
    ref = model(question, past_key_values=plain, position_ids=positions).logits
    ref_step = model(torch.tensor([[7]]), past_key_values=plain, position_ids=torch.tensor([[76]])).logits
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours_step, ref_step, atol=1e-5)


@pytest.mark.parametrize("name", [m for m in EVICTING if not RECIPES[m].replays])  # a replay: its own test below
def test_recorded_prefill_gives_the_same_cache_as_the_hooks(model, name):
    x = ids(64)
    hooked = DynamicCache()
    with tokenomy.apply(model, name, keep=0.4):
        model(x, past_key_values=hooked)
    recorder, plain = PrefillRecorder(model), DynamicCache()
    with recorder.record():
        model(x, past_key_values=plain)
    recorded = copy_cache(plain)
    with tokenomy.apply(model, name, keep=0.4) as session:
        session.compress(recorded, recorder.observations)
    for a, b in zip(hooked.layers, recorded.layers):
        assert torch.equal(a.positions, b.positions)
        assert torch.equal(a.keys, b.keys)


@pytest.mark.parametrize("name", ACCUMULATING)
def test_prefill_attention_hands_over_the_accumulated_sums(model, name, monkeypatch):
    """On SDPA without gradients, each layer's prefill attention sums what H2O needs on the way: the same
    kept entries as recomputing it afterwards (what the site does with gradients on), and the model's
    implementation is restored after the block."""
    import tokenomy.sites.scoring_attention as summing

    calls = []
    monkeypatch.setattr(summing, "attention_and_received", lambda *a: calls.append(1) or attention_and_received(*a))
    x = ids(64)
    summed, recomputed = DynamicCache(), DynamicCache()
    with tokenomy.apply(model, name, keep=0.4) as session:
        with torch.no_grad():
            a = model(x, past_key_values=summed).logits
        b = model(x, past_key_values=recomputed).logits
    assert session.sums_in_prefill and len(calls) == len(model.model.layers)
    assert model.config._attn_implementation == "sdpa"
    for p, q in zip(summed.layers, recomputed.layers):
        assert torch.equal(p.positions, q.positions)
        assert torch.allclose(p.keys, q.keys, atol=1e-5)
    assert torch.allclose(a, b, atol=1e-4)


def test_summing_attention_keeps_sdpa_for_masks_it_does_not_compute():
    """A prefill whose mask is not causal + key padding (here one query also sees a later key, as in
    bidirectional image spans) runs on SDPA unchanged and hands over no sums; a plain one sums."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tokenomy.sites.scoring_attention import SUMS, _attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).tril().view(1, 1, 6, 6)
    span = causal.clone()
    span[0, 0, 2, 3] = True
    for mask, sums in ((span, False), (causal, True), (None, True)):
        setattr(module, SUMS, True)
        with torch.no_grad():
            out, _ = _attention(module, q, k, v, mask)
            reference, _ = sdpa_attention_forward(module, q, k, v, mask, is_causal=mask is None)
        assert torch.allclose(out, reference, atol=1e-5)
        assert isinstance(getattr(module, SUMS), torch.Tensor) == sums


@pytest.mark.parametrize("padding", [0, 3, 7, 9])
def test_replay_attention_hands_over_its_log_normalizers(padding):
    """A marked forward whose queries continue after earlier keys (a replay) gets SDPA's own output and each
    query's log-normaliser over the keys it sees (causal from its position, padding excluded) — also when
    padding covers all the earlier keys (7) or reaches into the replay's own (9)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tokenomy.sites.scoring_attention import NORMALIZERS, _attention

    torch.manual_seed(0)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 2
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    valid = torch.arange(12) >= torch.tensor([[0], [padding]])
    mask = torch.ones(5, 12, dtype=torch.bool).tril(7) & valid[:, None, None, :]
    seen = mask.any(dim=-1)  # a query that sees no key (padding 9: the replay's first two) has no output
    setattr(module, NORMALIZERS, True)
    with torch.no_grad():
        out, _ = _attention(module, q, k, v, mask)
        reference, _ = sdpa_attention_forward(module, q, k, v, mask)
    logits = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2) / 8**0.5).masked_fill(~mask, -torch.inf)
    rows = seen.squeeze(1)  # (b, w); outputs are (b, w, h, d)
    assert torch.allclose(out[rows], reference[rows], atol=1e-5)
    assert torch.allclose(getattr(module, NORMALIZERS)[seen.expand(-1, 4, -1)],
                          logits.logsumexp(dim=-1)[seen.expand(-1, 4, -1)], atol=1e-5)


def assert_padded_batch_matches_each_row(model, name, new_tokens, **options):
    """A left-padded batch gives each row what it gets alone (tokens and scores); returns the session."""
    long, short = ids(60, seed=3), ids(45, seed=4)
    batch = torch.zeros(2, 60, dtype=torch.long)
    batch[0], batch[1, 15:] = long[0], short[0]
    mask = torch.ones(2, 60, dtype=torch.long)
    mask[1, :15] = 0
    kwargs = dict(max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=0)
    with tokenomy.apply(model, name, keep=0.5, **options) as session:
        together = model.generate(batch, attention_mask=mask, **kwargs)
        alone = [model.generate(row, attention_mask=torch.ones_like(row), **kwargs) for row in (long, short)]
    for row in range(2):
        assert torch.equal(together.sequences[row, 60:], alone[row].sequences[0, -new_tokens:])
        for step in range(len(alone[row].scores)):
            assert torch.allclose(together.scores[step][row], alone[row].scores[step][0], atol=1e-4)
    return session


@pytest.mark.parametrize("name", [m for m in METHODS if not RECIPES[m].batch_dependent])
def test_left_padded_batch_matches_each_row_alone(model, name):
    assert_padded_batch_matches_each_row(model, name, 6)


@pytest.mark.parametrize("name", EVICT_WHILE_DECODING)
def test_eviction_while_decoding_holds_the_budget(model, name):
    """evict_every=n: after the prefill each layer holds its budget; while decoding it grows by one entry
    per token and is cut back to that budget once n tokens have arrived."""
    x, steps, every = ids(50), 11, 4
    cache = DynamicCache()
    stored = []
    with tokenomy.apply(model, name, keep=0.4, evict_every=every) as session:
        logits = model(x, past_key_values=cache).logits
        budgets = [layer.stored for layer in cache.layers]
        for _ in range(steps):
            logits = model(logits[:, -1:].argmax(-1), past_key_values=cache).logits
            stored.append([layer.stored for layer in cache.layers])
    for step, sizes in enumerate(stored, start=1):
        assert sizes == [b + step % every for b in budgets]
    for layer in cache.layers:
        assert layer.seen == 50 + steps and layer.positions.shape[-1] == layer.stored
        assert (layer.positions.diff(dim=-1) > 0).all()
        assert layer.positions[0, :, -(steps % every):].eq(torch.arange(50 + steps - steps % every, 50 + steps)).all()
    assert session.stats.evictions == 3 * (steps // every)


@pytest.mark.parametrize("name", [m for m in UNIFORM if m in EVICT_WHILE_DECODING])
def test_decoding_after_an_eviction_matches_a_plain_cache_of_the_kept_entries(model, name):
    """Positions and masks after evictions while decoding: each step equals a plain HF cache holding the
    entries the layer kept, fed with the step's true position."""
    x = ids(40)
    cache = DynamicCache()
    with tokenomy.apply(model, name, keep=0.5, evict_every=2):
        token = model(x, past_key_values=cache).logits[:, -1:].argmax(-1)
        for position in range(40, 47):
            plain = DynamicCache()
            for i, layer in enumerate(cache.layers):
                plain.update(layer.keys, layer.values, i)
            reference = model(token, past_key_values=plain, position_ids=torch.tensor([[position]])).logits
            ours = model(token, past_key_values=cache).logits
            assert torch.allclose(ours, reference, atol=1e-5)
            token = ours[:, -1:].argmax(-1)
    assert all(layer.stored == 20 + 1 for layer in cache.layers)  # 7 steps: 3 evictions back to 20, then one more


@pytest.mark.parametrize("name", ACCUMULATING)
def test_accumulated_attention_keeps_accumulating_while_decoding(name):
    """H2O's score while decoding is everything each entry has received: the prompt's attention plus that of
    every decoded token (HF's own attention weights, recomputed on a plain cache of the kept entries). The
    site folds the decoded tokens' share in at the eviction, for all of them at once: after it, each kept
    entry holds exactly that sum."""
    model = tiny_llama()
    model.set_attn_implementation("eager")
    x = ids(40)
    prompt = model(x, output_attentions=True).attentions  # uncompressed: (1, 4, 40, 40) per layer
    cache = DynamicCache()
    with tokenomy.apply(model, name, keep=0.5, evict_every=4) as session:
        token = model(x, past_key_values=cache).logits[:, -1:].argmax(-1)
        expected = [a[0].sum(1).gather(-1, layer.positions[0].repeat_interleave(2, 0))
                    for a, layer in zip(prompt, cache.layers)]
        before = [torch.cat([layer.positions[0], torch.arange(40, 44).expand(2, 4)], -1) for layer in cache.layers]
        for position in range(40, 44):
            plain = DynamicCache()
            for i, layer in enumerate(cache.layers):
                plain.update(layer.keys, layer.values, i)
            step = model(token, past_key_values=plain, position_ids=torch.tensor([[position]]),
                         output_attentions=True).attentions
            expected = [torch.cat([e, e.new_zeros(4, 1)], -1) + a[0, :, 0] for e, a in zip(expected, step)]
            token = model(token, past_key_values=cache).logits[:, -1:].argmax(-1)
    assert session.stats.evictions == len(cache.layers)  # the 4th decoded token brought the cut
    for layer, e, positions in zip(cache.layers, expected, before):
        kept = layer.positions[0]  # (2 KV heads, 20) of the 24 entries the history was summed over
        index = (kept.unsqueeze(-1) == positions.unsqueeze(1)).int().argmax(-1).repeat_interleave(2, 0)
        assert kept.shape == (2, 20) and not layer.unscored
        assert torch.allclose(layer.history[0], e.gather(-1, index), atol=1e-5)
    fresh = DynamicCache()
    with tokenomy.apply(model, "tova", keep=0.5, evict_every=2):  # not accumulating: no history kept
        model(x, past_key_values=fresh)
        model(token, past_key_values=fresh)
    assert all(layer.history is None for layer in fresh.layers)


@pytest.mark.parametrize("name", ["snapkv", "h2o"])  # h2o: its deferred history follows the batch too
def test_eviction_while_decoding_with_generate_padding_and_beams(model, name):
    session = assert_padded_batch_matches_each_row(model, name, 9, evict_every=3)
    assert session.stats.evictions > 0
    long = ids(60, seed=3)
    with tokenomy.apply(model, name, keep=0.5, evict_every=3) as session:
        beams = model.generate(long, attention_mask=torch.ones_like(long), max_new_tokens=7, num_beams=3,
                               do_sample=False, pad_token_id=0)
    assert session.stats.evictions > 0 and beams.shape == (1, 67)


def test_a_copied_cache_grows_apart_from_its_original(model):
    """`copy_cache` shares tensors; H2O's forwards waiting to be scored must not leak between copies."""
    cache = DynamicCache()
    with torch.no_grad(), tokenomy.apply(model, "h2o", keep=0.5, evict_every=8):
        token = model(ids(40), past_key_values=cache).logits[:, -1:].argmax(-1)
        model(token, past_key_values=cache)
        copy = copy_cache(cache)
        model(token, past_key_values=copy)
    assert all(len(a.unscored) == 1 and len(b.unscored) == 2 for a, b in zip(cache.layers, copy.layers))
    assert all(a.stored + 1 == b.stored for a, b in zip(cache.layers, copy.layers))


def test_forwards_waiting_to_be_scored_follow_beam_reordering():
    """The hidden states H2O's history has yet to take in are re-indexed with the cache (beam search)."""
    layer = PrunedLayer(torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 4), torch.arange(3).expand(2, 1, 3), None, 3)
    hidden, cos = torch.tensor([[[1.0]], [[2.0]]]), torch.ones(1, 1, 4)
    layer.unscored = [(hidden, cos, cos)]
    layer.reorder_cache(torch.tensor([1, 0]))
    assert layer.unscored[0][0].flatten().tolist() == [2.0, 1.0] and layer.unscored[0][1].shape[0] == 1
    layer.batch_repeat_interleave(2)
    assert layer.unscored[0][0].flatten().tolist() == [2.0, 2.0, 1.0, 1.0]


def test_short_context_below_sinks_plus_window_still_honours_the_budget(model):
    cache = DynamicCache()
    with tokenomy.apply(model, "snapkv", keep=0.5):  # window 32 > budget 5
        model(ids(10), past_key_values=cache)
        model.generate(ids(10), attention_mask=torch.ones(1, 10, dtype=torch.long), max_new_tokens=3,
                       pad_token_id=0)
    assert all(layer.stored == 5 for layer in cache.layers)
    assert cache.layers[0].positions[0, 0].tolist() == [5, 6, 7, 8, 9]  # the most recent win


def test_tokenselect_keeps_everything_but_attends_to_the_budget(model, monkeypatch):
    attended = []
    original = PrunedLayer.update

    def spy(self, key_states, value_states, cache_kwargs=None):
        if self.selection is not None:
            attended.append((self.selection.shape[-1], self.stored))
        return original(self, key_states, value_states, cache_kwargs)

    monkeypatch.setattr(PrunedLayer, "update", spy)
    cache = DynamicCache()
    with tokenomy.apply(model, "tokenselect", keep=0.5, sinks=0, recent=0):
        model(ids(80), past_key_values=cache)
        model(torch.tensor([[9]]), past_key_values=cache)
    assert attended == [(40, 80)] * 3  # every layer: 40 of its 80 stored entries, nothing evicted


def step_observation(layer, queries):
    """What the site hands a decode-phase method before a one-token forward over ``layer``."""
    return LayerObservation(keys=layer.keys, values=layer.values, valid=None, layer_idx=0, num_layers=1,
                            query_offset=layer.stored, num_queries=1, scale=0.5, query_fn=lambda w: queries)


def test_selection_cache_reuses_scored_picks_while_queries_stay_similar():
    """TokenSelect's Selection Cache: a similar query keeps the scored picks and moves the recent window on
    (the budget still exact); a dissimilar one selects afresh."""
    torch.manual_seed(0)
    method = tokenomy.get("tokenselect").create(keep=0.25, sinks=2, recent=4, reuse_similarity=0.9)
    keys = torch.randn(1, 2, 40, 4)
    layer = PrunedLayer(keys, keys.clone(), torch.arange(40).expand(1, 2, 40), None, seen=40)
    query, stats = torch.randn(1, 4, 1, 4), KVStats()
    method.choose(layer, step_observation(layer, query), stats)
    first = layer.selection[0, 0].tolist()
    assert len(first) == 10 and first[:2] == [0, 1] and first[-4:] == [36, 37, 38, 39]

    new = torch.randn(1, 2, 8, 4)  # eight tokens later
    layer.keys, layer.values = torch.cat([layer.keys, new], dim=2), torch.cat([layer.values, new], dim=2)
    layer.positions = torch.cat([layer.positions, torch.arange(40, 48).expand(1, 2, 8)], dim=-1)
    method.choose(layer, step_observation(layer, query * 1.5 + 0.01), stats)  # cosine > 0.9
    assert layer.selection[0, 0].tolist() == first[:6] + [42, 43, 44, 45, 46, 47]  # 12 = 25% of 48
    assert stats.selections == 2 and stats.selections_reused == 1

    method.choose(layer, step_observation(layer, -query), stats)  # cosine -1: select again
    assert stats.selections == 3 and stats.selections_reused == 1
    fresh = method.select(step_observation(layer, -query))[0]
    assert torch.equal(layer.selection, fresh)


def test_policies_wrap_a_built_method_as_the_site_options_do(model):
    """`EvictWhileDecoding(method, every)` is what ``evict_every=`` builds; a policy passes ``bits`` to the method
    it wraps and shares its attributes."""
    x = ids(80)
    with tokenomy.apply(model, "h2o", keep=0.5, evict_every=4):
        by_option = generate(model, x)
    wrapped = EvictWhileDecoding(tokenomy.get("h2o").create(keep=0.5), every=4)
    assert wrapped.keep == 0.5 and wrapped.accumulates and not wrapped.packable and not wrapped.head_adaptable
    with wrapped.apply(model) as session:
        by_hand = generate(model, x)
    assert torch.equal(by_hand.sequences, by_option.sequences) and session.stats.evictions > 0
    quantized = tokenomy.get("tokenselect").create(keep=0.5, bits=4)
    assert isinstance(quantized, SelectPerStep) and quantized.inner.bits == 4 and quantized.quantizer.bits == 4


def test_selection_cache_generates_coherently(model):
    x = ids(80)
    reference = generate(model, x).sequences
    with tokenomy.apply(model, "tokenselect", keep=1.0, reuse_similarity=0.05):
        assert torch.equal(generate(model, x).sequences, reference)  # keep=1.0 changes nothing
    with tokenomy.apply(model, "tokenselect", keep=0.25, reuse_similarity=0.05) as session:
        out = generate(model, x)
    assert session.stats.selections_reused > 0 and out.sequences.shape == reference.shape
    assert torch.isfinite(torch.stack(out.scores)).all()


def test_compressed_cache_outside_its_block_is_a_clear_error(model):
    cache = DynamicCache()
    with tokenomy.apply(model, "knorm", keep=0.5):
        model(ids(30), past_key_values=cache)
    with pytest.raises(tokenomy.TokenomyError, match="inside a `with tokenomy.apply"):
        model(torch.tensor([[4]]), past_key_values=cache)


def test_sessions_do_not_nest_and_are_reusable(model):
    method = tokenomy.get("knorm").create(keep=0.5)
    with method.apply(model):
        with pytest.raises(tokenomy.TokenomyError, match="already applied"):
            with tokenomy.apply(model, "snapkv", keep=0.5):
                pass
    for _ in range(2):
        with method.apply(model) as session:
            model(ids(20), past_key_values=DynamicCache())
        assert session.stats.layers_compressed == 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: tokenomy.apply(m, "nope", keep=0.5), "unknown method 'nope'; choose one of: adakv"),
        (lambda m: tokenomy.apply(m, "snapkv", keep=0), "keep must be in"),
        (lambda m: tokenomy.apply(m, "snapkv", keep=1.01), "keep must be in"),
        (lambda m: tokenomy.apply(m, "snapkv", keep=0.5, windw=3), "has no option 'windw'; its options are: keep"),
        (lambda m: tokenomy.apply(m, "adakv", keep=0.5, scorer="tokenselect"), "adakv cannot wrap"),
        (lambda m: tokenomy.apply(m, "snapkv", keep=0.5, window=0), "window must be"),
        (lambda m: tokenomy.apply(m, "snapkv", keep=0.5, evict_every=-2), "evict_every must be"),
        (lambda m: tokenomy.apply(m, "tokenselect", keep=0.5, evict_every=8),
         "EvictWhileDecoding cannot wrap a method that selects per step"),
        (lambda m: tokenomy.apply(m, "adakv", keep=0.5, evict_every=8), "cannot wrap a method that uses head-adaptive"),
        (lambda m: tokenomy.apply(m, "kvzip", keep=0.5, evict_every=8), "cannot wrap a method that replays"),
        (lambda m: tokenomy.apply(m, "kvzip", keep=0.5, pool=0), "pool must be"),
        (lambda m: tokenomy.apply(m, "tokenselect", keep=0.5, reuse_similarity=0), "reuse_similarity must be in"),
        (lambda m: tokenomy.apply(m, "tokenselect", keep=0.5, reuse_similarity="high"), "reuse_similarity must be a"),
        (lambda m: SelectPerStep(KVCompression(score=KeyNorm(), heads=HeadAdaptive())),
         "SelectPerStep cannot wrap a method that uses head-adaptive"),
        (lambda m: SelectPerStep(EvictWhileDecoding(KVCompression(score=KeyNorm()), 4)), "already acts while decoding"),
        (lambda m: EvictWhileDecoding(EvictWhileDecoding(KVCompression(score=KeyNorm()), 4), 8),
         "already evicts while decoding"),
        (lambda m: KVCompression(score=KeyNorm(), budget=Pyramid(0.5), heads=HeadAdaptive(across_layers=True)),
         "cannot also follow a layer schedule"),
        (lambda m: HeadAdaptive(across_layers=1), "across_layers must be True or False"),
    ],
)
def test_bad_arguments_raise_one_clear_error(model, call, message):
    with pytest.raises(tokenomy.TokenomyError, match=message):
        call(model)


def test_beam_search_reorders_positions_with_the_cache():
    """Every returned beam's score (summed log-probabilities: no length penalty) is what its tokens cost when fed
    one by one after the same compressed prefill: each beam's cache followed its parent's."""
    model = tiny_llama()
    x = ids(40, seed=7)  # a prompt whose beams change parents
    with tokenomy.apply(model, "snapkv", keep=0.5), torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=8, num_beams=3, do_sample=False,
                             pad_token_id=0, length_penalty=0.0, num_return_sequences=3, output_scores=True,
                             return_dict_in_generate=True)
        costs = []
        for sequence in out.sequences[:, 40:].tolist():
            cache = DynamicCache()
            logits = model(x, past_key_values=cache).logits[:, -1]
            costs.append(0.0)
            for token in sequence:
                costs[-1] += float(logits.log_softmax(-1)[0, token])
                logits = model(torch.tensor([[token]]), past_key_values=cache).logits[:, -1]
    assert out.sequences.shape == (3, 48) and bool((out.beam_indices[:, :-1] > 0).any())
    assert torch.allclose(out.sequences_scores, torch.tensor(costs), atol=1e-4)


def test_public_listing_survives_loading_the_recipes():
    import tokenomy.recipes  # noqa: F401  (a package named like the function would shadow it)

    assert callable(tokenomy.methods) and set(METHODS) < {m.name for m in tokenomy.methods()}


@pytest.mark.parametrize("bits, tolerance", [(8, 0.01), (4, 0.1), (2, 0.5)])
def test_quantized_entries_round_trip_within_their_step(bits, tolerance):
    """Keys per channel over groups of 32 tokens (the last group shorter), values per token over groups of 32
    channels: every value within half a step of its group's range."""
    from tokenomy.sites.kv_quant import KVQuantizer

    quantizer = KVQuantizer(bits)
    x = torch.randn(2, 3, 40, 64)
    x[..., 5] *= 20  # an outlier channel, as keys have
    rows, table = quantizer.encode_keys(x, first_id=7)
    assert rows.dtype == torch.uint8 and rows.shape == (2, 3, 40, 64 * bits // 8 + 4)
    assert table.shape == (2 * 3 * 2, 2, 64)  # two groups (32 + 8 tokens) per row and head
    table = torch.cat([torch.zeros(7, 2, 64, dtype=table.dtype), table])
    back = quantizer.decode_keys(rows, table, torch.float32)
    for tokens in (slice(0, 32), slice(32, 40)):
        group = x[:, :, tokens]
        step = (group.amax(2, keepdim=True) - group.amin(2, keepdim=True)) / (2**bits - 1)
        assert ((back[:, :, tokens] - group).abs() <= step / 2 + 1e-2 * step.abs().amax()).all()
    assert ((back - x).abs()[..., 6:]).mean() < tolerance

    rows = quantizer.encode_values(x)
    assert rows.shape == (2, 3, 40, quantizer.value_width(64)) and quantizer.value_width(64) == 64 * bits // 8 + 8
    back = quantizer.decode_values(rows, 64, torch.float32)
    step = (x.view(2, 3, 40, 2, 32).amax(-1) - x.view(2, 3, 40, 2, 32).amin(-1)) / (2**bits - 1)
    assert ((back - x).abs().view(2, 3, 40, 2, 32) <= step.unsqueeze(-1) / 2 + 1e-2).all()


@pytest.mark.parametrize("name", ["snapkv", "adakv", "kvzip"])
def test_quantized_cache_stores_bytes_and_decodes_close_to_the_float_one(name):
    """bits=4 on rectangular and packed layouts: the layers store uint8 rows (resident bytes = kept entries x
    row widths + the key groups' scales, exactly), tokens added while decoding wait in full precision until
    a key group of them is complete, and the logits stay close to the float cache's (2 bits: further away)."""
    model, x = tiny_llama(), ids(80)
    logits, stats, caches = {}, {}, {}
    for bits in (16, 4, 2):
        cache = DynamicCache()
        with tokenomy.apply(model, name, keep=0.5, bits=bits) as session:
            model(x, past_key_values=cache)
            out = model.generate(torch.cat([x, ids(4, seed=5)], dim=1), past_key_values=cache, max_new_tokens=3,
                                 do_sample=False, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
        logits[bits], stats[bits], caches[bits] = torch.stack(out.scores), session.stats, cache
        if bits == 4:
            for layer in cache.layers:
                assert layer.keys.dtype == torch.uint8 and layer.tail_length == 6  # 6 tokens fed: fewer than 32
            assert sum(layer.kept_entries() for layer in cache.layers) == stats[16].entries_kept + 6 * 2 * 3  # 2 KV heads, 3 layers
    assert stats[4].entries_kept == stats[16].entries_kept
    groups = sum(layer.table.shape[0] for layer in caches[4].layers)
    assert stats[4].bytes_kept == stats[4].entries_kept * ((16 * 4 // 8 + 4) * 2) + groups * 2 * 16 * 2  # head size 16
    error = {bits: float((logits[bits] - logits[16]).abs().max()) for bits in (4, 2)}
    assert error[4] < 0.03 < float((logits[16] - logits[16].mean(-1, keepdim=True)).abs().max())  # logits span ~0.6
    assert error[2] > 2 * error[4]


@pytest.mark.parametrize("name", ["snapkv", "kvzip", "h2o"])
def test_quantized_tail_is_stored_once_a_group_fills_and_before_eviction(name):
    """Decoding past 32 new tokens stores them as a key group (the tail restarts), in either layout; eviction
    while decoding stores the tail first; the cache still matches its positions."""
    model, x = tiny_llama(), ids(60)
    options = {"evict_every": 8} if name == "h2o" else {}
    cache = DynamicCache()
    with tokenomy.apply(model, name, keep=0.5, bits=4, **options):
        model(x, past_key_values=cache)
        groups = [layer.table.shape[0] for layer in cache.layers]
        out = model.generate(torch.cat([x, ids(1, seed=5)], dim=1), past_key_values=cache, max_new_tokens=36,
                             min_new_tokens=36, do_sample=False, pad_token_id=0)
    assert out.shape[1] == 61 + 36
    for layer, before in zip(cache.layers, groups):
        assert layer.seen == 60 + 37 - 1
        if name == "h2o":  # evicted every 8 tokens: the tail is stored each time
            assert layer.tail_length <= 8 and layer.table.shape[0] > before
        else:  # 36 tokens went in: one group of 32 per row and head, 4 waiting
            assert layer.tail_length == 4 and layer.table.shape[0] == before + 2
        keys, values, positions, valid = layer.padded()
        assert keys.dtype == torch.float32 and keys.shape[:3] == positions.shape


def test_bits_keep_one_quantizes_without_evicting_and_bad_bits_fail(model):
    x = ids(40)
    cache = DynamicCache()
    with tokenomy.apply(model, "snapkv", keep=1.0, bits=8) as session:
        model(x, past_key_values=cache)
    assert session.stats.entries_kept == session.stats.entries_seen == 40 * 2 * 3
    assert all(layer.keys.dtype == torch.uint8 for layer in cache.layers)
    with pytest.raises(tokenomy.TokenomyError, match="bits must be one of 2, 4, 8"):
        tokenomy.apply(model, "snapkv", keep=0.5, bits=3)
