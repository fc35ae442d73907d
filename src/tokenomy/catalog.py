"""Every registered method: importing this module imports every recipe (their ``@register`` decorators fill
the registry), so the Python API, the CLI and the benchmark look methods up here."""

import tokenomy.recipes  # noqa: F401  (registers every method)
from tokenomy.registry import create_spec, get, methods

__all__ = ["create_spec", "get", "methods"]
