from tokenomy.recipes.kv.kvzip import shared_by_all_layers
from tokenomy.registry import register
from tokenomy.score.surrogate import Predicted
from tokenomy.sites.kv_cache import SITE, KVCompression


@register(
    "kvzap",
    site=SITE,
    paper="KVzap: Fast, Adaptive, and Faithful KV Cache Pruning (Jégou & Jeblick, 2026, arXiv:2601.07891)",
    summary="KVzip's scores predicted per entry by a per-layer MLP (no replay); a floor and the latest tokens "
    "per head, the rest shared by all layers",
    trained_for="smollm2-135m",
)
def kvzap(keep: float = 0.5, sinks: int = 4, recent: int | float = 32, floor: float = 0.5,
          surrogate: str = "") -> KVCompression:
    """``recent``: the latest tokens every head keeps (a float: that share of its budget); ``floor``: the share
    of its even budget every head keeps before the rest is shared by all layers' heads. Both guard against the
    surrogate's errors where the budget is small, which would otherwise starve whole heads (measurements:
    docs/kv-cache.md); ``recent=0, floor=0`` is KVzip's allocation. ``surrogate``: a file `tokenomy train-kv
    kvzap` wrote for another model (default: the shipped SmolLM2-135M one). The paper prunes by a score
    threshold; here, as for every KV method, ``keep`` fixes the budget."""
    from tokenomy.models.kv_surrogate import load_surrogate

    return shared_by_all_layers(Predicted(load_surrogate(surrogate or None)), keep, sinks, recent, floor)
