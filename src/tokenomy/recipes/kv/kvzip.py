from tokenomy._validation import check_int
from tokenomy.budget import HeadAdaptive, Keep
from tokenomy.registry import register
from tokenomy.score.base import Scorer
from tokenomy.score.pooling import Pooled
from tokenomy.score.reconstruction import Reconstruction
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "kvzip",
    site=SITE,
    paper="KVzip: Query-Agnostic KV Cache Compression with Context Reconstruction (Kim et al., 2025, "
    "arXiv:2505.23416)",
    summary="keeps what the model attends to while replaying the context after itself (one extra forward); "
    "one budget shared by every layer's heads",
)
def kvzip(keep: float = 0.5, sinks: int = 4, pool: int = 1, chunk: int = 2048) -> KVCompression:
    """``pool`` > 1: each entry scores the most any of its ``pool`` neighbours (centred) scores (`Pooled`), so a
    kept token keeps the tokens next to it, e.g. every digit of a number. The context is replayed ``chunk``
    tokens at a time (the paper's 2048), each chunk right after the whole context, so a context up to the
    model's window less ``chunk`` can be replayed; 0 replays it whole, which needs twice its length in
    positions."""
    check_int("pool", pool, minimum=1)
    score = Reconstruction(chunk) if pool == 1 else Pooled(Reconstruction(chunk), kernel=pool, kind="max")
    return shared_by_all_layers(score, keep, sinks)


def shared_by_all_layers(score: Scorer, keep: float, sinks: int, recent: int | float = 0,
                         floor: float = 0.0) -> KVCompression:
    """The paper's allocation: all heads of all layers compete for the budget; ``floor`` (0 in KVzip) is the share
    of its even budget every head keeps first. The same score with an even budget per head kept 1 of 21
    development needles at keep 0.25 (query-agnostic), against 21 of 21."""
    return KVCompression(score=score, budget=Keep(keep), heads=HeadAdaptive(floor, across_layers=True), sinks=sinks,
                         recent=recent)
