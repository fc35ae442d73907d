from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.in_llm import LastQueryAttention
from tokenomy.sites.vision.in_llm import SITE, EvenStages, InLLM


@register(
    "pyramiddrop",
    site=SITE,
    paper="PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy Reduction "
    "(Xing et al., CVPR 2025, arXiv:2410.17247)",
    summary="equal stages; at the end of each, keep the `keep` share of the visual tokens the last instruction "
    "token attends to most",
)
def pyramiddrop(keep: float = 0.5, stages: int = 4) -> InLLM:
    """The paper's setting is 4 stages with lambda = 0.5 (keep=0.5)."""
    return InLLM(EvenStages(stages), LastQueryAttention(), Keep(keep))
