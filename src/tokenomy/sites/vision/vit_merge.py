"""The vision-encoder site: ToMe merges similar patch tokens between the ViT's layers.

From "Token Merging: Your ViT But Faster" (Bolya et al., ICLR 2023, arXiv:2210.09461). In every layer up
to the one whose output the VLM reads, after attention and before the MLP, bipartite soft matching
(`tokenomy.select.bipartite_soft_matching`, keys averaged over heads as the metric, [CLS] protected; the layer
surgery is the family adapter's ``merging_forward``) merges tokens into their most similar partners; merged
tokens are size-weighted means and attention adds ``log(size)`` to its logits (proportional attention), so a
merged token counts as the patches it holds. Merges are spread evenly over those layers (earlier layers take
more when later ones could not finish, each at most half of what is left); any still left happen on the last
layer's output, row by row, so every crop ends with exactly its budget. The last layer then hands on every
patch position its group's token (ToMe's unmerge), so the model's own projector and placeholder merge run
unchanged, and the site keeps one token per group — where the group's first patch sits.

It needs a family where every ViT patch becomes one language-model token (LLaVA-1.5, the reference VLM).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_fraction
from tokenomy.adapters.vlm.base import ImageTokens, VLMAdapter
from tokenomy.budget import kept_count, split_budget
from tokenomy.select import bipartite_soft_matching
from tokenomy.sites.vision.session import Reduction, VisualMethods, VisualSession

SITE = "vision-encoder"


def merge_schedule(tokens: int, target: int, layers: int) -> list[int]:
    """Merges per layer taking ``tokens`` patches to ``target``; what layers cannot take comes last."""
    schedule, left = [], tokens - target
    for layer in range(layers):
        even = -(-left // (layers - layer))  # ceil share of what is left
        feasible = tokens - target * 2 ** (layers - layer - 1)  # later layers at most halve the tokens
        r = min(max(even, feasible), tokens // 2)  # at most half: the size of ToMe's set A
        schedule.append(r)
        tokens, left = tokens - r, left - r
    return schedule + [left]


@dataclass
class TokenMerging:
    """ToMe inside the vision tower: each crop leaves the ViT with exactly its share of ``keep``."""

    keep: float

    def __post_init__(self):
        self.keep = check_fraction("keep", self.keep)

    @property
    def reduces(self) -> bool:
        return self.keep < 1.0

    def check(self, adapter: VLMAdapter) -> None:
        if not adapter.one_token_per_patch:
            raise TokenomyError(f"ToMe merges ViT patches, so it needs a family where every patch becomes one "
                                f"language-model token (LLaVA-1.5, the reference VLM); {type(adapter).__name__} "
                                "pools or regroups them: use a pre-LLM method there")

    def vision_layers(self, depth: int) -> set[int]:
        return set()

    def as_visual(self) -> VisualMethods:
        return VisualMethods(before=self)

    def apply(self, vlm) -> VisualSession:
        return self.as_visual().apply(vlm)

    def reduce(self, image: ImageTokens, index: int, record: dict) -> Reduction:
        return Reduction(record["tome"][index])

    @contextmanager
    def patch_tower(self, adapter: VLMAdapter, record: dict):
        """Patch the tower's layers to merge; record each image's kept patches in ``record["tome"]``."""
        if not self.reduces:
            yield
            return
        layers, forward_factory, depth, crops, protected = adapter.merging_layers()
        state: dict = {"size": None}

        def merger(layer: int):
            def merge(hidden: Tensor, keys: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
                tic = time.perf_counter()
                if layer == 0:
                    b, n = hidden.shape[:2]
                    counts = self._counts(b, n - protected, crops)
                    state.update(slot=torch.arange(n, device=hidden.device).expand(b, n), counts=counts,
                                 schedule=merge_schedule(n - protected, int(counts.max()), depth))
                    record["selection_seconds"] = 0.0
                r = state["schedule"][layer]
                if r:
                    hidden, size, step = bipartite_soft_matching(keys, r, protected)(hidden, size)
                    state["slot"] = step.gather(1, state["slot"])
                if layer == depth - 1:
                    state["finish"] = lambda out: self._finish(out, state, protected, crops, record)
                record["selection_seconds"] += time.perf_counter() - tic
                return hidden, size
            return merge

        for index, layer in enumerate(layers[:depth]):
            layer.forward = forward_factory(layer, state, merger(index))
        try:
            yield
        finally:
            for layer in layers[:depth]:
                del layer.forward

    def _counts(self, rows: int, n: int, crops: int) -> Tensor:
        """Tokens each row (a crop) keeps: its image's budget split evenly among its crops."""
        per_image = split_budget(int(kept_count(self.keep, crops * n)), torch.ones(crops), torch.full((crops,), n))
        return per_image.repeat(rows // crops)

    @staticmethod
    def _finish(out: Tensor, state: dict, protected: int, crops: int, record: dict) -> Tensor:
        """Merge each row down to its own count on the layer's output, then unmerge: every patch position gets
        its group's token; record the first patch of every group (the kept ones, per image)."""
        tic = time.perf_counter()
        size, slots, counts = state.pop("size"), state.pop("slot"), state.pop("counts")
        state["size"] = None
        full = torch.empty(slots.shape[0], slots.shape[1], out.shape[-1], dtype=out.dtype, device=out.device)
        firsts: list[Tensor | None] = [None] * out.shape[0]
        for target in counts.unique().tolist():
            rows = (counts == target).nonzero().flatten().to(out.device)
            h, s, slot = out[rows], size[rows], slots[rows]
            while h.shape[1] - protected > target:
                r = min(h.shape[1] - protected - target, (h.shape[1] - protected) // 2)
                h, s, step = bipartite_soft_matching(h, r, protected)(h, s)
                slot = step.gather(1, slot)
            full[rows] = h.gather(1, slot.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            patches = slot[:, protected:] - protected  # each patch's group, among the unprotected ones
            index = torch.arange(patches.shape[1], device=out.device).expand_as(patches)
            first = torch.full((rows.numel(), target), patches.shape[1], device=out.device)
            first = first.scatter_reduce(1, patches, index, "amin")
            for i, row in enumerate(rows.tolist()):
                firsts[row] = first[i].sort().values.cpu()
        n = slots.shape[1] - protected
        record["tome"] = [torch.cat([firsts[row] + (row - start) * n for row in range(start, start + crops)])
                          for start in range(0, len(firsts), crops)]
        record["selection_seconds"] += time.perf_counter() - tic
        return full
