"""KV-cache methods: each is a `KVCompression` recipe (score, budget, protections), wrapped in a policy
(`tokenomy.sites.kv_policies`) when it acts while decoding."""

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
