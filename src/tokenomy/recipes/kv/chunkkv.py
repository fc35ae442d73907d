from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.attention import Attention
from tokenomy.score.pooling import Chunked
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "chunkkv",
    site=SITE,
    paper="ChunkKV: Semantic-Preserving KV Cache Compression for Efficient Long-Context LLM Inference (Liu et al., "
    "2025, arXiv:2502.00299)",
    summary="SnapKV's window attention summed over chunks of `size` tokens and all heads: whole chunks kept, "
    "the same in every head",
    query_aware=True,
)
def chunkkv(keep: float = 0.5, window: int = 32, size: int = 10) -> KVCompression:
    """The paper's layer-wise index reuse (adjacent layers sharing one selection) is not applied: each layer
    selects its own chunks."""
    return KVCompression(score=Chunked(Attention(window=window), size=size), budget=Keep(keep), recent=window)
