"""Visual-token methods: pre-LLM recipes (`PreLLM`: crop budget x token choice) and ToMe in the ViT."""

from tokenomy.recipes.vision import (  # noqa: F401
    avgpool,
    divprune,
    hired,
    prumerge,
    random,
    tcc,
    todre,
    tome,
    vtc_cls,
)
