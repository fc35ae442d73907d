from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.score.pooling import Pooled
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "snapkv",
    site=SITE,
    paper="SnapKV: LLM Knows What You are Looking for Before Generation (Li et al., 2024, arXiv:2404.14469)",
    summary="attention from the last `window` prompt tokens, max-pooled over neighbours; window kept",
    query_aware=True,
)
def snapkv(keep: float = 0.5, window: int = 32, kernel: int = 7) -> KVCompression:
    return KVCompression(
        score=Pooled(Attention(window=window), kernel=kernel),
        budget=Keep(keep),
        recent=window,
    )
