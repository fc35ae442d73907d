"""Visual-token methods: before the language model (pre-LLM recipes, ToMe in the ViT), inside it (in-LLM
recipes), and ToDRE's two stages across both."""

from tokenomy.recipes.vision import (  # noqa: F401
    atp,
    avgpool,
    divprune,
    fastv,
    hired,
    prumerge,
    pyramiddrop,
    random,
    sparsevlm,
    tcc,
    todre,
    tome,
    vtc_cls,
)
