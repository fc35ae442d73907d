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
def distilled(rate: float = 0.33, question_window: int = 3) -> PromptCompression:
    from tokenomy.models.keep_classifier import load_keep_classifier

    return PromptCompression(score=TokenClassifier(load_keep_classifier()), rate=rate, question_words=True,
                             question_window=question_window)
