"""KV-cache methods: each is a `KVCompression` recipe (score, budget, protections, phase)."""

from tokenomy.recipes.kv import (  # noqa: F401
    adakv,
    h2o,
    keydiff,
    knorm,
    kvzip,
    pyramidkv,
    random,
    snapkv,
    streamingllm,
    tokenselect,
    tova,
    vatp,
)
