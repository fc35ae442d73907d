"""The duoattention method's head profile: how much each KV head of a model retrieves from far back, measured
once on synthetic pass-key retrieval, as DuoAttention (Xiao et al., 2024, arXiv:2410.10819) identifies its
retrieval heads on synthetic pass-key data (it optimises a gate per head; here a head's score is the attention
its queries pay the pass key while the model states it, teacher-forced — training-free).

Haystacks: WikiText-2, three Canterbury books, the King James Bible — never the NIAH haystack (*Alice in
Wonderland*), nor the benchmark's "special magic number" phrasing. The SmolLM2-135M profile ships with tokenomy
(``duoattention_smollm2-135m.json``, a few KB).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from tokenomy._files import follow_umask
from tokenomy._validation import TokenomyError, check_int
from tokenomy.models.kv_surrogate import read_texts

SHIPPED = Path(__file__).with_name("duoattention_smollm2-135m.json")


def passkey_sample(tokenizer, text: str, length: int, rng: random.Random) -> tuple[Tensor, tuple[int, int], int]:
    """``length`` tokens: a stretch of ``text`` with a pass key at a random depth, then the question and the
    teacher-forced answer. Returns ``(ids (1, length), the key's token span, answer tokens at the end)``."""
    def encode(piece: str) -> list[int]:
        return tokenizer(piece, add_special_tokens=False)["input_ids"]

    key = str(rng.randrange(10_000, 100_000))
    words = text.split()
    start = rng.randrange(max(1, len(words) - length))
    hay = encode(" ".join(words[start:start + length]))  # a word is at least a token: enough to fill
    opening, digits, closing = encode(" The pass key is "), encode(key), encode(". Remember it. ")
    question, answer = encode("\nWhat is the pass key? The pass key is "), encode(key)
    hay = hay[: length - len(opening) - len(digits) - len(closing) - len(question) - len(answer)]
    cut = rng.randrange(len(hay) + 1)
    ids = hay[:cut] + opening + digits + closing + hay[cut:] + question + answer
    first = cut + len(opening)
    return torch.tensor([ids]), (first, first + len(digits)), len(answer)


def retrieval_scores(model, ids: Tensor, needle: tuple[int, int], answer: int) -> Tensor:
    """``(layers, kv_heads)``: the attention the answer's queries pay the pass key's tokens, averaged over the
    answer, the most of each KV head's query heads (a KV head retrieves if any head of its group does)."""
    from transformers import DynamicCache

    from tokenomy.budget import Keep
    from tokenomy.score.position import Recency
    from tokenomy.sites.kv_cache import KVCompression

    found: dict[int, Tensor] = {}

    def recording(obs):
        attention = obs.attention(last=answer)[0, :, :, needle[0]:needle[1]]  # (h, answer, key tokens)
        mass = attention.sum(-1).mean(-1)  # (h,)
        h_kv = obs.keys.shape[1]
        found[obs.layer_idx] = mass.view(h_kv, -1).amax(-1)
        return Recency()(obs)

    method = KVCompression(score=recording, budget=Keep(0.5))
    with torch.no_grad(), method.apply(model):
        model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    return torch.stack([found[i] for i in sorted(found)])


def save_profile(profile: Tensor, path: Path, trained_for: str, meta: dict) -> Path:
    path.write_text(json.dumps({"trained_for": trained_for, **meta,
                                "profile": [[round(float(v), 5) for v in row] for row in profile]}, indent=1) + "\n")
    follow_umask(path)
    return path


@lru_cache(maxsize=4)
def load_profile(path: str | None = None) -> tuple[Tensor, str]:
    """``(profile (layers, kv_heads), the model it was measured on)``: the shipped SmolLM2-135M one, or the one
    `train` saved at ``path``."""
    where = Path(path) if path else SHIPPED
    if not where.is_file():
        raise TokenomyError(f"no head profile at {where}; measure one with `tokenomy train-kv duoattention -o {where}`")
    try:
        data = json.loads(where.read_text())
        profile = torch.tensor(data["profile"], dtype=torch.float32)
        if profile.ndim != 2:
            raise ValueError(f"a profile is layers x KV heads, got shape {tuple(profile.shape)}")
        return profile, str(data["trained_for"])
    except (ValueError, KeyError, TypeError) as error:
        raise TokenomyError(f"{where} is not a head profile saved by `tokenomy train-kv duoattention` ({error})") \
            from error


def train(data: str | Path, model_name: str = "smollm2-135m", out: str | Path | None = None, samples: int = 24,
          length: int = 1024, seed: int = 0) -> Path:
    """Measure ``model_name``'s head profile on ``samples`` pass-key haystacks of ``length`` tokens drawn from the
    public texts under ``data`` (``../shared/data`` here), and save it to ``out`` (default: the shipped one)."""
    from tokenomy._progress import progress_bar
    from tokenomy.models.loader import load

    check_int("samples", samples, minimum=1)
    check_int("length", length, minimum=64)
    texts = read_texts(data)
    model, tokenizer = load(model_name)
    rng = random.Random(seed)
    total = None
    for _ in progress_bar(range(samples), desc="pass-key haystacks", unit="sample"):
        ids, needle, answer = passkey_sample(tokenizer, rng.choice(texts), length, rng)
        scores = retrieval_scores(model, ids, needle, answer)
        total = scores if total is None else total + scores
    out = Path(out) if out is not None else SHIPPED
    save_profile(total / samples, out, model_name, {"samples": samples, "length": length, "seed": seed})
    load_profile.cache_clear()
    return out
