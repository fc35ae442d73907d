"""Methods of different sites in one block: a visual method before the language model, one inside it, and a
KV-cache method, applied together (``tokenomy.apply(vlm, ["divprune", "fastv:K=2", "snapkv"], keep=[...])``)."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from tokenomy._validation import TokenomyError
from tokenomy.sites.kv_cache import KVCompression
from tokenomy.sites.kv_session import KVStats
from tokenomy.sites.vision.session import VisualMethods, VisualStats

WHERE = {"before": "before the language model", "inside": "between the language model's layers"}


@dataclass
class StackStats:
    """End-to-end accounting of a stack: ``visual`` (placeholders seen, tokens reaching the language model,
    visual tokens entering each decoder layer) and ``kv`` (cache entries seen and kept); either None when the
    stack has no method of that kind."""

    visual: VisualStats | None
    kv: KVStats | None


class Stack:
    """A visual session and a KV session entered as one ``with`` block (visual first: the KV method compresses
    what the visual methods left)."""

    def __init__(self, model, visual: VisualMethods | None, kv: KVCompression | None):
        if visual is not None and visual.inside is not None and kv is not None and kv.replays:
            raise TokenomyError("a KV method that replays the context (KVzip) cannot follow an in-LLM method: the "
                                "replay would run layers over tokens the in-LLM method removed")
        self.sessions = [m.apply(model) for m in (visual, kv) if m is not None]
        self._stack = ExitStack()

    @property
    def stats(self) -> StackStats:
        kinds = {type(s.stats).__name__: s.stats for s in self.sessions}
        return StackStats(kinds.get("VisualStats"), kinds.get("KVStats"))

    def __enter__(self) -> "Stack":
        try:
            for session in self.sessions:
                self._stack.enter_context(session)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


def stack(model, methods: dict) -> Stack:
    """Combine built methods, by the spec that named them (at most one per place: before the language model,
    inside it, the KV cache), into a `Stack`."""
    visual, kv, names = VisualMethods(), None, {}
    for spec, method in methods.items():
        if hasattr(method, "as_visual"):
            for slot in ("before", "inside"):
                part = getattr(method.as_visual(), slot)
                if part is None:
                    continue
                if getattr(visual, slot) is not None:
                    raise TokenomyError(f"two methods act {WHERE[slot]}: {names[slot]!r} and {spec!r}; a stack takes "
                                        "one per place (ToDRE's second stage acts there too: `todre:threshold=0` "
                                        "keeps only its first)")
                setattr(visual, slot, part)
                names[slot] = spec
        elif isinstance(method, KVCompression):
            if kv is not None:
                raise TokenomyError(f"a stack takes one KV-cache method; got {names['kv']!r} and {spec!r}")
            kv, names["kv"] = method, spec
        else:
            raise TokenomyError(f"{spec!r} cannot be stacked")
    has_visual = visual.before is not None or visual.inside is not None
    return Stack(model, visual if has_visual else None, kv)
