from tokenomy._validation import check_fraction
from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.in_llm import RaterAttention
from tokenomy.sites.vision.in_llm import SITE, AtFractions, InLLM, Recycled

# LLaVA-1.5-7B's pruning layers 2, 6 and 15 of 32, as fractions of the depth.
LAYERS = (2 / 32, 6 / 32, 15 / 32)


@register(
    "sparsevlm",
    site=SITE,
    paper="SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model Inference (Zhang et al., "
    "ICML 2025, arXiv:2410.04417)",
    summary="the question's tokens most drawn to the image rate visual tokens at three layers; part of each "
    "budget recycles pruned ones as merged tokens",
)
def sparsevlm(keep: float = 0.33, recycle: float = 0.1) -> InLLM:
    """After the three pruning layers ``keep`` of the visual tokens remain (each keeps ``keep ** (1/3)``)."""
    keep = check_fraction("keep", keep)
    return InLLM(AtFractions(LAYERS), RaterAttention(), Keep(keep ** (1 / 3)), Recycled(recycle))
