from tokenomy.registry import register
from tokenomy.score.vision import RandomScore
from tokenomy.sites.vision.prellm import SITE, PreLLM, TopScored


@register("random-visual", site=SITE, paper="baseline", summary="uniformly random tokens, the same number per crop")
def random_visual(keep: float = 0.11, seed: int = 0) -> PreLLM:
    return PreLLM(keep, TopScored(RandomScore(seed)))
