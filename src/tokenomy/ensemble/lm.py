"""Next-token distributions along branching token sequences, one KV cache per live branch.

Byte-level decoding keeps a few alternative tokenizations alive; each is a `Branch` holding its own
cache. Extending a branch by a token runs one step; forking first copies the cache structure, sharing its
tensors (HF's cache layers never write in place), which is far cheaper than re-running the tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from transformers import DynamicCache

from tokenomy.adapters.caches import copy_cache


class Branch:
    """A token sequence, its KV cache and the next-token distribution after it (float64, sums to 1)."""

    def __init__(self, model, ids: Sequence[int], cache=None):
        self.model, self.ids = model, list(ids)
        self.cache = cache
        self.probs: torch.Tensor | None = None

    @classmethod
    def prefill(cls, model, ids: Sequence[int]) -> "Branch":
        """A branch after ``ids``. The last few prefills are remembered, so decoding the same prompt again
        (another strategy, another alignment) copies the cache instead of recomputing it."""
        if not ids:
            raise ValueError("a next-token distribution needs at least one token of context")
        key = (id(model), tuple(ids))
        if key in _PREFILLS:
            _PREFILLS.move_to_end(key)
            return _PREFILLS[key].extend([], fork=True)
        branch = cls(model, [], DynamicCache(config=model.config))
        branch._run(list(ids))
        _PREFILLS[key] = branch.extend([], fork=True)
        while len(_PREFILLS) > _PREFILL_MEMORY:
            _PREFILLS.popitem(last=False)
        return branch

    def extend(self, tokens: Sequence[int], fork: bool = False) -> "Branch":
        """This branch followed by ``tokens``: a new branch (``fork``, this one stays usable) or this one."""
        if fork:
            target = Branch(self.model, self.ids, copy_cache(self.cache))
            target.probs = self.probs
        else:
            target = self
        target._run(list(tokens))
        return target

    @torch.inference_mode()
    def _run(self, tokens: list[int]) -> None:
        if not tokens:
            return
        inputs = torch.tensor([tokens], device=self.model.device)
        out = self.model(input_ids=inputs, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.ids += tokens
        vocab = self.model.config.vocab_size
        self.probs = torch.softmax(out.logits[0, -1, :vocab].double(), dim=-1).cpu()


_PREFILL_MEMORY = 8
_PREFILLS: OrderedDict[tuple, Branch] = OrderedDict()
