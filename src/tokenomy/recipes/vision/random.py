from tokenomy.registry import register
from tokenomy.score.vision import RandomScore
from tokenomy.sites.visual import SITE, PreLLM, TopScored


@register("random-visual", site=SITE, paper="baseline", summary="uniformly random patches, the same number per crop")
def random_visual(keep: float = 0.11, seed: int = 0) -> PreLLM:
    return PreLLM(keep, TopScored(RandomScore(seed)))
