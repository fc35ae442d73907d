from tokenomy.registry import register
from tokenomy.sites.vision.prellm import SITE, Pooled, PreLLM


@register(
    "avgpool",
    site=SITE,
    paper="Efficient Large Multi-modal Models via Visual Context Compression (LLaVolta; Chen et al., 2024, "
    "arXiv:2406.20092)",
    summary="average pooling of each crop's token grid down to its budget",
)
def avgpool(keep: float = 0.11) -> PreLLM:
    return PreLLM(keep, Pooled())
