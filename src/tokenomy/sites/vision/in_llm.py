"""Methods that act inside the language model: visual tokens are dropped between decoder layers.

An in-LLM method is the four parts again: the layers it acts before (a schedule), a score read off the
previous layer's attention (`tokenomy.score.in_llm`), a budget per image (`Keep`, or the adaptive
`MassCoverage` and `RelevanceThreshold`), and a choice of which tokens survive (`TopScoring`, ATP's
`SpatiallyAugmented`, SparseVLM's `Recycled`). The site (`VisualSession`) does the surgery: hidden states,
each later layer's mask, positions and rotary tables, and its KV cache hold only the survivors, for the prefill
and every generated token.

``keep`` means what it means everywhere: with a `Keep` budget, ``floor(keep * n + 1/2)`` of an image's ``n``
visual tokens reaching a pruning layer pass it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError, check_int
from tokenomy.budget import Keep, MassCoverage, RelevanceThreshold
from tokenomy.score.in_llm import DecoderScore, DecoderView
from tokenomy.select import k_center, merge_into_nearest, on_lattice, top_k
from tokenomy.sites.vision.session import VisualMethods, VisualSession

SITE = "in-llm"


@dataclass(frozen=True)
class AtLayers:
    """Fixed decoder layers (FastV's K)."""

    layers: tuple[int, ...]

    def __call__(self, depth: int) -> tuple[int, ...]:
        for layer in self.layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer < depth:
                raise TokenomyError(f"an in-LLM layer must be an integer in [1, {depth - 1}] for this {depth}-layer "
                                    f"language model (tokens are scored by the layer before), got {layer!r}")
        return tuple(sorted(set(self.layers)))


@dataclass(frozen=True)
class EvenStages:
    """``stages`` equal stages; tokens are dropped at the end of every stage but the last (PyramidDrop)."""

    stages: int = 4

    def __call__(self, depth: int) -> tuple[int, ...]:
        check_int("stages", self.stages, minimum=2)
        if self.stages > depth:
            raise TokenomyError(f"stages must be at most the language model's {depth} layers, got {self.stages}")
        return tuple(sorted({max(1, round(depth * i / self.stages)) for i in range(1, self.stages)}))


@dataclass(frozen=True)
class AtFractions:
    """Layers at fixed fractions of the depth (SparseVLM's 2, 6 and 15 of LLaVA-7B's 32 layers)."""

    fractions: tuple[float, ...]

    def __call__(self, depth: int) -> tuple[int, ...]:
        return tuple(sorted({min(depth - 1, max(1, round(f * depth))) for f in self.fractions}))


@dataclass(frozen=True)
class FromLayer:
    """Every ``step``-th layer from ``start`` on (ATP's modules between layers; ToDRE's check at every layer)."""

    start: int = 2
    step: int = 1

    def __call__(self, depth: int) -> tuple[int, ...]:
        check_int("step", self.step, minimum=1)
        AtLayers((self.start,))(depth)
        return tuple(range(self.start, depth, self.step))


@dataclass(frozen=True)
class FromFraction:
    """Every layer from a fraction ``start`` of the depth on (ToDRE's relevance check in the late layers)."""

    start: float = 0.8

    def __call__(self, depth: int) -> tuple[int, ...]:
        if isinstance(self.start, bool) or not isinstance(self.start, (int, float)) or not 0 < self.start < 1:
            raise TokenomyError(f"start must be a fraction of the depth in (0, 1), got {self.start!r}")
        return tuple(range(max(1, round(self.start * depth)), depth))


class Choice(Protocol):
    """Which of one image's visual tokens survive: local indices into ``scores`` ``(n,)``, and optionally merged
    hidden states ``(m, d)`` for ``m`` of them (their local indices), or None."""

    def __call__(self, scores: Tensor, k: int, view: DecoderView, row: int, columns: Tensor
                 ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]: ...


@dataclass
class TopScoring:
    """The ``k`` best-scored tokens."""

    def __call__(self, scores, k, view, row, columns):
        return top_k(scores, k)[0], None


@dataclass
class SpatiallyAugmented:
    """The ``k`` best-scored tokens plus those on a ``stride`` lattice of each crop's grid, so every region keeps
    a token: ATP-LLaVA's spatial augmented pruning (Ye et al., CVPR 2025, arXiv:2412.00447)."""

    stride: int = 4

    def __post_init__(self):
        check_int("stride", self.stride, minimum=1)

    def __call__(self, scores, k, view, row, columns):
        cells = view.grid[row, columns]
        lattice = on_lattice(cells[:, 1], cells[:, 2], self.stride).cpu()
        chosen = torch.zeros(scores.numel(), dtype=torch.bool)
        chosen[top_k(scores, k)[0].cpu()] = True
        return (chosen | lattice).nonzero().flatten(), None


@dataclass
class Recycled:
    """SparseVLM's recycling (Zhang et al., ICML 2025, arXiv:2410.04417): ``share`` of the budget goes to
    merged tokens — the pruned tokens grouped by greedy k-center on their hidden states (from the best-scored
    pruned one), each group averaged into the token at its centre — and the rest to the best-scored tokens."""

    share: float = 0.1

    def __post_init__(self):
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0 <= self.share < 1:
            raise TokenomyError(f"share must be in [0, 1), got {self.share!r}")

    def __call__(self, scores, k, view, row, columns):
        n = scores.numel()
        merged = min(int(self.share * k + 0.5), n - k)
        top = top_k(scores, k - merged)[0].cpu()
        if merged == 0:
            return top, None
        pruned = torch.ones(n, dtype=torch.bool)
        pruned[top] = False
        pruned = pruned.nonzero().flatten()
        hidden = view.hidden[row, columns.to(view.hidden.device)][pruned.to(view.hidden.device)]
        start = int(scores.cpu()[pruned].argmax())
        centres = k_center(hidden, merged, start)
        values = merge_into_nearest(hidden, centres, hidden)
        return torch.cat([top, pruned[centres.cpu()]]).sort().values, (pruned[centres.cpu()], values)


@dataclass
class InLLM:
    """An in-LLM method: before each layer of ``layers``, every image keeps ``budget.count`` of the visual
    tokens it still has, chosen by ``choose`` from ``score`` (higher = keep). ``keep`` is the budget's
    parameter (a fraction for `Keep`, the mass ``tau`` for `MassCoverage`, the threshold for
    `RelevanceThreshold`)."""

    layers: AtLayers | EvenStages | AtFractions | FromLayer | FromFraction
    score: DecoderScore
    budget: Keep | MassCoverage | RelevanceThreshold
    choose: Choice = field(default_factory=TopScoring)

    @property
    def keep(self) -> float:
        """The budget's parameter: the kept fraction (`Keep`), the mass (`MassCoverage`), the threshold."""
        return float(next(getattr(self.budget, name) for name in ("keep", "tau", "threshold")
                          if hasattr(self.budget, name)))

    @property
    def reduces(self) -> bool:
        return not (isinstance(self.budget, Keep) and self.budget.keep >= 1.0) and not (
            isinstance(self.budget, MassCoverage) and self.budget.tau >= 1.0)

    def stage_layers(self, depth: int) -> tuple[int, ...]:
        return self.layers(depth)

    def as_visual(self) -> VisualMethods:
        return VisualMethods(inside=self)

    def apply(self, vlm) -> VisualSession:
        return self.as_visual().apply(vlm)

    def decide(self, view: DecoderView) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor] | None]:
        """Which current tokens survive ``(b, n)`` (text always does), and merged hidden states to write first
        as ``(rows, columns, values)`` or None."""
        keep = ~view.visual
        if not self.reduces:
            return keep | view.visual, None
        scores = self.score(view)
        rows, cols, values = [], [], []
        for row in range(view.visual.shape[0]):
            images = view.image[row][view.visual[row]].unique().tolist()
            for image in images:
                columns = ((view.image[row] == image) & view.visual[row]).nonzero().flatten()
                own = scores[row, columns].float().cpu()
                chosen, merged = self.choose(own, self.budget.count(own), view, row, columns)
                keep[row, columns[chosen.to(columns.device)]] = True
                if merged is not None:
                    at, hidden = merged
                    rows.append(torch.full((at.numel(),), row))
                    cols.append(columns.cpu()[at])
                    values.append(hidden)
        replacements = None if not values else (torch.cat(rows), torch.cat(cols), torch.cat(values))
        return keep, replacements

