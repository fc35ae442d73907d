"""KVzip's score: how much the model needs an entry to reproduce its context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_int
from tokenomy.score.base import LayerObservation, Replay, causal_logit_blocks

_QUERY_BLOCK = 256  # replayed queries per block of logits (bounds its memory)


@dataclass
class Reconstruction:
    """The most attention an entry receives from any query of a replay of the context.

    From "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction" (Kim et al., 2025,
    arXiv:2505.23416): after the prefill the site feeds the context again right after itself (teacher
    forced, so the model copies it); an entry the copying queries never look at is one no later question is
    likely to need either, whatever that question is. Attention is the replay's own softmax (over the context
    and the replay so far); the score is its maximum over the replayed tokens and over the query heads of each
    KV group, as in the paper. Long contexts are replayed ``chunk`` tokens at a time, each chunk right after
    the whole context (the paper's chunked replay: positions end ``chunk`` past the context, not twice as far).
    """

    chunk: int = 2048  # context tokens replayed per forward, as in the paper; 0: the whole context in one

    replays = True  # tells the KV site to run the replay (``chunk`` tokens at a time) and attach it

    def __post_init__(self):
        check_int("chunk", self.chunk, minimum=0)

    def __call__(self, obs: LayerObservation) -> Tensor:
        if not obs.replay:
            raise TokenomyError("the reconstruction score needs the context replayed after the prefill; apply the "
                                "method around the prefill itself (`with tokenomy.apply(model, ...): model(...)`)")
        best = None
        for replay in obs.replay:  # an entry's score: the most any replayed query of any chunk pays it
            logits = _best_logits(obs, replay)
            best = logits if best is None else torch.maximum(best, logits)
        if obs.valid is not None:
            best = best.masked_fill(~obs.valid[:, None, :], -torch.inf)
        return best.exp()


def _best_logits(obs: LayerObservation, replay: Replay) -> Tensor:
    """``(b, h_kv, n)``: per entry, the largest log-attention any of ``replay``'s queries of its KV group pays it."""
    # A query's attention to entry j is exp(logit_j - log normaliser), and exp is monotonic: the most
    # attention an entry gets is exp(max over queries of logit - normaliser). Every replayed query sees the
    # whole context, so these logits need no causal mask, only the normalisers (over context + replay).
    b, h, m, d = replay.queries.shape
    h_kv = obs.keys.shape[1]
    group = h // h_kv
    normalizers = replay.log_normalizers
    if normalizers is None:
        normalizers = _log_normalizers(obs, replay)
    if replay.valid is not None:  # a replayed pad token is no query: it must not raise any score
        normalizers = normalizers.masked_fill(~replay.valid[:, None, :], torch.inf)
    queries = replay.queries.float() * obs.scale
    keys = obs.keys.float().transpose(-1, -2)  # (b, h_kv, d, n)
    best = None
    for start in range(0, m, _QUERY_BLOCK):
        stop = min(start + _QUERY_BLOCK, m)
        # a KV group's query heads are consecutive, so one product per KV head covers the group's queries
        rows = group * (stop - start)
        logits = torch.matmul(queries[:, :, start:stop].reshape(b, h_kv, rows, d), keys)
        logits -= normalizers[:, :, start:stop].reshape(b, h_kv, rows, 1)
        block = logits.amax(dim=2)
        best = block if best is None else torch.maximum(best, block)
    return best


def _log_normalizers(obs: LayerObservation, replay: Replay) -> Tensor:
    """``(b, h, m)`` log of each replayed query's softmax denominator over the context and the replay so far,
    for attention implementations that do not hand it over."""
    n = obs.keys.shape[2]
    keys = torch.cat([obs.keys, replay.keys], dim=2)
    valid = None
    if obs.valid is not None or replay.valid is not None:
        b, m = replay.keys.shape[0], replay.keys.shape[2]
        ones = torch.ones(b, n + m, dtype=torch.bool, device=keys.device)
        valid = torch.cat([obs.valid if obs.valid is not None else ones[:, :n],
                           replay.valid if replay.valid is not None else ones[:, n:]], dim=1)
    blocks = causal_logit_blocks(replay.queries, keys, obs.scale, first=n, valid=valid)
    return torch.cat([logits.logsumexp(dim=-1) for _, _, logits in blocks], dim=2)
