"""Scorers on plain tensors: each picks what its paper says it picks."""

import math

import pytest
import torch

from tokenomy._validation import TokenomyError
from tokenomy.score import Attention, Chunked, KeyDiversity, KeyNorm, LayerObservation, Pooled, RandomScores, Recency
from tokenomy.score import ValueWeighted
from tokenomy.score.base import Replay, attention_and_received
from tokenomy.score import reconstruction
from tokenomy.score.reconstruction import Reconstruction

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]


def observation(keys, values=None, queries=None, valid=None, query_offset=0, layer_idx=0):
    """An observation over plain tensors; queries default to the keys themselves (self-attention)."""
    b, h_kv, n, d = keys.shape
    values = torch.randn_like(keys) if values is None else values
    queries = keys if queries is None else queries
    return LayerObservation(
        keys=keys, values=values, valid=valid, layer_idx=layer_idx, num_layers=2,
        query_offset=query_offset, num_queries=queries.shape[2], scale=1 / math.sqrt(d),
        query_fn=lambda w: queries[:, :, -w:],
    )


def test_key_norm_prefers_small_keys():
    keys = torch.ones(1, 1, 4, 2)
    keys[0, 0, 2] = 0.1
    scores = KeyNorm()(observation(keys))
    assert scores.argmax(-1).item() == 2


def test_key_diversity_prefers_the_outlier_key():
    keys = torch.tensor([1.0, 0.0]).repeat(1, 1, 6, 1)
    keys[0, 0, 4] = torch.tensor([0.0, 1.0])
    assert KeyDiversity()(observation(keys)).argmax(-1).item() == 4


def test_key_diversity_ignores_padding_in_the_mean():
    keys = torch.tensor([1.0, 0.0]).repeat(1, 1, 6, 1)
    keys[0, 0, :3] = torch.tensor([0.0, 1.0])  # padding that would dominate the mean
    valid = torch.tensor([[False, False, False, True, True, True]])
    scores = KeyDiversity()(observation(keys, valid=valid))
    assert torch.allclose(scores[0, 0, 3:], torch.full((3,), -1.0))


def test_attention_last_query_matches_manual_softmax():
    torch.manual_seed(0)
    keys = torch.randn(1, 1, 5, 4)
    queries = torch.randn(1, 1, 5, 4)
    obs = observation(keys, queries=queries)
    expected = torch.softmax(queries[0, 0, -1] @ keys[0, 0].T / 2.0, dim=-1)
    assert torch.allclose(Attention(window=1)(obs)[0, 0], expected, atol=1e-6)


def test_attention_is_causal_and_respects_padding():
    torch.manual_seed(0)
    keys = torch.randn(1, 1, 6, 4)
    valid = torch.tensor([[False, True, True, True, True, True]])
    probs = observation(keys, valid=valid).attention(None)  # (1, 1, 6, 6)
    assert torch.all(probs[0, 0].triu(1) == 0)  # no query sees the future
    assert torch.all(probs[0, 0, :, 0] == 0)  # nobody attends to padding
    assert torch.allclose(probs[0, 0, 1:].sum(-1), torch.ones(5))


def test_attention_decoding_queries_see_every_cached_key():
    keys = torch.randn(1, 1, 6, 4)
    queries = torch.randn(1, 1, 2, 4)
    probs = observation(keys, queries=queries, query_offset=6).attention(None)
    assert (probs > 0).all()


def naive_logits(keys, queries, valid, first):
    """The whole (queries x keys) matrix of scaled logits, GQA keys repeated, -inf where masked (causal from
    key ``first``, padding)."""
    b, h, w, d = queries.shape
    n, groups = keys.shape[2], h // keys.shape[1]
    logits = queries @ keys.repeat_interleave(groups, dim=1).transpose(-1, -2) / math.sqrt(d)
    key_pos, query_pos = torch.arange(n, device=keys.device), first + torch.arange(w, device=keys.device)
    allowed = key_pos.view(1, -1) <= query_pos.view(-1, 1)
    allowed = allowed & (valid.view(b, 1, 1, n) if valid is not None else True)
    return logits.masked_fill(~allowed, -torch.inf)


