"""Repeated spans of a token sequence, found LZ77-style: what lossless prompt compression replaces by
references (meta-tokens). Pure: lists of ints in, spans out."""

from __future__ import annotations

from collections.abc import Callable


def repeated_spans(ids: list[int], min_length: int, allowed: Callable[[int, int, int], bool] | None = None,
                   accept: Callable[[int, int, int], bool] | None = None, window: int = 1 << 20,
                   chain: int = 64) -> list[tuple[int, int, int]]:
    """Greedy left-to-right LZ77 parse of ``ids``: ``(start, length, source)`` triples, each saying that
    ``ids[start:start + length] == ids[source:source + length]`` with ``source < start`` (overlap allowed), at
    least ``min_length`` long, not overlapping one another, and accepted by ``allowed(start, length, source)``
    (e.g. the span must end on a character boundary; the longest allowed length wins) and then by ``accept`` (a
    costlier check made once per chosen span; rejected: the parse moves on one token). Sources are looked up
    through the ``min_length``-grams seen, at most ``window`` tokens back and the ``chain`` most recent
    occurrences (zlib's speed/ratio trade-off)."""
    if min_length < 1:
        raise ValueError(f"min_length must be >= 1, got {min_length}")
    seen: dict[tuple[int, ...], list[int]] = {}
    spans = []
    n = len(ids)
    i = 0
    indexed = 0  # grams starting before this position are in `seen`

    def index_until(limit: int) -> None:
        nonlocal indexed
        while indexed < min(limit, n - min_length + 1):
            seen.setdefault(tuple(ids[indexed:indexed + min_length]), []).append(indexed)
            indexed += 1

    while i + min_length <= n:
        index_until(i)
        best = None
        for source in reversed(seen.get(tuple(ids[i:i + min_length]), [])[-chain:]):
            if i - source > window:
                break
            length = min_length
            while i + length < n and ids[source + length] == ids[i + length]:
                length += 1
            while length >= min_length and allowed is not None and not allowed(i, length, source):
                length -= 1
            if length >= min_length and (best is None or length > best[1]):
                best = (i, length, source)
        if best is None or (accept is not None and not accept(*best)):
            i += 1
            continue
        spans.append(best)
        i += best[1]
    return spans
