from tokenomy.registry import register
from tokenomy.score.prompt import Perplexity, SelfInformation
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "llmlingua",
    site=SITE,
    paper="LLMLingua: Compressing Prompts for Accelerated Inference of LLMs (Jiang et al., 2023, arXiv:2310.05736)",
    summary="budget controller keeps the least predictable documents, then iterative token pruning per segment, "
            "each conditioned on what was kept",
)
def llmlingua(rate: float = 0.33, segment: int = 100) -> PromptCompression:
    return PromptCompression(score=SelfInformation(), rate=rate, coarse=Perplexity(), segment=segment)
