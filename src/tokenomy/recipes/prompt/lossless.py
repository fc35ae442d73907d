from tokenomy.registry import register
from tokenomy.sites.prompt import SITE, MetaTokens


@register(
    "lossless",
    site=SITE,
    paper="Lossless Token Sequence Compression via Meta-Tokens (2025)",
    summary="repeated spans become references <@back,length> (LZ77 over token ids); tokenomy.restore_prompt "
            "inverts it exactly",
)
def lossless(min_tokens: int = 8) -> MetaTokens:
    return MetaTokens(min_tokens=min_tokens)
