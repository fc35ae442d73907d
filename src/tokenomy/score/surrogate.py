"""KVzap's score: KVzip's, predicted from each cached entry by a small learned model, with no replay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.score.base import LayerObservation


def entry_features(keys: Tensor, values: Tensor) -> Tensor:
    """What a cached entry says about its token, independent of where it sits: ``(b, n, h_kv * 3d/2)``.

    Per KV head, the value vector and the norm of each rotary pair of the key (dimensions ``i`` and ``i + d/2``,
    the pairs HF's rotary embedding turns together), which rotation by the token's position leaves unchanged.
    Both are linear in the layer's normalised hidden state, which KVzap reads."""
    b, h, n, d = keys.shape
    keys = keys.float()
    pairs = torch.sqrt(keys[..., : d // 2] ** 2 + keys[..., d // 2:] ** 2)
    return torch.cat([values.float(), pairs], dim=-1).permute(0, 2, 1, 3).reshape(b, n, -1)


class Surrogate(Protocol):
    """Predicts log KVzip scores ``(len(layers), N, kv_heads)`` from entry features ``(len(layers), N, F)``."""

    num_layers: int
    kv_heads: int
    features: int
    trained_for: str

    def __call__(self, features: Tensor, layers: list[int]) -> Tensor: ...


@dataclass
class Predicted:
    """KVzip's score predicted from the entry itself: `entry_features` through a small per-layer model.

    From "KVzap: Fast, Adaptive, and Faithful KV Cache Pruning" (Jégou & Jeblick, 2026, arXiv:2601.07891):
    KVzip's replay costs a second prefill, but how much the replay attends to an entry is largely written in
    the entry's own hidden state, so a model trained on KVzip's scores over public text predicts them at the
    cost of a matrix product per layer. Scores are log-scale, comparable across layers (KVzip's allocation).
    """

    surrogate: Surrogate

    def __call__(self, obs: LayerObservation) -> Tensor:
        b, h_kv, n, d = obs.keys.shape
        net = self.surrogate
        if (obs.num_layers, h_kv, h_kv * d * 3 // 2) != (net.num_layers, net.kv_heads, net.features):
            raise TokenomyError(
                f"this surrogate was trained for {net.trained_for} ({net.num_layers} layers, {net.kv_heads} KV "
                f"heads, {net.features} features per entry); this model has {obs.num_layers} layers and {h_kv} KV "
                f"heads of {d}: train one for it with `tokenomy train-kv kvzap --model MODEL -o PATH`, then use "
                "kvzap:surrogate=PATH")
        with torch.no_grad():
            features = entry_features(obs.keys, obs.values).reshape(1, b * n, -1)
            scores = net(features, [obs.layer_idx]).view(b, n, h_kv).transpose(1, 2)
        if obs.valid is not None:
            scores = scores.masked_fill(~obs.valid[:, None, :], -torch.inf)
        return scores
