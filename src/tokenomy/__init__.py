"""tokenomy: make transformer models spend fewer tokens, without retraining.

    import tokenomy
    model, tok = tokenomy.load("smollm2-135m")
    with tokenomy.apply(model, "snapkv", keep=0.5):
        out = model.generate(**inputs, max_new_tokens=32)
    tokenomy.methods()
"""

from __future__ import annotations

from tokenomy._validation import TokenomyError
from tokenomy.models.loader import load
from tokenomy.registry import MethodInfo, get, methods

__version__ = "0.1.0"


def apply(model, method: str, **options):
    """Apply the registered ``method`` to ``model`` inside a ``with`` block; options go to the method
    (e.g. ``keep=0.5``). Returns the session, whose ``stats`` report what was kept."""
    return get(method).create(**options).apply(model)


__all__ = ["MethodInfo", "TokenomyError", "apply", "get", "load", "methods", "__version__"]
