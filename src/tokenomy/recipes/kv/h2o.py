from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "h2o",
    site=SITE,
    paper="H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs (Zhang et al., 2023, arXiv:2306.14048)",
    summary="heavy hitters by attention accumulated over every prompt query, plus recent tokens",
    query_aware=True,
)
def h2o(keep: float = 0.5, recent: float = 0.5) -> KVCompression:
    """``recent``: share of the budget reserved for the most recent tokens (the paper splits 50/50)."""
    return KVCompression(score=Attention(window=None, reduce="sum"), budget=Keep(keep), recent=float(recent))
