from tokenomy.registry import register
from tokenomy.score.prompt import SelfInformation
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "selective-context",
    site=SITE,
    paper="Compressing Context to Enhance Inference Efficiency of LLMs (Li et al., 2023, arXiv:2310.06201)",
    summary="drop the words the compressor LM finds least informative (self-information), in one pass",
)
def selective_context(rate: float = 0.33) -> PromptCompression:
    return PromptCompression(score=SelfInformation(), rate=rate)
