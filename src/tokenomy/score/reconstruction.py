"""KVzip's score: how much the model needs an entry to reproduce its context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.score.base import LayerObservation, causal_attention_blocks


@dataclass
class Reconstruction:
    """The most attention an entry receives from any query of a replay of the context.

    From "KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction" (Kim et al., 2025,
    arXiv:2505.23416): after the prefill the site feeds the context again right after itself (teacher
    forced, so the model copies it); an entry the copying queries never look at is one no later question is
    likely to need either, whatever that question is. Attention is the replay's own softmax (over the context
    and the replay so far); the score is its maximum over the replayed tokens and over the query heads of each
    KV group, as in the paper.
    """

    replays = True  # tells the KV site to run the replay and attach it to the observation

    def __call__(self, obs: LayerObservation) -> Tensor:
        replay = obs.replay
        if replay is None:
            raise TokenomyError("the reconstruction score needs the context replayed after the prefill; apply the "
                                "method around the prefill itself (`with tokenomy.apply(model, ...): model(...)`)")
        n = obs.keys.shape[2]
        keys = torch.cat([obs.keys, replay.keys], dim=2)
        valid = None
        if obs.valid is not None or replay.valid is not None:
            b, m = replay.keys.shape[0], replay.keys.shape[2]
            ones = torch.ones(b, n + m, dtype=torch.bool, device=keys.device)
            valid = torch.cat([obs.valid if obs.valid is not None else ones[:, :n],
                               replay.valid if replay.valid is not None else ones[:, n:]], dim=1)
        best = None
        for start, stop, probs in causal_attention_blocks(replay.queries, keys, obs.scale, first=n, valid=valid):
            probs = probs[..., :n]
            if replay.valid is not None:  # a replayed pad token is no query: it must not raise any score
                probs = probs * replay.valid[:, None, start:stop, None]
            block = probs.amax(dim=2)
            best = block if best is None else torch.maximum(best, block)
        b, h = best.shape[:2]
        h_kv = obs.keys.shape[1]
        return best.view(b, h_kv, h // h_kv, n).amax(dim=2)
