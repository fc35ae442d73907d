"""Turning samples into token ids, and greedy decoding over a (possibly compressed) cache."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tokenomy._validation import TokenomyError
from tokenomy.bench.tasks import Sample
from tokenomy.adapters.lm import context_length

_SPLIT = "\u2063TOKENOMY-SPLIT\u2063"


@dataclass
class Prompt:
    """A sample as ids: ``context`` is what the query-agnostic setting compresses; ``question`` (question,
    end of the user turn, start of the reply, answer prefix) follows it. The query-aware setting
    compresses both, concatenated: the two settings see exactly the same tokens."""

    context: Tensor  # (1, n_context)
    question: Tensor  # (1, n_question)

    @property
    def full(self) -> Tensor:
        return torch.cat([self.context, self.question], dim=1)


def build_prompt(tokenizer, sample: Sample) -> Prompt:
    """Token ids of a sample through the tokenizer's chat template (plain text without one)."""
    if tokenizer.chat_template:
        message = [{"role": "user", "content": sample.context + _SPLIT + sample.question}]
        text = tokenizer.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
        context, question = text.split(_SPLIT)
        special = False
    else:
        context, question = sample.context, sample.question + "\n"
        special = True  # a base model's BOS
    question += sample.answer_prefix
    context_ids = tokenizer.encode(context, add_special_tokens=special, return_tensors="pt")
    question_ids = tokenizer.encode(question, add_special_tokens=False, return_tensors="pt")
    return Prompt(context_ids, question_ids)


def check_fits(model, prompt: Prompt, extra: int, where: str) -> None:
    """Refuse (never truncate) a prompt longer than the model's context window."""
    limit = context_length(model)
    needed = prompt.full.shape[1] + extra
    if limit is not None and needed > limit:
        raise TokenomyError(
            f"{where} needs {needed} positions ({prompt.full.shape[1]} prompt + {extra} more) but the model "
            f"allows {limit}; shorten the context (tokenomy never truncates silently)"
        )


def stop_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


@torch.no_grad()
def greedy(model, cache, logits: Tensor, max_new_tokens: int, stops: set[int], position: int | None = None) -> list[int]:
    """Greedy continuation from ``logits`` (the last position's) over ``cache``.

    ``position``: explicit position of the next token, for caches whose length is not the number of
    tokens seen (kvpress's); tokenomy's compressed caches need none.
    """
    out: list[int] = []
    for step in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in stops or step == max_new_tokens - 1:
            break
        kwargs = {}
        if position is not None:
            kwargs["position_ids"] = torch.tensor([[position + step]])
        logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True, **kwargs).logits
    return out
