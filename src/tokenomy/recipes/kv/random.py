from tokenomy.budget import Keep
from tokenomy.registry import register
from tokenomy.score.position import RandomScores
from tokenomy.sites.kv_cache import SITE, KVCompression


@register("random", site=SITE, paper="baseline", summary="keep a seeded random subset (per layer and head)")
def random(keep: float = 0.5, seed: int = 0) -> KVCompression:
    return KVCompression(score=RandomScores(seed), budget=Keep(keep))
