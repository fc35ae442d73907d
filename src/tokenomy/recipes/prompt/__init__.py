"""Prompt methods: each is a `PromptCompression` recipe (token score, optional document stage, budget) or,
for lossless compression, `MetaTokens`."""

from tokenomy.recipes.prompt import (  # noqa: F401
    distilled,
    ehpc,
    llmlingua,
    longllmlingua,
    lossless,
    selective_context,
)
