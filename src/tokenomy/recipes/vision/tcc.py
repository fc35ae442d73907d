from tokenomy.registry import register
from tokenomy.score.vision import cls_similarity, patch_density
from tokenomy.sites.vision.prellm import SITE, PreLLM, TopScored


@register(
    "tcc",
    site=SITE,
    paper="Token-level Correlation-guided Compression for Efficient Multimodal Document Understanding "
    "(Zhang et al., 2024, arXiv:2407.14439)",
    summary="crop budgets by information density (token-correlation repetitiveness); tokens most correlated "
    "with [CLS]",
)
def tcc(keep: float = 0.11) -> PreLLM:
    return PreLLM(keep, TopScored(cls_similarity), crop_weights=patch_density)
