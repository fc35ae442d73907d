"""Visual-token methods on tiny random-weight models of every supported VLM family (tests/vlm_families.py):
before the language model, between its layers, stacked with a KV method — invariants on every family."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from vlm_families import FAMILIES

import tokenomy
from tokenomy.adapters.lm import decoder
from tokenomy.adapters.vlm import supported_families, vlm_adapter
from tokenomy.budget import Keep, kept_count
from tokenomy.sites.vision.in_llm import AtLayers, EvenStages, InLLM
from tokenomy.sites.vision.prellm import PreLLM
from tokenomy.sites.vision.session import VisualMethods

SITES = ("pre-llm", "vision-encoder", "in-llm")
VISUAL = sorted(m.name for m in tokenomy.methods() if m.site in SITES)
_MODELS: dict = {}


def family(name: str):
    """The family's tiny model (built once per run) and its inputs of both kinds."""
    if name not in _MODELS:
        build, make = FAMILIES[name]
        model = build()
        _MODELS[name] = (model, {kind: make(model, kind) for kind in ("one", "two")})
    return _MODELS[name]


def built(name: str, keep: float):
    return tokenomy.get(name).create(keep=keep).as_visual()


def refusal(model, methods: VisualMethods) -> str | None:
    """What the family refuses of ``methods``, by the capabilities the adapter declares (None: nothing)."""
    try:
        methods.check(vlm_adapter(model), len(decoder(model).layers))
    except tokenomy.TokenomyError as err:
        return str(err)
    return None


SPECIAL = [150, 151, 152, 153]  # placeholders and image brackets (vlm_families): never generated


def greedy(model, inputs, steps=4, **options):
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=steps, do_sample=False, suppress_tokens=SPECIAL, **options)


def test_every_family_is_covered():
    covered = {vlm_adapter(family(name)[0]).config.model_type for name in FAMILIES}
    assert covered == set(supported_families())


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("method", VISUAL)
def test_keep_one_changes_nothing(name, method):
    model, inputs = family(name)
    if refusal(model, built(method, 1.0)):
        pytest.skip("the family refuses this method (tested below)")
    for batch in inputs.values():
        with torch.no_grad():
            reference = model(**batch).logits
        expected = greedy(model, batch)
        with tokenomy.apply(model, method, keep=1.0) as session, torch.no_grad():
            logits = model(**batch).logits
            out = greedy(model, batch)
        torch.testing.assert_close(logits, reference, rtol=1e-4, atol=1e-5)
        assert torch.equal(out, expected)
        assert session.stats.tokens_kept == session.stats.tokens_seen


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("method", VISUAL)
def test_reduced_generation_runs_and_counts_exactly(name, method):
    model, inputs = family(name)
    batch = inputs["two"]
    methods = built(method, 0.3)
    reason = refusal(model, methods)
    if reason:
        with pytest.raises(tokenomy.TokenomyError):
            tokenomy.apply(model, method, keep=0.3)
        return
    with tokenomy.apply(model, method, keep=0.3) as session:
        out = greedy(model, batch)
    assert out.shape == (batch["input_ids"].shape[0], batch["input_ids"].shape[1] + 4)
    assert torch.equal(out[:, :batch["input_ids"].shape[1]], batch["input_ids"])  # the caller's prompt comes back
    stats = session.stats
    images = len(stats.crop_counts)
    if methods.before is not None:
        assert stats.tokens_kept < stats.tokens_seen and images >= 2
        assert all(sum(counts) >= 1 for counts in stats.crop_counts)
    if isinstance(methods.before, PreLLM):  # each image keeps floor(keep * placeholders + 1/2) of its placeholders
        assert [sum(counts) for counts in stats.crop_counts] == [int(kept_count(0.3, p)) for p in stats.placeholders]
    if methods.inside is not None:  # visual tokens never come back; a fixed budget drops some at its first layer
        first = min(methods.inside.stage_layers(len(stats.layer_tokens)))
        tokens = stats.layer_tokens
        assert all(later <= earlier for earlier, later in zip(tokens, tokens[1:]))
        if isinstance(methods.inside.budget, Keep):
            assert tokens[first] < tokens[first - 1]


