from tokenomy.registry import register
from tokenomy.sites.vision.vit_merge import SITE, TokenMerging


@register(
    "tome",
    site=SITE,
    paper="Token Merging: Your ViT But Faster (Bolya et al., ICLR 2023, arXiv:2210.09461)",
    summary="bipartite soft matching merges similar patches between ViT layers, with proportional attention",
)
def tome(keep: float = 0.11) -> TokenMerging:
    return TokenMerging(keep)
