"""Codec defaults, importable without torch (the CLI builds its parser from them)."""

from dataclasses import dataclass

# Contexts stepped at once: a step costs about the same for 4 or 16 rows (reading the weights dominates)
# and throughput flattens past 64 rows on a 2-core CPU (measured: 61, 211, 254, 287 tokens/s at 4, 32, 64,
# 128 rows).
BATCH = 64
# Tokens per segment, one model context each. Segments are coded independently and side by side, so longer
# ones predict better but leave fewer contexts to step at once (docs/codec.md: the whole book at 512 and 1024).
SEGMENT_TOKENS = 1024
# The least Equal-Info Window that always fits one token: the rarest token costs 28 bits, termination 2.
MIN_WINDOW_BITS = 32


@dataclass(frozen=True)
class Level:
    """A preset trading speed for ratio: whether online predictors learn beside the model (`codec.online`)
    and how many tokens one model context (segment) holds. Archives record their level."""

    name: str
    learns: bool
    segment_tokens: int
    summary: str


LEVELS = (
    Level("model", False, SEGMENT_TOKENS, "the model alone (Equal-Info Windows need it; units decode alone)"),
    Level("fast", True, SEGMENT_TOKENS, "model + online bias head, token and shape n-grams, Bayesian mixer"),
    Level("best", True, 4096, "as fast, with 4x longer contexts (fewer side by side: slower)"),
)
DEFAULT_LEVEL = 1
