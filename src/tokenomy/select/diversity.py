"""Diversity-based selection on plain tensors: keep the tokens that cover feature space best.

Visual tokens are highly redundant, so keeping a spread-out subset (greedy k-center under cosine distance)
preserves more of the image than keeping the top-scored ones. No model knowledge lives here; results are
deterministic (ties go to the lowest index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tokenomy._validation import TokenomyError


def cosine_distance(x: Tensor) -> Tensor:
    """Pairwise ``1 - cos`` of the rows of ``x`` ``(n, d)``, shape ``(n, n)``: float32, >= 0, zero diagonal."""
    if x.ndim != 2:
        raise TokenomyError(f"x must have shape (n, d), got {tuple(x.shape)}")
    unit = F.normalize(x.float(), dim=-1)
    dist = (1.0 - unit @ unit.T).clamp_min(0.0)
    return dist.fill_diagonal_(0.0)


def k_center(features: Tensor, k: int, first: int | Sequence[int], distance: Tensor | None = None) -> Tensor:
    """Greedy k-center (Gonzalez farthest-point traversal) under cosine distance, from index ``first``.

    Each step adds the point farthest from its nearest selected point (ties: lowest index). This is stage 1
    of ToDRE ("ToDRE: Visual Token Pruning via Diversity and Task Awareness", arXiv:2505.18757) and the
    max-min selection of DivPrune ("DivPrune: Diversity-based Visual Token Pruning for Large Multimodal
    Models", Alvar et al., CVPR 2025, arXiv:2503.02175); they differ only in ``first``. ``first`` may also be
    a sequence of distinct starting indices (at most ``k``), all selected before the traversal continues.
    ``features`` is ``(n, d)``, ``k`` in ``[1, n]``; ``distance``: their `cosine_distance`, when already computed
    (one ``n x n`` product: faster on a CPU than ``k`` passes over the features). Returns the ``k`` selected
    indices in increasing order.
    """
    dist = cosine_distance(features) if distance is None else distance
    n = dist.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise TokenomyError(f"k must be an integer in [1, {n}], got {k!r}")
    starts = list(first) if isinstance(first, Sequence) else [first]
    valid = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in starts)
    if not valid or not 1 <= len(starts) <= k or len(set(starts)) != len(starts):
        raise TokenomyError(f"first must be an index in [0, {n - 1}] or 1..{k} distinct ones, got {first!r}")
    chosen = torch.empty(k, dtype=torch.long, device=dist.device)
    chosen[: len(starts)] = torch.tensor(starts)
    nearest = dist[starts].amin(0)  # distance of every point to its nearest selected point
    nearest[starts] = -torch.inf  # selected points never win again, even against exact duplicates
    for step in range(len(starts), k):
        pick = nearest.argmax()  # first maximal index on ties
        chosen[step] = pick
        nearest = torch.minimum(nearest, dist[pick])
        nearest[pick] = -torch.inf
    return chosen.sort().values


def most_isolated(features: Tensor, distance: Tensor | None = None) -> int:
    """Index of the point whose nearest neighbour (cosine distance, itself excluded) is farthest.

    DivPrune's starting point for its max-min diversity selection (Alvar et al., CVPR 2025,
    arXiv:2503.02175); ties go to the lowest index, and a single point is index 0. ``distance``: the features'
    `cosine_distance`, when already computed.
    """
    if features.shape[0] == 0:
        raise TokenomyError("features must hold at least one point, got 0")
    dist = (cosine_distance(features) if distance is None else distance).clone().fill_diagonal_(torch.inf)
    return int(dist.amin(dim=1).argmax())
