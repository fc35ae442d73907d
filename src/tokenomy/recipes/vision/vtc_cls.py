from tokenomy._validation import check_choice
from tokenomy.registry import register
from tokenomy.score.vision import ClsAttention
from tokenomy.sites.vision.prellm import SITE, PreLLM, TopScored


@register(
    "vtc-cls",
    site=SITE,
    paper="[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs (VTC-CLS; Wang et al., 2024, "
    "arXiv:2412.05819)",
    summary="tokens [CLS] attends to most; `layers='all'` ensembles the attention of every ViT layer",
)
def vtc_cls(keep: float = 0.11, layers: str = "last") -> PreLLM:
    check_choice("layers", layers, ("last", "all"))
    return PreLLM(keep, TopScored(ClsAttention((-1,) if layers == "last" else None)))
