"""One plain prefill's observations, recorded so that several methods can compress copies of its cache."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from tokenomy.adapters.lm import full_attention_modules
from tokenomy.score.base import LayerObservation
from tokenomy.sites.kv_observation import observe_prefill


class PrefillRecorder:
    """Records each layer's observation during one plain prefill, so several methods can then be
    applied to copies of the same cache without running the prefill again (the benchmark's trick;
    results equal those of the hooks, which a test checks)."""

    def __init__(self, model: nn.Module):
        self.modules = full_attention_modules(model)
        self.rank = {module.layer_idx: i for i, module in enumerate(self.modules)}
        self.observations: dict[int, LayerObservation] = {}
        self._pending: dict[int, tuple] = {}

    @contextmanager
    def record(self) -> Iterator["PrefillRecorder"]:
        handles = []
        for module in self.modules:
            handles.append(module.register_forward_pre_hook(self._before, with_kwargs=True))
            handles.append(module.register_forward_hook(self._after, with_kwargs=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _before(self, module, args, kwargs):
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self._pending[module.layer_idx] = (hidden, kwargs["position_embeddings"], kwargs.get("attention_mask"))

    def _after(self, module, args, kwargs, output):
        pending = self._pending.pop(module.layer_idx)
        layer = kwargs["past_key_values"].layers[module.layer_idx]
        rank = self.rank[module.layer_idx]
        self.observations[module.layer_idx] = observe_prefill(module, layer, *pending, rank, len(self.modules))
