"""Scores for prompt compression: how much each context token (or each document) matters, read off a small
causal LM (the compressor model) — no surgery, one or two forwards.

Token scores (higher = keep), each ``score(view) -> (n,)`` over ``view.context``:

* `SelfInformation`: ``-log p(x_i | prefix, x_<i)`` — surprising tokens carry the information (Selective
  Context, Li et al., 2023, arXiv:2310.06201; LLMLingua's token level, Jiang et al., 2023, arXiv:2310.05736).
* `QuestionGain`: ``log p(x_i | question, x_<i) - log p(x_i | x_<i)`` — what the question makes likelier is
  what answers it (LongLLMLingua's contrastive perplexity, Jiang et al., 2024, arXiv:2310.06839).
* `EvaluatorHeads`: the attention a few early heads of the model pay from the question to each token, in a
  forward that stops after those layers ("Efficient Prompt Compression with Evaluator Heads", EHPC, 2025). The
  heads are the ones that find a planted fact best on synthetic retrieval prompts (calibration, once per model).

* `TokenClassifier`: the keep probability a small bidirectional encoder gives each word in one pass, trained
  to predict the LM's self-information (LLMLingua-2's idea, Pan et al., 2024, arXiv:2403.12968; the model is
  `tokenomy.models.keep_classifier`, handed in by the recipe).

Document scores, ``rank(view, documents) -> (d,)``: `Perplexity` (mean self-information, LLMLingua's coarse
level) and `QuestionLikelihood` (``log p(question | document)``, LongLLMLingua's coarse level).

Long inputs are scored in windows of at most ``view.window`` tokens, each conditioned on the quarter window
before it; nothing is truncated.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokenomy._validation import check_int


@dataclass
class PromptView:
    """What a prompt score sees: the compressor model and tokenizer, the token ids ``(n,)`` of the context
    part being scored, the ids before it that condition it (``prefix``: what was kept so far), the
    question's ids, the longest window the model is run on, and the text with each token's span."""

    model: object
    tokenizer: object
    context: Tensor
    question: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    prefix: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    window: int = 2048
    text: str = ""  # the document the context tokens come from, for scores that read text (their own tokenizer)
    spans: Tensor | None = None  # (n, 2) each context token's character span in ``text``
    # (ids, asking, layers) -> (layers, heads, n): attention the last `asking` tokens pay each token in the
    # model's first `layers` layers (the site's `tokenomy.adapters.lm.attention_from_last`)
    attention: Callable[[Tensor, int, int], Tensor] | None = None
    depth: int = 0  # the model's decoder layers


def _start_id(tokenizer) -> int:
    """A token to condition the very first token on (BOS, else end-of-sequence)."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0):
        if token is not None:
            return int(token)
    return 0


