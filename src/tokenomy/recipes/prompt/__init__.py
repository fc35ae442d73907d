"""Prompt methods: each is a `PromptCompression` recipe (token score, optional document stage, budget) or,
for lossless compression, `MetaTokens`."""

from tokenomy.recipes.prompt import ehpc, llmlingua, longllmlingua, lossless, selective_context  # noqa: F401
