from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.position import Recency
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "streamingllm",
    site=SITE,
    paper="Efficient Streaming Language Models with Attention Sinks (Xiao et al., 2023, arXiv:2309.17453)",
    summary="keep the first `sinks` tokens and the most recent ones",
)
def streamingllm(keep: float = 0.5, sinks: int = 4) -> KVCompression:
    return KVCompression(score=Recency(), budget=Keep(keep), sinks=sinks)
