from dataclasses import replace

from tokenomy.registry import register
from tokenomy.score.prompt import TokenClassifier
from tokenomy.sites.prompt import SITE, PromptCompression


@register(
    "distilled",
    site=SITE,
    paper="LLMLingua-2: Data Distillation for Efficient and Faithful Task-Agnostic Prompt Compression "
          "(Pan et al., 2024, arXiv:2403.12968)",
    summary="a MiniLM token classifier, trained on SmolLM2's self-information, keeps the likeliest words in one "
            "bidirectional pass, and the words the question names",
    query_aware=True,
)
def distilled(rate: float = 0.33, question_words: bool = True, question_window: int = 3) -> PromptCompression:
    """``question_words=False`` is LLMLingua-2's query-agnostic use: the classifier alone decides, whatever the
    question; ``question_window``: the words kept on each side of a question word found in the context."""
    from tokenomy.models.keep_classifier import load_keep_classifier

    checked = PromptCompression(score=None, rate=rate, question_words=question_words,
                                question_window=question_window)  # bad options fail before the encoder loads
    return replace(checked, score=TokenClassifier(load_keep_classifier()))
