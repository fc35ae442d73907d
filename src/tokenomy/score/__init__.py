"""Scorers: how worth keeping each token is. Each maps a `LayerObservation` to scores (higher = keep)."""

from tokenomy.score.attention import Attention
from tokenomy.score.base import LayerObservation, Scorer
from tokenomy.score.norms import KeyDiversity, KeyNorm, ValueWeighted
from tokenomy.score.pooling import Pooled
from tokenomy.score.position import RandomScores, Recency
from tokenomy.score.reconstruction import Reconstruction

__all__ = [
    "Attention",
    "KeyDiversity",
    "KeyNorm",
    "LayerObservation",
    "Pooled",
    "RandomScores",
    "Recency",
    "Reconstruction",
    "Scorer",
    "ValueWeighted",
]
