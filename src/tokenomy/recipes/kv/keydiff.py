from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.norms import KeyDiversity
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "keydiff",
    site=SITE,
    paper="KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM Inference in "
    "Resource-Constrained Environments (Park et al., 2025, arXiv:2504.15364)",
    summary="keep the keys least similar to their head's mean key; query-agnostic",
)
def keydiff(keep: float = 0.5, sinks: int = 4, recent: int = 8) -> KVCompression:
    return KVCompression(score=KeyDiversity(), budget=Keep(keep), sinks=sinks, recent=recent)
