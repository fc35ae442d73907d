"""The vision-encoder site: ToMe merges similar patch tokens between the ViT's layers.

From "Token Merging: Your ViT But Faster" (Bolya et al., ICLR 2023, arXiv:2210.09461). In every layer up
to the one whose output the VLM reads, after attention and before the MLP, bipartite soft matching
(`tokenomy.select.bipartite_soft_matching`, keys averaged over heads as the metric, [CLS] protected;
the layer surgery itself is `models.vision_adapters.merging_forward`)
merges ``r`` tokens into their most similar partners; merged tokens are size-weighted means and attention
adds ``log(size)`` to its logits (proportional attention), so a merged token counts as the patches it
holds. Merges are spread evenly over those layers (earlier layers take more when later ones could not
finish, each at most half of what is left); any still left happen on the final features. Every crop ends with
exactly its budget; crops with different budgets run through the tower in separate batches.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import check_fraction
from tokenomy.budget import kept_count, split_budget
from tokenomy.models.vision_adapters import CropLayout, VisionParts, has_cls, merging_forward
from tokenomy.select import bipartite_soft_matching
from tokenomy.sites.visual import Encoded, VisualSession, VisualStats

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


@contextmanager
def merging_layers(parts: VisionParts, schedule: list[int], protected: int):
    """Patch the first ``len(schedule)`` ViT layers to merge ``schedule[i]`` tokens each; yields the state:
    the token sizes after the last patched layer and the seconds spent matching and merging."""
    state = {"size": None, "seconds": 0.0}

    def merger(r: int):
        def merge(hidden: Tensor, keys: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
            if r == 0:
                return hidden, size
            tic = time.perf_counter()
            hidden, size, _ = bipartite_soft_matching(keys, r, protected)(hidden, size)
            state["seconds"] += time.perf_counter() - tic
            return hidden, size

        return merge

    layers = parts.layers[: len(schedule)]
    for layer, r in zip(layers, schedule):
        layer.forward = merging_forward(layer, state, merger(r))
    try:
        yield state
    finally:
        for layer in layers:
            del layer.forward


@dataclass
class TokenMerging:
    """ToMe inside the vision tower: each crop leaves the ViT with exactly its share of ``keep``."""

    keep: float

    def __post_init__(self):
        self.keep = check_fraction("keep", self.keep)

    def apply(self, vlm) -> VisualSession:
        return VisualSession(vlm, self.encode)

    def encode(self, pixel_values: Tensor, parts: VisionParts, layout: CropLayout, stats: VisualStats) -> Encoded:
        c, n = layout.num_crops, layout.tokens_per_crop
        counts = split_budget(int(kept_count(self.keep, c * n)), torch.ones(c), torch.full((c,), n))
        per_crop = counts.repeat(pixel_values.shape[0] // c)
        protected = 1 if has_cls(parts) else 0
        depth = parts.feature_layer % (len(parts.layers) + 1)  # layers whose output the VLM reads
        features: list[Tensor | None] = [None] * pixel_values.shape[0]
        for target in per_crop.unique().tolist():
            rows = (per_crop == target).nonzero().flatten()
            schedule = merge_schedule(n, target, depth)
            with merging_layers(parts, schedule[:-1], protected) as state:
                out = parts.tower(pixel_values[rows].to(parts.tower.dtype), output_hidden_states=True)
                hidden, size = out.hidden_states[parts.feature_layer], state["size"]
            tic = time.perf_counter()
            if size is None:
                size = hidden.new_ones(*hidden.shape[:2], 1)
            while hidden.shape[1] - protected > target:  # merges the layers could not take
                r = min(hidden.shape[1] - protected - target, (hidden.shape[1] - protected) // 2)
                hidden, size, _ = bipartite_soft_matching(hidden, r, protected)(hidden, size)
            stats.selection_seconds += state["seconds"] + time.perf_counter() - tic
            tokens = hidden[:, protected:] if parts.drops_cls else hidden
            for row, crop_tokens in zip(rows.tolist(), tokens):
                features[row] = crop_tokens
        encoded = []
        for start in range(0, len(features), c):
            kept = torch.cat(features[start:start + c])
            stats.tokens_seen += c * n
            stats.tokens_kept += kept.shape[0]
            stats.crop_counts.append(counts.tolist())
            encoded.append((parts.projector(kept.unsqueeze(0))[0], counts))
        return encoded
