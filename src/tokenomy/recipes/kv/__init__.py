"""KV-cache methods: each is a `KVCompression` recipe (score, budget, protections, phase)."""

from tokenomy.recipes.kv import (  # noqa: F401
    adakv,
    chunkkv,
    duoattention,
    h2o,
    keydiff,
    knorm,
    kvzap,
    kvzip,
    pyramidkv,
    random,
    snapkv,
    streamingllm,
    tokenselect,
    tova,
    vatp,
)
