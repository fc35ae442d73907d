from tokenomy.recipes.kv.kvzip import shared_by_all_layers
from tokenomy.registry import register
from tokenomy.score.position import HeadProfile
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "duoattention",
    site=SITE,
    paper="DuoAttention: Efficient Long-Context LLM Inference with Retrieval and Streaming Heads (Xiao et al., "
    "2024, arXiv:2410.10819)",
    summary="retrieval heads (measured once per model) keep their whole cache, the others sinks and a recent "
    "window",
    trained_for="smollm2-135m",
)
def duoattention(keep: float = 0.5, sinks: int = 4, recent: float = 0.5, profile: str = "") -> KVCompression:
    """``recent``: the share of the budget every head spends on its latest tokens (the streaming heads' window;
    the rest goes to whole retrieval heads). ``profile``: a file `tokenomy train-kv duoattention` wrote for another
    model (default: the shipped SmolLM2-135M one)."""
    from tokenomy.models.kv_heads import load_profile

    return shared_by_all_layers(HeadProfile(*load_profile(profile or None)), keep, sinks, recent)