@pytest.mark.parametrize("name", sorted(FAMILIES))
@pytest.mark.parametrize("keep", [0.11, 0.4])
def test_pre_llm_budget_reaches_the_language_model_exactly(name, keep):
    model, inputs = family(name)
    placeholders = []
    for batch in inputs.values():  # each image's placeholders, from the session's own accounting at keep = 1
        with torch.no_grad(), tokenomy.apply(model, "divprune", keep=1.0) as session:
            model(**batch)
        placeholders.append(session.stats.placeholders)
    widths = []
    for batch, own in zip(inputs.values(), placeholders):
        with torch.no_grad(), tokenomy.apply(model, "divprune", keep=keep) as session:
            handle = decoder(model).register_forward_pre_hook(  # after the session's: sees what it hands on
                lambda m, a, kw: widths.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
            model(**batch)
            handle.remove()
        assert [sum(c) for c in session.stats.crop_counts] == [int(kept_count(keep, p)) for p in own]
        assert session.stats.tokens_seen == sum(own)
    one = inputs["one"]["input_ids"]
    assert widths[0] == one.shape[1] - sum(placeholders[0]) + int(kept_count(keep, placeholders[0][0]))


@dataclass
class GridScore:
    """A score that depends only on where a visual token sits, so an uncached recomputation drops the same ones."""

    def __call__(self, view):
        cells = view.grid.float()
        return (cells[..., 1] * 7 + cells[..., 2] * 3 + cells[..., 0]) % 11


def _coherent(model, methods: VisualMethods, batch, steps=4) -> float:
    """Largest logit difference between cached generation and recomputing the whole prompt at every step."""
    with torch.no_grad(), methods.apply(model):
        out = model.generate(**batch, max_new_tokens=steps, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, suppress_tokens=SPECIAL)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
        worst = 0.0
        for step, logits in enumerate(out.logits):
            options = dict(extra)
            if "token_type_ids" in batch:
                options["token_type_ids"] = torch.cat([batch["token_type_ids"], torch.zeros_like(ids[:, :step])], 1)
            fresh = model(input_ids=ids, attention_mask=mask, use_cache=False, **options).logits[:, -1]
            worst = max(worst, float((fresh - logits).abs().max()))
            ids = torch.cat([ids, out.sequences[:, ids.shape[1]:ids.shape[1] + 1]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if hasattr(model.model, "rope_deltas"):
                model.model.rope_deltas = None
    return worst


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_generation_after_reduction_is_coherent(name):
    """Positions, masks and caches: cached decoding equals recomputing the reduced prompt at every step, for a
    left-padded batch whose rows keep different numbers of tokens — before, inside, and both."""
    model, inputs = family(name)
    adapter = vlm_adapter(model)
    layer = max(2, adapter.first_in_llm_layer)
    inside = InLLM(AtLayers((layer,)), GridScore(), Keep(0.4))
    staged = InLLM(EvenStages(2), GridScore(), Keep(0.5))
    for methods in (built("divprune", 0.3), built("avgpool", 0.3), VisualMethods(inside=inside),
                    VisualMethods(before=built("todre", 0.5).before, inside=staged)):
        if refusal(model, methods):
            continue
        for batch in inputs.values():
            assert _coherent(model, methods, batch) < 1e-4, methods


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "gemma3"])
def test_batch_rows_match_their_prompts_alone(name):
    model, inputs = family(name)
    batch = inputs["two"]
    with tokenomy.apply(model, "divprune", keep=0.3):
        both = greedy(model, batch)
    singles = _split(name, model, batch)
    with tokenomy.apply(model, "divprune", keep=0.3):
        for row, single in enumerate(singles):
            alone = greedy(model, single)
            assert torch.equal(both[row, -4:], alone[0, -4:])


def _split(name, model, batch) -> list[dict]:
    """The two prompts of a kind-"two" batch as separate batches (padding removed)."""
    out, offset = [], 0
    grids = batch.get("image_grid_thw")
    for row in range(batch["input_ids"].shape[0]):
        real = batch["attention_mask"][row].bool()
        single = {"input_ids": batch["input_ids"][row, real][None],
                  "attention_mask": batch["attention_mask"][row, real][None]}
        if "token_type_ids" in batch:
            single["token_type_ids"] = batch["token_type_ids"][row, real][None]
        if grids is not None:
            patches = int(grids[row].prod())
            single["pixel_values"] = batch["pixel_values"][offset:offset + patches]
            single["image_grid_thw"] = grids[row:row + 1]
            offset += patches
        else:
            per_image = getattr(model.config, "mm_tokens_per_image", 16)  # LLaVA: one crop of 4 x 4 patches
            images = int(vlm_adapter(model).placeholders(batch["input_ids"][row:row + 1]).sum()) // per_image
            single["pixel_values"] = batch["pixel_values"][offset:offset + images]
            offset += images
        out.append(single)
    return out


def test_in_llm_equals_an_explicit_layer_loop():
    """FastV's surgery against a hand-written decoder loop: every layer up to K over all tokens, the rest over the
    kept ones with their own positions, the causal order unchanged."""
    model, inputs = family("llava")
    batch = inputs["one"]
    decided = []

    class Recording(InLLM):
        def decide(self, view):
            keep, merged = super().decide(view)
            decided.append(keep[0].clone())
            return keep, merged

    method = Recording(AtLayers((2,)), GridScore(), Keep(0.4))
    embeds = []
    stack = decoder(model)
    handle = stack.register_forward_pre_hook(lambda m, a, kw: embeds.append(kw["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.no_grad(), method.apply(model):
            logits = model(**batch).logits[0, -1]
    finally:
        handle.remove()
    with torch.no_grad():
        hidden = embeds[0]
        positions = torch.arange(hidden.shape[1])[None]
        for index, layer in enumerate(stack.layers):
            if index == 2:
                keep = decided[0]
                hidden, positions = hidden[:, keep], positions[:, keep]
            rope = stack.rotary_emb(hidden, positions)
            hidden = layer(hidden, attention_mask=None, position_embeddings=rope, position_ids=positions)
        expected = model.lm_head(stack.norm(hidden))[0, -1]
    assert int((~decided[0]).sum()) > 0
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["llava", "qwen2_vl", "qwen3_vl", "gemma3", "internvl"])
def test_stack_before_inside_and_kv(name):
    model, inputs = family(name)
    batch = inputs["two"]
    layer = max(2, vlm_adapter(model).first_in_llm_layer)
    stack = ["divprune", f"fastv:K={layer}", "snapkv:window=4"]
    expected = greedy(model, batch)
    with tokenomy.apply(model, stack, keep=1.0):
        assert torch.equal(greedy(model, batch), expected)
    with tokenomy.apply(model, stack, keep=[0.5, 0.5, 0.5]) as session:
        out = greedy(model, batch)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4
    visual, kv = session.stats.visual, session.stats.kv
    assert visual.tokens_kept < visual.tokens_seen and visual.layer_tokens[layer] < visual.layer_tokens[layer - 1]
    assert 0 < kv.entries_kept < kv.entries_seen


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_kv_methods_run_on_m_rope(name):
    model, inputs = family(name)
    batch = inputs["two"]
    expected = greedy(model, batch)
    with tokenomy.apply(model, "snapkv", keep=1.0, window=4):
        assert torch.equal(greedy(model, batch), expected)
    for method in ("snapkv", "h2o", "tova"):
        with tokenomy.apply(model, method, keep=0.5) as session:
            out = greedy(model, batch)
        assert out.shape[1] == batch["input_ids"].shape[1] + 4
        assert session.stats.entries_kept < session.stats.entries_seen


def test_unknown_family_names_the_supported_ones(model):
    with pytest.raises(tokenomy.TokenomyError, match="supported families: .*qwen2_vl"):
        tokenomy.apply(model, "divprune", keep=0.5)


def test_merging_in_the_tower_needs_one_token_per_patch():
    model, _ = family("qwen2_vl")
    assert not vlm_adapter(model).one_token_per_patch
    with pytest.raises(tokenomy.TokenomyError, match="every patch becomes one language-model token"):
        tokenomy.apply(model, "tome", keep=0.5)


@pytest.mark.parametrize("keep", [0, 1.5, "half", None])
def test_bad_keep_is_one_clear_error(keep):
    with pytest.raises(tokenomy.TokenomyError, match="keep"):
        tokenomy.apply(family("llava")[0], "todre", keep=keep)


def test_in_llm_layer_past_the_depth_is_refused():
    model, _ = family("llava")
    with pytest.raises(tokenomy.TokenomyError, match=r"\[1, 3\]"):
        tokenomy.apply(model, "fastv", keep=0.5, K=9)
    with pytest.raises(tokenomy.TokenomyError, match=r"\[1, 3\]"):
        tokenomy.apply(model, "fastv", keep=0.5, K=0)


def test_qwen3_in_llm_starts_after_its_deepstack_layers():
    model, _ = family("qwen3_vl")
    with pytest.raises(tokenomy.TokenomyError, match="from layer 2 on"):
        tokenomy.apply(model, "fastv", keep=0.5, K=1)


def test_a_stack_takes_one_method_per_place():
    model, _ = family("llava")
    with pytest.raises(tokenomy.TokenomyError, match="two methods act before the language model"):
        tokenomy.apply(model, ["divprune", "todre"], keep=0.5)
    with pytest.raises(tokenomy.TokenomyError, match="between the language model's layers"):
        tokenomy.apply(model, ["todre", "fastv"], keep=0.5)  # ToDRE's second stage is in-LLM
    with pytest.raises(tokenomy.TokenomyError, match="one KV-cache method"):
        tokenomy.apply(model, ["snapkv", "h2o"], keep=0.5)
    with pytest.raises(tokenomy.TokenomyError, match="one fraction per stacked method"):
        tokenomy.apply(model, ["divprune", "snapkv"], keep=[0.5])
    with pytest.raises(tokenomy.TokenomyError, match="KVzip"):
        tokenomy.apply(model, ["fastv", "kvzip"], keep=0.5)


def test_bad_inputs_raise_clear_errors():
    model, inputs = family("llava")
    batch = dict(inputs["one"])
    with tokenomy.apply(model, "divprune", keep=0.5):
        with pytest.raises(tokenomy.TokenomyError, match="labels"):
            model(**batch, labels=batch["input_ids"])
        with pytest.raises(tokenomy.TokenomyError, match="input_ids"):
            embeds = model.get_input_embeddings()(batch["input_ids"])
            model(inputs_embeds=embeds, pixel_values=batch["pixel_values"], attention_mask=batch["attention_mask"])
        with pytest.raises(tokenomy.TokenomyError, match="already applied"):
            with tokenomy.apply(model, "fastv", keep=0.5):
                pass
    with tokenomy.apply(model, "divprune", keep=0.5), pytest.raises(tokenomy.TokenomyError, match="video"):
        model(**batch, pixel_values_videos=batch["pixel_values"])


def test_images_of_different_sizes_in_one_batch():
    """Dynamic-resolution families take them (tested above); LLaVA-NeXT gives each its own crops and budget."""
    model, inputs = family("llava_next")
    with tokenomy.apply(model, "divprune", keep=0.25) as session:
        greedy(model, inputs["two"])
    sizes = [sum(c) for c in session.stats.crop_counts]
    assert len(set(sizes)) == 2  # different images, different budgets


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("method", VISUAL)
def test_methods_run_where_the_model_is(method):
    build, make = FAMILIES["reference"]
    model = build().to("cuda")
    batch = {k: v.cuda() for k, v in make(model, "two").items()}
    with tokenomy.apply(model, method, keep=0.25) as session:
        out = greedy(model, batch)
    assert out.device.type == "cuda" and session.stats.tokens_seen > 0
