from tokenomy.recipes.kv.kvzip import shared_by_all_layers
from tokenomy.registry import register
from tokenomy.score.surrogate import Predicted
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "kvzap",
    site=SITE,
    paper="KVzap: Fast, Adaptive, and Faithful KV Cache Pruning (Jégou & Jeblick, 2026, arXiv:2601.07891)",
    summary="KVzip's scores predicted from each entry by a small per-layer MLP trained on KVzip's (no replay); "
    "one budget for all layers",
    trained_for="smollm2-135m",
)
def kvzap(keep: float = 0.5, sinks: int = 4, surrogate: str = "") -> KVCompression:
    """``surrogate``: a file `tokenomy train-kv kvzap` wrote for another model (default: the shipped SmolLM2-135M
    one). The paper prunes by a score threshold; here, as for every KV method, ``keep`` fixes the budget."""
    from tokenomy.models.kv_surrogate import load_surrogate

    return shared_by_all_layers(Predicted(load_surrogate(surrogate or None)), keep, sinks)
