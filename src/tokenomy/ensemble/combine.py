"""How next-symbol distributions of several models become one: strategies, and CoRE around any of them.

All work on ``P`` [models, symbols] (rows sum to 1, over a support every model shares: bytes, or the
union vocabulary) and per-model weights; they return one distribution over the same symbols.

CoRE (Zeng et al. 2025, "Harnessing Consistency for Robust Test-Time LLM Ensemble") wraps a strategy:
- token level: with the plain average ``r`` as reference, each model's probabilities pass a Gaussian
  low-pass filter of their disagreement, ``s_m(v) = exp(-(p_m(v) - r(v))^2 / (2 sigma^2))``, and the
  strategy sees ``s_m * p_m`` — symbols a model alone is sure of (often a tokenization artefact) count less.
- model level: each model's weight is multiplied by ``c_m * exp(-H(p_m))``, its probability-weighted
  consistency ``c_m = sum_v p_m(v) s_m(v)`` (agreement with the others) times its confidence (``H``:
  entropy in nats), then renormalised.
The abstract fixes the shape (low-pass filter of token disagreement; self-confidence and low divergence at
model level) but not the formulas. The paper's reported model score divides a sum of ``s_m`` over the
whole vocabulary by the entropy; we weight the sum by ``p_m`` instead, because an unweighted sum is
nearly the vocabulary size for every model (257 bytes vs 280k union strings) and the division explodes
as the entropy nears zero. ``sigma`` (default 0.2) was fixed before any measurement, not tuned.
"""

from __future__ import annotations

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
    """CoRE's token- and model-level consistency around a strategy (formulas in the module docstring)."""

    sigma: float = 0.2

    def __post_init__(self):
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0):
            raise TokenomyError(f"core sigma must be a positive number, got {self.sigma!r}")

    def reweigh(self, probs: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reference = probs.mean(dim=0, keepdim=True)
        consistency = torch.exp(-((probs - reference) ** 2) / (2 * self.sigma**2))
        filtered = consistency * probs
        entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum(dim=1)
        agreement = filtered.sum(dim=1)
        model = weights * agreement * torch.exp(-entropy)
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
