from tokenomy.budget import RelevanceThreshold
from tokenomy.registry import register
from tokenomy.score.in_llm import InstructionAttention
from tokenomy.sites.vision.in_llm import FromFraction, InLLM
from tokenomy.sites.vision.prellm import SITE, Diverse, FirstAttended, PreLLM
from tokenomy.sites.vision.session import VisualMethods


@register(
    "todre",
    site=SITE,
    paper="ToDRE: Visual Token Pruning via Diversity and Task Awareness (Li et al., 2025, arXiv:2505.18757)",
    summary="greedy k-center over all crops' tokens; past `start` of the LLM's depth, tokens leave once the "
    "question's attention to them falls below `threshold`",
)
def todre(keep: float = 0.11, per_crop: bool = False, merge: bool = False, start: float = 0.8,
          threshold: float = 0.05) -> VisualMethods:
    """Stage 1 keeps ``keep`` of the visual tokens (k-center over the thumbnail's and every crop's tokens
    together; ``per_crop``: an even budget per crop, k-center within each). Stage 2 drops them all before the
    first layer from ``start`` (a fraction of the depth) where the attention the text after the image pays
    them, summed, is below ``threshold`` (0 turns stage 2 off; ``keep=1`` turns both off)."""
    before = PreLLM(keep, Diverse(FirstAttended(), merge=merge), joint=not per_crop)
    inside = InLLM(FromFraction(start), InstructionAttention(), RelevanceThreshold(threshold))
    return VisualMethods(before, inside if before.reduces and threshold > 0 else None)
