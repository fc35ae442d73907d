"""Argument checks shared by every public entry point, so bad input fails the same way everywhere."""

from __future__ import annotations

from typing import Iterable


class TokenomyError(ValueError):
    """A bad argument or input, with a message naming the bad value and what is allowed."""


def check_fraction(name: str, value: object) -> float:
    """Return ``value`` as a float in (0, 1] or raise a TokenomyError saying so."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenomyError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise TokenomyError(f"{name} must be in (0, 1], got {value!r}")
    return value


def check_int(name: str, value: object, minimum: int = 0) -> int:
    """Return ``value`` as an int >= ``minimum`` or raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenomyError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise TokenomyError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is True or False (``name=yes`` in a method spec is a string, not a switch)."""
    if not isinstance(value, bool):
        raise TokenomyError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise naming the valid ones."""
    choices = list(choices)
    if value not in choices:
        raise TokenomyError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")
    return value  # type: ignore[return-value]
