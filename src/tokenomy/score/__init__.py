"""Scorers: how worth keeping each token is. Each maps a `LayerObservation` to scores (higher = keep)."""

from tokenomy.score.attention import Attention
from tokenomy.score.base import LayerObservation, Scorer
from tokenomy.score.norms import KeyDiversity, KeyNorm, ValueWeighted
from tokenomy.score.pooling import Chunked, Pooled
from tokenomy.score.position import RandomScores, Recency
from tokenomy.score.reconstruction import Reconstruction
from tokenomy.score.surrogate import Predicted

__all__ = [
    "Attention",
    "Chunked",
    "KeyDiversity",
    "KeyNorm",
    "LayerObservation",
    "Pooled",
    "Predicted",
    "RandomScores",
    "Recency",
    "Reconstruction",
    "Scorer",
    "ValueWeighted",
]
