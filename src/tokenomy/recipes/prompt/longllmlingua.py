from tokenomy.registry import register
from tokenomy.score.prompt import QuestionGain, QuestionLikelihood
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "longllmlingua",
    site=SITE,
    paper="LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt Compression "
          "(Jiang et al., 2024, arXiv:2310.06839)",
    summary="documents ranked by how likely they make the question, most relevant first with more budget; "
            "tokens by contrastive perplexity (what the question makes likelier)",
    query_aware=True,
)
def longllmlingua(rate: float = 0.33, dynamic: float = 0.3) -> PromptCompression:
    return PromptCompression(score=QuestionGain(), rate=rate, coarse=QuestionLikelihood(), reorder=True,
                             dynamic=dynamic)
