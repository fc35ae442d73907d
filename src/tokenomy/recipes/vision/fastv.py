from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.in_llm import LastQueryAttention
from tokenomy.sites.vision.in_llm import SITE, AtLayers, InLLM


@register(
    "fastv",
    site=SITE,
    paper="An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large "
    "Vision-Language Models (FastV; Chen et al., ECCV 2024, arXiv:2403.06764)",
    summary="before decoder layer K, keep the visual tokens the last token attended to most in layer K-1",
)
def fastv(keep: float = 0.5, K: int = 2) -> InLLM:
    """The paper's setting is K=2, R=50% (keep=0.5)."""
    return InLLM(AtLayers((K,)), LastQueryAttention(), Keep(keep))