def naive_attention(keys, queries, valid, first):
    """Softmax over `naive_logits`; a query that sees no key gets zeros."""
    return torch.softmax(naive_logits(keys, queries, valid, first), dim=-1).nan_to_num(0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("query_offset, w", [(0, 300), (0, 40), (300, 3), (297, 3)])
def test_attention_blocks_equal_the_whole_matrix(padded, query_offset, w, device):
    """Block by block (keys beyond a block's reach skipped, one reused buffer, softmax in place) = the naive
    full softmax: a prompt's own queries (several 128-query blocks), a window of them, decoding queries that
    see every key, and the queries of a forward that just appended its tokens."""
    torch.manual_seed(0)
    keys, queries = torch.randn(2, 3, 300, 8, device=device), torch.randn(2, 6, w, 8, device=device)
    valid = (torch.arange(300, device=device) >= torch.tensor([[0], [37]], device=device)) if padded else None
    num_queries = 300 if query_offset == 0 else w
    obs = LayerObservation(keys=keys, values=keys, valid=valid, layer_idx=0, num_layers=1,
                           query_offset=query_offset, num_queries=num_queries, scale=1 / math.sqrt(8),
                           query_fn=lambda last: queries[:, :, -last:])
    expected = naive_attention(keys, queries, valid, query_offset + num_queries - w)
    assert torch.allclose(obs.attention(w, chunk=64), expected, atol=1e-6)
    if w == num_queries:
        assert torch.allclose(obs.received(), expected.sum(dim=2), atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padded", [False, True])
def test_prefill_attention_and_its_column_sums_in_one_pass(padded, device):
    """The output equals PyTorch's SDPA (GQA, causal, left padding) and the sums equal the whole matrix's."""
    torch.manual_seed(0)
    queries, keys, values = (torch.randn(2, h, 300, 8, device=device) for h in (6, 3, 3))
    valid = (torch.arange(300, device=device) >= torch.tensor([[0], [37]], device=device)) if padded else None
    out, received = attention_and_received(queries, keys, values, 1 / math.sqrt(8), valid)
    probs = naive_attention(keys, queries, valid, 0)
    assert torch.allclose(received, probs.sum(dim=2), atol=1e-4)
    real = slice(None) if valid is None else slice(37, None)  # padded queries' outputs are unused
    expected = probs @ values.repeat_interleave(2, dim=1)
    assert torch.allclose(out[1, :, real], expected[1, :, real], atol=1e-5)
    if valid is None:
        sdpa = torch.nn.functional.scaled_dot_product_attention(queries, keys, values, is_causal=True, enable_gqa=True)
        assert torch.allclose(out, sdpa, atol=1e-5)


def test_attention_accumulated_sum_differs_from_mean_only_by_scale():
    keys = torch.randn(2, 2, 8, 4)
    obs = observation(keys)
    total, mean = Attention(window=None, reduce="sum")(obs), Attention(window=None)(obs)
    assert torch.allclose(total, mean * 8, atol=1e-5)


def test_attention_groups_query_heads_per_kv_head():
    keys = torch.randn(1, 2, 5, 4)
    queries = torch.randn(1, 4, 5, 4)  # 2 query heads per KV head
    obs = observation(keys, queries=queries)
    grouped = Attention(window=2)(obs)
    assert grouped.shape == (1, 2, 5)
    layer = Attention(window=2, heads="layer")(obs)
    assert torch.equal(layer[0, 0], layer[0, 1])


def test_pooled_max_spreads_a_peak_to_its_neighbours_but_not_from_padding():
    class Peak:
        def __call__(self, obs):
            s = torch.zeros(1, 1, 9)
            s[0, 0, 4] = 1.0
            s[0, 0, 0] = 5.0  # a padding position with a high score
            return s

    valid = torch.ones(1, 9, dtype=torch.bool)
    valid[0, 0] = False
    pooled = Pooled(Peak(), kernel=3)(observation(torch.zeros(1, 1, 9, 2), valid=valid))
    assert pooled[0, 0].tolist()[1:] == [0, 0, 1, 1, 1, 0, 0, 0]


def test_chunked_gives_every_token_its_chunks_total_over_heads_and_keeps_chunks_whole():
    class Given:
        def __call__(self, obs):
            return torch.tensor([[[0, 5, 0, 0, 1, 1, 0, 0, 0, 9.0], [0, 0, 0, 0, 1, 1, 3, 0, 0, 0]]])

    valid = torch.ones(1, 10, dtype=torch.bool)
    valid[0, 9] = False  # padding: its 9 counts for nothing
    scores = Chunked(Given(), size=4)(observation(torch.zeros(1, 2, 10, 2), valid=valid))
    assert scores[0, 0].tolist() == scores[0, 1].tolist() == [5, 5, 5, 5, 7, 7, 7, 7, 0, 0]
    assert sorted(scores[0, 0].topk(4).indices.tolist()) == [4, 5, 6, 7]


def test_value_weighted_scales_by_value_l1_norm():
    keys = torch.zeros(1, 1, 3, 2)
    values = torch.tensor([[[[1.0, 1.0], [3.0, 0.0], [0.5, 0.0]]]])
    scores = ValueWeighted(Recency())(observation(keys, values=values))
    assert scores[0, 0].tolist() == [0.0, 3.0, 1.0]


def test_recency_and_random_are_deterministic():
    obs = observation(torch.zeros(1, 2, 5, 2))
    assert Recency()(obs)[0, 1].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(RandomScores(3)(obs), RandomScores(3)(obs))
    assert not torch.equal(RandomScores(3)(obs), RandomScores(4)(obs))


@pytest.mark.parametrize("bad", [dict(window=0), dict(reduce="median"), dict(heads="all")])
def test_attention_bad_arguments(bad):
    with pytest.raises(TokenomyError):
        Attention(**bad)


def test_pooled_bad_arguments():
    with pytest.raises(TokenomyError, match="kind"):
        Pooled(KeyNorm(), kind="median")
    with pytest.raises(TokenomyError, match="size"):
        Chunked(KeyNorm(), size=0)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("handed_over", [False, True])
def test_reconstruction_is_the_replays_largest_attention_per_kv_group(padded, handed_over, monkeypatch):
    """KVzip's score = the most attention any replayed query (of the KV head's group) pays an entry, under the
    replay's softmax over the context and the replay so far; replayed padding neither attends nor is seen.
    The same whether the replay's attention handed its log-normalisers over or the scorer computes them,
    and across blocks of replayed queries."""
    monkeypatch.setattr(reconstruction, "_QUERY_BLOCK", 7)
    torch.manual_seed(0)
    keys, replay_keys = torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8)
    replay_queries = torch.randn(2, 4, 30, 8)
    valid = (torch.arange(30) >= torch.tensor([[0], [7]])) if padded else None
    both = None if valid is None else torch.cat([valid, valid], 1)
    obs = observation(keys, valid=valid)
    logits = naive_logits(torch.cat([keys, replay_keys], 2), replay_queries, both, first=30)
    normalizers = logits.logsumexp(dim=-1) if handed_over else None
    obs.replay = [Replay(replay_queries, replay_keys, valid=valid, log_normalizers=normalizers)]
    probs = logits.softmax(dim=-1)[..., :30]
    if valid is not None:
        probs = probs * valid[:, None, :, None]
    expected = probs.amax(dim=2).view(2, 2, 2, 30).amax(dim=2)
    assert torch.allclose(Reconstruction()(obs), expected, atol=1e-6)


def test_reconstruction_without_a_replay_is_a_clear_error():
    with pytest.raises(TokenomyError, match="replayed after the prefill"):
        Reconstruction()(observation(torch.randn(1, 1, 5, 4)))