@torch.no_grad()
def token_logprobs(model, tokenizer, ids: Tensor, prefix: Tensor, window: int) -> Tensor:
    """``log p(ids[i] | prefix, ids[:i])`` for every ``i`` ``(n,)``, in windows of at most ``window`` tokens;
    a window's tokens see the quarter window before them (and the prefix's tail) as context."""
    prefix = prefix if prefix.numel() else torch.tensor([_start_id(tokenizer)])
    history = max(1, window // 4)
    out = []
    start = 0
    while start < ids.numel():
        step = window - history
        before = torch.cat([prefix, ids[:start]])[-history:]
        chunk = ids[start:start + step]
        tokens = torch.cat([before, chunk]).unsqueeze(0)
        logits = model(input_ids=tokens.to(model.device), use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[len(before) - 1:-1], dim=-1)
        out.append(logp.gather(1, chunk.to(logp.device).unsqueeze(1)).squeeze(1).cpu())
        start += step
    return torch.cat(out) if out else torch.zeros(0)


@dataclass
class SelfInformation:
    """``-log p(x_i | prefix, x_<i)`` under the compressor model."""

    def __call__(self, view: PromptView) -> Tensor:
        return -token_logprobs(view.model, view.tokenizer, view.context, view.prefix, view.window)


@dataclass
class QuestionGain:
    """``log p(x_i | question, x_<i) - log p(x_i | x_<i)`` (LongLLMLingua's contrastive perplexity); without a
    question, plain self-information."""

    def __call__(self, view: PromptView) -> Tensor:
        plain = token_logprobs(view.model, view.tokenizer, view.context, view.prefix, view.window)
        if not view.question.numel():
            return -plain
        asked = token_logprobs(view.model, view.tokenizer, view.context,
                               torch.cat([view.prefix, view.question]), view.window)
        return asked - plain


_CALIBRATION_SEED = 20_250_121
_FILLER = ("the river ran past the old mill while the baker sold bread to the people of the town and the "
           "children played near the bridge until the bells rang for supper and the lamps were lit").split()


def _calibration_prompts(tokenizer, count: int, length: int = 600) -> list[tuple[list[int], list[bool], list[int]]]:
    """Synthetic retrieval prompts for choosing evaluator heads, none a benchmark's: filler sentences with
    one planted code, and the question for it. Each: context ids, which of them are the code, question ids."""
    rng = random.Random(_CALIBRATION_SEED)
    prompts = []
    for _ in range(count):
        words = [rng.choice(_FILLER) for _ in range(length)]
        code, name = str(rng.randint(100000, 999999)), rng.choice(("amber", "cobalt", "juniper", "saffron"))
        needle = f" The secret code for {name} is {code}. "
        at = rng.randrange(len(words))
        text = " ".join(words[:at]) + needle + " ".join(words[at:])
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.index(code)
        marked = [s < start + len(code) and e > start for s, e in encoded["offset_mapping"]]
        question = tokenizer(f"\nWhat is the secret code for {name}?", add_special_tokens=False).input_ids
        prompts.append((encoded["input_ids"], marked, question))
    return prompts


def _choose_heads(attention, tokenizer, layers: int, heads: int, samples: int = 8) -> tuple[tuple[int, int], ...]:
    found = None
    for context, marked, question in _calibration_prompts(tokenizer, samples):
        rows = attention(torch.tensor(context + question), len(question), layers)  # (layers, heads, n)
        paid = rows[..., : len(context)][..., torch.tensor(marked)].sum(-1)
        found = paid if found is None else found + paid
    order = torch.argsort(found.flatten(), descending=True)[:heads]
    width = found.shape[1]
    return tuple((int(i) // width, int(i) % width) for i in order)


def evaluator_heads(view: PromptView, layers: int, heads: int) -> tuple[tuple[int, int], ...]:
    """The ``heads`` (layer, head) pairs of the model's first ``layers`` layers that pay the most attention from
    a question to the planted fact it asks about, on synthetic retrieval prompts (EHPC's selection); chosen
    once per model and setting, and kept on the model."""
    chosen = view.model.__dict__.setdefault("_tokenomy_evaluator_heads", {})
    key = (layers, heads, id(view.tokenizer))
    if key not in chosen:
        chosen[key] = _choose_heads(view.attention, view.tokenizer, layers, heads)
    return chosen[key]


@dataclass
class EvaluatorHeads:
    """Attention from the question to each context token in the model's evaluator heads (`evaluator_heads`),
    max-pooled over ``kernel`` neighbours so a word's tokens stay together; without a question, the last
    ``layers``'s attention from the context's own last tokens."""

    layers: int = 8
    heads: int = 8
    kernel: int = 3

    def __post_init__(self):
        check_int("layers", self.layers, minimum=1)
        check_int("heads", self.heads, minimum=1)
        check_int("kernel", self.kernel, minimum=1)

    def __call__(self, view: PromptView) -> Tensor:
        if view.attention is None:
            raise ValueError("EvaluatorHeads reads attention: the view must carry the site's attention callable")
        layers = min(self.layers, view.depth)
        chosen = evaluator_heads(view, layers, self.heads)
        question = view.question if view.question.numel() else view.context[-16:]
        n = view.context.numel()
        out = torch.zeros(n)
        step = max(1, view.window - question.numel())
        for start in range(0, n, step):  # each window asks the question after its part of the context
            part = view.context[start:start + step]
            paid = view.attention(torch.cat([part, question]), question.numel(), layers)
            out[start:start + part.numel()] = torch.stack([paid[layer, head, : part.numel()]
                                                           for layer, head in chosen]).mean(0)
        pooled = torch.nn.functional.max_pool1d(out.view(1, 1, -1), self.kernel, 1, self.kernel // 2)
        return pooled.view(-1)[:n]


@dataclass
class TokenClassifier:
    """Each context token's keep probability under ``classifier`` (``probabilities(text) -> (spans, probs)``
    over its own tokens): the highest probability among the classifier tokens its characters overlap."""

    classifier: object

    def __call__(self, view: PromptView) -> Tensor:
        if view.spans is None:
            raise ValueError("TokenClassifier reads text: the view must carry the document and token spans")
        first, last = int(view.spans[:, 0].min()), int(view.spans[:, 1].max())
        spans, probabilities = self.classifier.probabilities(view.text[first:last])
        spans = spans + first
        overlap = (view.spans[:, None, 0] < spans[None, :, 1]) & (spans[None, :, 0] < view.spans[:, None, 1])
        return (overlap.float() * probabilities[None, :]).amax(dim=1)


@dataclass
class Perplexity:
    """A document's mean self-information: the least predictable documents carry the most (LLMLingua's
    budget controller)."""

    def rank(self, view: PromptView, documents: list[Tensor]) -> Tensor:
        return torch.stack([-token_logprobs(view.model, view.tokenizer, d, view.prefix, view.window).mean()
                            for d in documents])


@dataclass
class QuestionLikelihood:
    """``log p(question | document)`` per question token, with LongLLMLingua's restrictive instruction after
    the question, conditioned on the document's last half window of tokens (a longer document is ranked by
    its end; it is never cut from the prompt); without a question, `Perplexity`."""

    instruction: str = " We can get the answer to this question in the given documents."

    def rank(self, view: PromptView, documents: list[Tensor]) -> Tensor:
        if not view.question.numel():
            return Perplexity().rank(view, documents)
        asked = torch.cat([view.question, torch.tensor(view.tokenizer(self.instruction,
                                                                      add_special_tokens=False).input_ids)])
        return torch.stack([token_logprobs(view.model, view.tokenizer, asked, d[-view.window // 2:], view.window).mean()
                            for d in documents])
