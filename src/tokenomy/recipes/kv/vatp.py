from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.score.norms import ValueWeighted
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "vatp",
    site=SITE,
    paper="Attention Score is not All You Need for Token Importance Indicator in KV Cache Reduction: "
    "Value Also Matters (VATP; Guo et al., 2024, arXiv:2406.12335)",
    summary="H2O's accumulated attention times the L1 norm of each value vector; sinks kept",
    query_aware=True,
)
def vatp(keep: float = 0.5, recent: float = 0.5, sinks: int = 4) -> KVCompression:
    """Sinks are kept outright: their value norms are tiny although the model relies on them."""
    score = ValueWeighted(Attention(window=None, reduce="sum"), p=1.0)
    return KVCompression(score=score, budget=Keep(keep), recent=float(recent), sinks=sinks)
