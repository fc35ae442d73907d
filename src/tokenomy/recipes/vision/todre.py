from tokenomy.registry import register
from tokenomy.sites.visual import SITE, Diverse, PreLLM, first_attended


@register(
    "todre",
    site=SITE,
    paper="ToDRE: Visual Token Pruning via Diversity and Task Awareness (arXiv:2505.18757), stage 1",
    summary="greedy k-center on patch features, starting from the patch [CLS] attends to most",
)
def todre(keep: float = 0.11) -> PreLLM:
    return PreLLM(keep, Diverse(first_attended), needs_cls=True)
