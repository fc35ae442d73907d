import dataclasses

from tokenomy import registry
from tokenomy._validation import TokenomyError
from tokenomy.budget import HeadAdaptive
from tokenomy.sites.kv_cache import SITE, KVCompression


@registry.register(
    "adakv",
    site=SITE,
    paper="Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM Inference "
    "(Feng et al., 2024, arXiv:2407.11550)",
    summary="wraps any KV scorer: one top-k over all heads shares out each layer's budget (each head "
    "keeps >= `floor` of its even share)",
    query_aware=True,
)
def adakv(keep: float = 0.5, scorer: str = "snapkv", floor: float = 0.2) -> KVCompression:
    """``scorer``: name of the KV method whose scores and protections are reused (default SnapKV): one whose
    heads keep even budgets (`KVCompression.head_adaptable`)."""
    inner = registry.get(scorer, SITE).create(keep=keep)
    if not inner.head_adaptable:
        adaptable = [m.name for m in registry.methods(SITE) if m.name != "adakv" and m.create(keep=keep).head_adaptable]
        raise TokenomyError(f"adakv cannot wrap {scorer!r} (its heads do not keep even budgets, or it acts while "
                            f"decoding); choose a scorer from: {', '.join(adaptable)}")
    return dataclasses.replace(inner, heads=HeadAdaptive(floor))
