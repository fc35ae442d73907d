from tokenomy.registry import register
from tokenomy.sites.vision.prellm import SITE, Diverse, PreLLM, first_isolated


@register(
    "divprune",
    site=SITE,
    paper="DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models (Alvar et al., CVPR 2025, "
    "arXiv:2503.02175)",
    summary="max-min diversity over all crops: farthest-point selection from the most isolated token",
)
def divprune(keep: float = 0.11, per_crop: bool = False, merge: bool = False) -> PreLLM:
    """One selection over every crop's tokens, as the paper selects over all of an image's visual tokens;
    ``per_crop`` splits the budget evenly among crops first."""
    return PreLLM(keep, Diverse(first_isolated, merge=merge), joint=not per_crop)
