from tokenomy.registry import register
from tokenomy.sites.visual import SITE, Diverse, PreLLM, first_isolated


@register(
    "divprune",
    site=SITE,
    paper="DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models (Alvar et al., CVPR 2025, "
    "arXiv:2503.02175)",
    summary="max-min diversity: greedy farthest-point selection from the most isolated patch",
)
def divprune(keep: float = 0.11) -> PreLLM:
    return PreLLM(keep, Diverse(first_isolated))
