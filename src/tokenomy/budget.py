"""Budgets: how many tokens each layer, head or image keeps.

A budget turns "keep this fraction" into exact integer counts. Counts are always computed from the number
of real (non-padding) tokens, and ``kept_count`` is the one rounding rule used everywhere:
``n_kept = floor(keep * n + 1/2)``, at least 1 when there is anything to keep.

Every budget answers ``count(scores)``: how many of the tokens scored ``scores`` ``(n,)`` survive. `Keep`
ignores the scores; the adaptive budgets read them — `MassCoverage` keeps the fewest tokens that carry a
share of the score mass (ATP-LLaVA's instance-adaptive pruning), `RelevanceThreshold` keeps all or none
(ToDRE's second stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_fraction, check_int


def kept_count(keep: float, n: Tensor | int) -> Tensor:
    """Number of tokens kept out of ``n`` at fraction ``keep`` (elementwise for tensors)."""
    n_t = torch.as_tensor(n)
    kept = torch.floor(keep * n_t.double() + 0.5).long()
    return torch.minimum(kept.clamp_min(1), n_t).clamp_min(0)


@dataclass
class Keep:
    """The same fraction of tokens in every layer and every head."""

    keep: float = 0.5

    def __post_init__(self):
        self.keep = check_fraction("keep", self.keep)

    def layer_counts(self, n_valid: Tensor, layer_idx: int, num_layers: int) -> Tensor:
        """Tokens kept per batch row in layer ``layer_idx`` (shape ``(b,)``)."""
        return kept_count(self.keep, n_valid)

    def count(self, scores: Tensor) -> int:
        """Tokens kept of the ``len(scores)`` scored ones."""
        return int(kept_count(self.keep, scores.numel()))


@dataclass
class MassCoverage:
    """The fewest tokens whose scores cover a share ``tau`` of the total score mass (at least one): an image
    the text attends to in a few places keeps few tokens, one it looks at all over keeps many.

    The training-free form of ATP-LLaVA's instance- and layer-adaptive pruning threshold (Ye et al., CVPR
    2025, arXiv:2412.00447). Scores are clamped at 0; when all are 0 every token is kept."""

    tau: float = 0.9

    def __post_init__(self):
        self.tau = check_fraction("tau", self.tau)

    def count(self, scores: Tensor) -> int:
        mass = scores.double().clamp_min(0).sort(descending=True).values
        total = float(mass.sum())
        if scores.numel() == 0:
            return 0
        if total <= 0.0:
            return scores.numel()
        covered = mass.cumsum(0) >= self.tau * total * (1 - 1e-6)  # float32 scores summed in float64
        return int(covered.nonzero()[0]) + 1


@dataclass
class RelevanceThreshold:
    """All tokens while their summed score reaches ``threshold``, none once it falls below: ToDRE's second
    stage drops every visual token from the layers where the text no longer attends to them
    ("information migration"; arXiv:2505.18757)."""

    threshold: float = 0.05

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or self.threshold < 0:
            raise TokenomyError(f"threshold must be a number >= 0, got {self.threshold!r}")

    def count(self, scores: Tensor) -> int:
        return scores.numel() if float(scores.double().sum()) >= self.threshold else 0


@dataclass
class Pyramid(Keep):
    """PyramidKV's layer schedule: many tokens in low layers, few in high layers, same total.

    From "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
    (Cai et al., 2024, arXiv:2406.02069). Layer budgets fall linearly from ``2 m - m / beta`` to
    ``m / beta`` where ``m`` is the uniform budget; rounding leftovers go to the lowest layers so the
    total over layers equals ``num_layers * kept_count(keep, n)`` exactly, and no layer exceeds ``n``.
    """

    beta: int = 20

    def __post_init__(self):
        super().__post_init__()
        check_int("beta", self.beta, minimum=1)

    def layer_counts(self, n_valid: Tensor, layer_idx: int, num_layers: int) -> Tensor:
        return self.schedule(n_valid, num_layers)[:, layer_idx]

    def schedule(self, n_valid: Tensor, num_layers: int) -> Tensor:
        """All layer budgets, shape ``(b, num_layers)``."""
        uniform = kept_count(self.keep, n_valid)  # (b,)
        total = uniform * num_layers
        if num_layers == 1:
            return total.unsqueeze(1)
        m = uniform.double().unsqueeze(1)
        lo, hi = m / self.beta, 2 * m - m / self.beta
        steps = torch.linspace(0, 1, num_layers, dtype=torch.float64)
        ideal = hi - (hi - lo) * steps  # (b, L), mean == m
        cap = n_valid.long().unsqueeze(1).expand(-1, num_layers)
        counts = torch.minimum(torch.floor(ideal).long(), cap)
        # Hand out what rounding and capping left over, lowest layers first, never above the cap.
        for row in range(counts.shape[0]):
            missing = int(total[row] - counts[row].sum())
            layer = 0
            while missing > 0:
                if counts[row, layer] < cap[row, layer]:
                    counts[row, layer] += 1
                    missing -= 1
                layer = (layer + 1) % num_layers
        return counts


@dataclass
class HeadAdaptive:
    """AdaKV's head-wise allocation: a layer's budget goes to the heads whose scores need it most.

    From "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
    Inference" (Feng et al., 2024, arXiv:2407.11550). All heads of a layer compete in one top-k over
    their (comparable) scores; each head keeps at least ``floor`` of the uniform per-head budget.
    ``across_layers``: the heads of every layer compete in one top-k (KVzip's allocation), so layers
    whose scores need more entries take them from others; the total over layers stays exact.
    """

    floor: float = 0.2
    across_layers: bool = False

    def __post_init__(self):
        if not 0.0 <= float(self.floor) <= 1.0:
            raise TokenomyError(f"floor must be in [0, 1], got {self.floor!r}")
        if not isinstance(self.across_layers, bool):
            raise TokenomyError(f"across_layers must be True or False, got {self.across_layers!r}")

    def head_counts(self, priority: Tensor, per_head: Tensor) -> Tensor:
        """Per-head counts ``(b, h)`` summing to ``h * per_head`` for priorities ``(b, h, n)``.

        ``priority`` must be comparable across heads and 0 at padding (see `select.prioritize`).
        """
        b, h, n = priority.shape
        counts = torch.zeros(b, h, dtype=torch.long, device=priority.device)
        for row in range(b):
            k = int(per_head[row])
            safe = int(k * self.floor)
            p = priority[row].clone()
            if safe > 0:
                top = p.topk(safe, dim=-1).indices
                p.scatter_(-1, top, torch.inf)
            chosen = p.flatten().topk(h * k).indices // n
            counts[row] = torch.bincount(chosen, minlength=h)
        return counts


def split_budget(total: int, weights: Tensor, capacity: Tensor) -> Tensor:
    """Split ``total`` items among groups in proportion to ``weights``, none above its ``capacity``.

    Hamilton's largest-remainder apportionment with caps: groups whose proportional share reaches their
    capacity get exactly that, and the rest is shared again among the others in proportion to their
    weights, until no share exceeds a capacity; then every group gets the floor of its share and the
    leftover items go to the largest fractional remainders (ties: lower index). ``weights`` ``(c,)`` are
    >= 0 (where the groups still open all weigh 0, they count as equal), ``capacity`` ``(c,)`` integers
    >= 0. Returns counts ``(c,)`` summing to ``total`` exactly; equal weights give an even split with the
    remainder on the first groups.
    """
    if weights.ndim != 1 or tuple(capacity.shape) != tuple(weights.shape):
        raise TokenomyError(f"weights and capacity must both have shape (c,), got {tuple(weights.shape)} and "
                            f"{tuple(capacity.shape)}")
    if not bool((torch.isfinite(weights) & (weights >= 0)).all()):
        raise TokenomyError(f"weights must be finite and >= 0, got {weights.tolist()}")
    if capacity.is_floating_point() or capacity.is_complex() or bool((capacity < 0).any()):
        raise TokenomyError(f"capacity must be integers >= 0, got {capacity.tolist()}")
    check_int("total", total)
    cap = capacity.long()
    if total > int(cap.sum()):
        raise TokenomyError(f"total must be in [0, {int(cap.sum())}] (the summed capacity), got {total}")
    w = weights.double()
    quota = cap.double()
    open_ = cap > 0
    while bool(open_.any()):
        share = torch.where(open_, w, 0.0)
        if float(share.sum()) == 0.0:
            share = open_.double()
        rest = total - int(cap[~open_].sum())
        quota = torch.where(open_, rest * share / share.sum(), cap.double())
        full = open_ & (quota >= cap)
        if not bool(full.any()):
            break
        open_ &= ~full
    counts = torch.minimum(quota.floor().long(), cap)  # groups found full get exactly their capacity
    remainder = torch.where(open_, quota - counts, -1.0)
    leftover = total - int(counts.sum())
    counts[remainder.argsort(descending=True, stable=True)[:leftover]] += 1
    return counts
