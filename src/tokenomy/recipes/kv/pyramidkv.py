from tokenomy.budget import Pyramid
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.score.pooling import Pooled
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "pyramidkv",
    site=SITE,
    paper="PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling (Cai et al., 2024, arXiv:2406.02069)",
    summary="SnapKV scores with a pyramid of layer budgets (more below, fewer above; same total)",
    query_aware=True,
)
def pyramidkv(keep: float = 0.5, window: int = 32, kernel: int = 7, beta: int = 20) -> KVCompression:
    return KVCompression(
        score=Pooled(Attention(window=window), kernel=kernel),
        budget=Pyramid(keep, beta=beta),
        recent=window,
    )
