"""Model loading and per-family adapters."""

from tokenomy.models.loader import PACKAGED, load

__all__ = ["PACKAGED", "load"]
