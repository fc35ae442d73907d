"""The method registry: one name per method, shared by the Python API, the CLI and the benchmark.

Pure: recipes register here and lookups read what is registered; `tokenomy.catalog` imports every recipe
first, so lookups through it see them all."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Collection

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
    trained_for: str | None = None  # the model a learned part was trained on (others need their own: see its options)

    def own_options(self) -> dict[str, Any]:
        """Keyword options of the method's own recipe with their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.build).parameters.values()
            if p.default is not inspect.Parameter.empty
        }

    def options(self) -> dict[str, Any]:
        """Every option the method takes: its recipe's, then those its site gives every method."""
        own = self.own_options()
        shared = _SITE_OPTIONS[self.site][0] if self.site in _SITE_OPTIONS else {}
        return own | {k: v for k, v in shared.items() if k not in own}

    def create(self, **options: Any) -> Any:
        """Build the method, rejecting unknown options with the list of known ones."""
        known, own = self.options(), self.own_options()
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TokenomyError(
                f"method {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(known) or '(none)'}"
            )
        for key, value in options.items():  # a flag must be a flag: `merge=2` is a typo, not True
            if isinstance(known[key], bool) and not isinstance(value, bool):
                raise TokenomyError(f"{self.name}: {key} must be True or False, got {value!r}")
        built = self.build(**{k: v for k, v in options.items() if k in own})
        shared = {k: v for k, v in options.items() if k not in own}
        return _SITE_OPTIONS[self.site][1](built, **shared) if shared else built


_REGISTRY: dict[str, MethodInfo] = {}
_SITE_OPTIONS: dict[str, tuple[dict[str, Any], Callable[..., Any]]] = {}


def site_options(site: str, apply: Callable[..., Any], **defaults: Any) -> None:
    """Declare options every method of ``site`` accepts, with their defaults; ``apply(method, **options)``
    returns the built method with them, validated (e.g. the KV site's ``evict_every`` wraps it in a policy)."""
    _SITE_OPTIONS[site] = (defaults, apply)


def register(name: str, *, site: str, paper: str, summary: str, query_aware: bool = False,
             trained_for: str | None = None):
    """Decorator registering a method factory under ``name``."""

    def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise RuntimeError(f"method {name!r} is registered twice")
        _REGISTRY[name] = MethodInfo(name, site, paper, summary, build, query_aware, trained_for)
        return build

    return decorator


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


def get(name: str, sites: str | Collection[str] | None = None) -> MethodInfo:
    """The registered method called ``name``, optionally required to be of one of ``sites``; an unknown name,
    or one of another site, lists the valid ones (those of ``sites``)."""
    sites = [sites] if isinstance(sites, str) else sites
    valid = [m for m in _REGISTRY.values() if sites is None or m.site in sites]
    if sites is not None and name in _REGISTRY and _REGISTRY[name].site not in sites:
        raise TokenomyError(f"{name!r} works at site {_REGISTRY[name].site!r}, not at {' / '.join(map(repr, sites))}; "
                            f"choose one of: {', '.join(m.name for m in valid)}")
    check_choice("method", name, [m.name for m in valid])
    return _REGISTRY[name]


def methods(site: str | None = None) -> list[MethodInfo]:
    """Every registered method (optionally of one site), sorted by site then name."""
    found = [m for m in _REGISTRY.values() if site is None or m.site == site]
    if site is not None and not found:
        check_choice("site", site, sorted({m.site for m in _REGISTRY.values()}))
    return sorted(found, key=lambda m: (m.site, m.name))


def create_spec(spec: str, **fixed: Any) -> Any:
    """Build the method a ``"name:option=value"`` spec names, with ``fixed`` options (e.g. ``keep``)."""
    name, options = method_spec(spec)
    return get(name).create(**fixed, **options)
