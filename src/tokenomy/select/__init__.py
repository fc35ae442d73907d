"""Pure selection algorithms over plain tensors (no model knowledge)."""

from tokenomy.select.diversity import cosine_distance, k_center, most_isolated
from tokenomy.select.merge import bipartite_soft_matching, merge_into_nearest
from tokenomy.select.pool import average_pool, grid_shape, on_lattice, pool_representatives
from tokenomy.select.topk import prioritize, top_k

__all__ = [
    "average_pool",
    "bipartite_soft_matching",
    "cosine_distance",
    "grid_shape",
    "k_center",
    "merge_into_nearest",
    "most_isolated",
    "on_lattice",
    "pool_representatives",
    "prioritize",
    "top_k",
]
