from tokenomy.registry import register
from tokenomy.score.vision import ClsAttention, ThumbnailAttention
from tokenomy.sites.vision.prellm import SITE, PreLLM, TopScored


@register(
    "hired",
    site=SITE,
    paper="HiRED: Attention-Guided Token Dropping for Efficient Inference of High-Resolution Vision-Language "
    "Models (Arif et al., AAAI 2025, arXiv:2408.10945)",
    summary="crop budgets from the thumbnail's early-layer [CLS] attention; final-layer [CLS] attention picks",
)
def hired(keep: float = 0.11, budget_layer: int = 1) -> PreLLM:
    return PreLLM(keep, TopScored(ClsAttention((-1,))), crop_weights=ThumbnailAttention(budget_layer))
