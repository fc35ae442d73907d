from tokenomy.registry import register
from tokenomy.score.prompt import EvaluatorHeads
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "ehpc",
    site=SITE,
    paper="Efficient Prompt Compression with Evaluator Heads for Long-Context Transformer Inference (EHPC, 2025)",
    summary="attention from the question in a few early evaluator heads of the model itself, one short forward "
            "through its first layers",
    query_aware=True,
)
def ehpc(rate: float = 0.33, layers: int = 8, heads: int = 8) -> PromptCompression:
    return PromptCompression(score=EvaluatorHeads(layers=layers, heads=heads), rate=rate)
