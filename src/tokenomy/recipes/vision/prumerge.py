from tokenomy.registry import register
from tokenomy.score.vision import ClsAttention
from tokenomy.sites.vision.prellm import SITE, MergePruned, PreLLM


@register(
    "prumerge",
    site=SITE,
    paper="LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models (Shang et al., 2024, "
    "arXiv:2403.15388)",
    summary="keep the tokens [CLS] attends to most, merge every pruned token into its nearest kept one",
)
def prumerge(keep: float = 0.11) -> PreLLM:
    return PreLLM(keep, MergePruned(ClsAttention((-1,))))
