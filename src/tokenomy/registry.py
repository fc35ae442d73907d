"""The method registry: one name per method, shared by the Python API, the CLI and the benchmark."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from tokenomy._validation import TokenomyError, check_choice


@dataclass(frozen=True)
class MethodInfo:
    """What `tokenomy methods` prints about one registered method."""

    name: str
    site: str
    paper: str
    summary: str
    build: Callable[..., Any]
    query_aware: bool = False

    def options(self) -> dict[str, Any]:
        """Keyword options of the method with their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.build).parameters.values()
            if p.default is not inspect.Parameter.empty
        }

    def create(self, **options: Any) -> Any:
        """Build the method, rejecting unknown options with the list of known ones."""
        known = self.options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TokenomyError(
                f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(known) or '(none)'}"
            )
        return self.build(**options)


_REGISTRY: dict[str, MethodInfo] = {}


def register(name: str, *, site: str, paper: str, summary: str, query_aware: bool = False):
    """Decorator registering a method factory under ``name``."""

    def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(name, site, paper, summary, build, query_aware)
        return build

    return decorator


def _load_all() -> None:
    # Importing the method packages runs their @register decorators.
    import tokenomy.recipes  # noqa: F401


def get(name: str) -> MethodInfo:
    """The registered method called ``name``; an unknown name lists the valid ones."""
    _load_all()
    check_choice("method", name, _REGISTRY)
    return _REGISTRY[name]


def methods(site: str | None = None) -> list[MethodInfo]:
    """Every registered method (optionally of one site), sorted by site then name."""
    _load_all()
    found = [m for m in _REGISTRY.values() if site is None or m.site == site]
    if site is not None and not found:
        check_choice("site", site, sorted({m.site for m in _REGISTRY.values()}))
    return sorted(found, key=lambda m: (m.site, m.name))


def method_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:option=value:..."`` -> (name, options); values are Python literals where they
    parse as one (``True``, ``0.5``), else strings (``layers=all``)."""
    name, *pairs = text.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TokenomyError(f"method options are written name:option=value, got {text!r}")
        if key == "keep":
            raise TokenomyError(f"{text!r}: set the kept fractions with --keep, not as a method option")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def create_spec(spec: str, **fixed: Any) -> Any:
    """Build the method a ``"name:option=value"`` spec names, with ``fixed`` options (e.g. ``keep``)."""
    name, options = method_spec(spec)
    return get(name).create(**fixed, **options)
