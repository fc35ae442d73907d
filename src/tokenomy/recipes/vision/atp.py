from tokenomy.budget import MassCoverage
from tokenomy.registry import register
from tokenomy.score.in_llm import InstructionAttention
from tokenomy.sites.vision.in_llm import SITE, FromLayer, InLLM, SpatiallyAugmented


@register(
    "atp",
    site=SITE,
    paper="ATP-LLaVA: Adaptive Token Pruning for Large Vision Language Models (Ye et al., CVPR 2025, "
    "arXiv:2412.00447), training-free form",
    summary="every `every` layers from `start`: the fewest visual tokens covering `keep` of the instruction's "
    "attention, plus a uniform lattice; easy images keep fewer",
)
def atp(keep: float = 0.9, start: int = 2, every: int = 4, stride: int = 4) -> InLLM:
    """``keep`` is the mass tau each pruning point must cover; how many tokens that keeps depends on the image
    and the layer (the benchmark reports the average)."""
    return InLLM(FromLayer(start, every), InstructionAttention(), MassCoverage(keep), SpatiallyAugmented(stride))
