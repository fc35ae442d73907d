from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.norms import KeyNorm
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "knorm",
    site=SITE,
    paper="A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression (Devoto et al., 2024, arXiv:2406.11430)",
    summary="keep the keys with the smallest L2 norm; no queries needed",
)
def knorm(keep: float = 0.5) -> KVCompression:
    return KVCompression(score=KeyNorm(), budget=Keep(keep))
