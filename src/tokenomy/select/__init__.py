"""Pure selection algorithms over plain tensors (no model knowledge)."""

from tokenomy.select.topk import prioritize, top_k

__all__ = ["prioritize", "top_k"]
