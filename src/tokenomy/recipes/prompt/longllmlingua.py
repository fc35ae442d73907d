from tokenomy.registry import register
from tokenomy.score.prompt import QuestionGain, QuestionLikelihood
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "longllmlingua",
    site=SITE,
    paper="LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt Compression "
          "(Jiang et al., 2024, arXiv:2310.06839)",
    summary="the documents that make the question likeliest, kept best first up to the budget; tokens by "
            "contrastive perplexity (what the question makes likelier)",
    query_aware=True,
)
def longllmlingua(rate: float = 0.33, dynamic: float = 0.3, coarse_share: float = 1.0) -> PromptCompression:
    """``coarse_share``: the document stage keeps the best-ranked documents holding ``coarse_share`` times the
    token budget; the token stage trims them to it (1: whole documents, only the last one cut)."""
    return PromptCompression(score=QuestionGain(), rate=rate, coarse=QuestionLikelihood(), reorder=True,
                             dynamic=dynamic, coarse_share=coarse_share)
