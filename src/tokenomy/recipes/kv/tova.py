from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "tova",
    site=SITE,
    paper="Transformers are Multi-State RNNs (TOVA; Oren et al., 2024, arXiv:2401.06104)",
    summary="attention of the last prompt token, averaged over all heads of the layer",
    query_aware=True,
)
def tova(keep: float = 0.5) -> KVCompression:
    return KVCompression(score=Attention(window=1, heads="layer"), budget=Keep(keep))
