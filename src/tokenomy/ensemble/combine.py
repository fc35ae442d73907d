"""How next-symbol distributions of several models become one: strategies, and CoRE around any of them.

All work on ``P`` [models, symbols] (rows sum to 1, over a support every model shares: bytes, or the
union vocabulary) and per-model weights; they return one distribution over the same symbols.

CoRE (Zeng et al. 2025, "Harnessing Consistency for Robust Test-Time LLM Ensemble", arXiv:2510.13855)
wraps a strategy. The first model is the *main* one, the anchor the others assist, as in the authors'
code (github.com/zhichenz98/CoRE-EACL26, ``compute_consist_score``), whose generation-task variant we follow:
- token level: with the plain average ``r`` as reference and ``d_m(v) = |p_m(v) - r(v)|``, a low-pass
  filter ``s_m(v) = (exp(-beta d_m(v)) - exp(-beta)) / (1 - exp(-beta))`` (beta = 2) over the symbols the
  model or the main model can emit, rescaled to mean 1 there; an assisting model's probabilities enter
  the strategy as ``s_m * p_m`` (a symbol it alone is sure of, often a tokenization artefact, counts
  less); the main model's enter unfiltered.
- model level: each weight is multiplied by ``S_m / H(p_m)`` (``S_m``: the filter summed before rescaling,
  i.e. agreement; ``H``: entropy in nats, i.e. confidence); then the main model's weight is raised to at
  least the sum of the others' and all are renormalised, so the anchor always holds half or more.
Left out of the authors' pipeline, as parts of their token-alignment baseline rather than of CoRE: the
top-10 truncation of every distribution (ours are exact) and the rule that takes the main model's token
when the ensemble's choice is a prefix of it or it of the choice (a rule of their token alignment: both
of ours leave the choice to the strategy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tokenomy._validation import TokenomyError, check_choice

STRATEGIES = ("average", "weighted", "max-confidence")


@dataclass(frozen=True)
class Strategy:
    """``average`` (equal weights), ``weighted`` (the given weights) or ``max-confidence`` (the
    distribution of the model whose weighted top probability is highest)."""

    name: str = "average"
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        check_choice("strategy", self.name, STRATEGIES)
        if self.name == "weighted" and self.weights is None:
            raise TokenomyError("strategy 'weighted' needs weights, one positive number per model")
        if self.weights is not None and self.name != "weighted":
            raise TokenomyError(f"weights apply to strategy 'weighted' only, not {self.name!r}")
        if self.weights is not None and (not self.weights or any(not w > 0 for w in self.weights)):
            raise TokenomyError(f"weights must be positive numbers, got {self.weights!r}")

    def model_weights(self, models: int) -> torch.Tensor:
        if self.weights is None:
            return torch.full((models,), 1.0 / models, dtype=torch.float64)
        if len(self.weights) != models:
            raise TokenomyError(f"got {len(self.weights)} weights for {models} models")
        w = torch.tensor(self.weights, dtype=torch.float64)
        return w / w.sum()

    def combine(self, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.name == "max-confidence":
            best = int(torch.argmax(weights * probs.max(dim=1).values))
            out = probs[best]
        else:
            out = (weights[:, None] * probs).sum(dim=0)
        return out / out.sum()


@dataclass(frozen=True)
class Core:
    """CoRE's token- and model-level consistency around a strategy, anchored on the first model
    (formulas in the module docstring)."""

    beta: float = 2.0

    def __post_init__(self):
        if isinstance(self.beta, bool) or not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise TokenomyError(f"core beta must be a positive number, got {self.beta!r}")

    def reweigh(self, probs: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        support = (probs + probs[:1]) > 0
        distance = (probs - probs.mean(dim=0, keepdim=True)).abs()
        floor = math.exp(-self.beta)
        consistency = support * (torch.exp(-self.beta * distance) - floor) / (1 - floor)
        agreement = consistency.sum(dim=1)
        filtered = consistency * (support.sum(dim=1) / agreement)[:, None] * probs
        filtered[0] = probs[0]
        entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(dim=1)
        model = weights * agreement / entropy.clamp_min(1e-12)
        model[0] = torch.maximum(model[0], model[1:].sum())
        return filtered, model / model.sum()


@dataclass(frozen=True)
class Combiner:
    """A strategy, optionally wrapped by CoRE; ``__call__`` returns the combined distribution and whether
    CoRE changed the top choice at this step."""

    strategy: Strategy
    core: Core | None = None

    def __call__(self, probs: torch.Tensor) -> tuple[torch.Tensor, bool]:
        weights = self.strategy.model_weights(probs.shape[0])
        plain = self.strategy.combine(probs, weights)
        if self.core is None:
            return plain, False
        filtered, core_weights = self.core.reweigh(probs, weights)
        robust = self.strategy.combine(filtered, core_weights)
        return robust, bool(torch.argmax(robust) != torch.argmax(plain))
