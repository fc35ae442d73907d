from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.sites.kv_cache import SITE, KVCompression
from tokenomy.sites.kv_policies import SelectPerStep


@register(
    "tokenselect",
    site=SITE,
    paper="TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via Dynamic "
    "Token-Level KV Cache Selection (Wu et al., 2024, arXiv:2411.02886)",
    summary="no eviction: each decoding step attends only to the entries its queries soft-vote for; "
    "similar consecutive queries reuse the pick",
    query_aware=True,
)
def tokenselect(keep: float = 0.5, sinks: int = 4, recent: int = 16,
                reuse_similarity: float | None = 0.9) -> SelectPerStep:
    """``keep`` is the fraction of cached entries each decoding step attends to (memory is not saved);
    ``reuse_similarity`` is the Selection Cache's cosine threshold (0.9, as the paper's code; None: select
    at every step)."""
    score = Attention(window=None, reduce="sum", heads="layer")
    return SelectPerStep(KVCompression(score=score, budget=Keep(keep), sinks=sinks, recent=recent),
                         reuse_similarity=reuse_similarity)
