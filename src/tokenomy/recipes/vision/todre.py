from tokenomy.registry import register
from tokenomy.sites.visual import SITE, Diverse, PreLLM, first_attended


@register(
    "todre",
    site=SITE,
    paper="ToDRE: Visual Token Pruning via Diversity and Task Awareness (arXiv:2505.18757), stage 1",
    summary="greedy k-center on patch features of all crops, starting from the patch [CLS] attends to most",
)
def todre(keep: float = 0.11, per_crop: bool = False, merge: bool = False) -> PreLLM:
    """k-center runs over the thumbnail's and every crop's patches together (``per_crop``: an even budget
    per crop, k-center within each)."""
    return PreLLM(keep, Diverse(first_attended, merge=merge), needs_cls=True, joint=not per_crop)
