"""Train the reference VLM in one reproducible command (``tokenomy train-vlm``), on the CPU or a GPU.

Two stages, both seeded and with a fixed number of steps:

1. Encoder pre-training (cheap, no language model): the ViT learns what is where. Every patch token
   predicts the kind (background, shape, filler text, large word), colour and word under it, thumbnail
   patches also the number of objects; the [CLS] token predicts which (shape, colour) pairs and which
   word its crop contains — so [CLS] attention means something, as it does in CLIP.
2. Alignment: the projector starts out *semantic* — its first layer holds stage 1's probes and its
   second maps each probe class to the embedding of the word that names it ("red", "circle", "cat",
   "3"), so a visual token first reads to SmolLM2 like the words for what it shows — and then the
   projector (and, slowly, the ViT) learns from the cross-entropy of the answer tokens. SmolLM2's weights stay frozen (bfloat16); a rank-8 LoRA on its query and value
   projections (LoRA: Hu et al., 2021, arXiv:2106.09685) lets it learn to read visual tokens. The LoRA
   deltas ship with the checkpoint and are merged into the weights at load time, so the served model is
   a plain LLaVA again.

Batches depend only on (stage, step), so worker processes that render them in parallel and the device
the steps run on change speed, not the data a step sees.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tokenomy._validation import TokenomyError, check_int
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.model import LAYOUT, LORA_PREFIX, WEIGHTS, build, trained_parameters


def patch_targets(labels: np.ndarray, side: int = LAYOUT.side) -> np.ndarray:
    """Per-pixel labels ``(3, 96, 96)`` -> per-patch labels ``(num_crops, 3, side*side)``: the most common
    non-zero label of a patch when at least 15% of it is labelled, else 0. Crops as the processor cuts them."""
    def pooled(block: np.ndarray) -> np.ndarray:  # (3, H, W) -> (3, side*side)
        c, h, w = block.shape
        p = h // side
        patches = block.reshape(c, side, p, side, p).transpose(0, 1, 3, 2, 4).reshape(c, side * side, p * p)
        counts = np.stack([(patches == k).sum(-1) for k in range(10)], -1)  # (c, n, 10)
        counts[..., 0] = 0
        best = counts.argmax(-1)
        return np.where(counts.max(-1) >= 0.15 * p * p, best, 0)

    rows, cols = LAYOUT.rows, LAYOUT.cols
    h, w = labels.shape[1] // rows, labels.shape[2] // cols
    crops = [pooled(labels)] if LAYOUT.thumbnail else []
    crops += [pooled(labels[:, r * h:(r + 1) * h, c * w:(c + 1) * w]) for r in range(rows) for c in range(cols)]
    return np.stack(crops)


def crop_presence(targets: np.ndarray) -> np.ndarray:
    """Per-crop multi-hot ``(num_crops, 12 + 9)``: (shape, colour) pairs present, and the word (or none)."""
    kind, colour, word = targets[:, 0], targets[:, 1], targets[:, 2]
    out = np.zeros((targets.shape[0], 12 + 9), dtype=np.float32)
    for s in range(3):
        for c in range(4):
            out[:, s * 4 + c] = ((kind == s + 1) & (colour == c + 1)).any(-1)
    out[:, 12:] = np.eye(9)[word.max(-1)]
    return out


# The word each probe class stands for (None: no word). Patch probes: kind, colour, word, object count
# (thumbnail patches only; other crops' patches learn class 0, "no count here").
PROBE_WORDS = (
    (None, "circle", "square", "triangle", "text", None),
    (None, "red", "green", "blue", "yellow"),
    (None, *scenes.WORDS),
    (None, "1", "2", "3", "4"),
)


class EncoderHeads(nn.Module):
    """Linear probes of stage 1: per patch (`probes`, in PROBE_WORDS order) and per [CLS] (`presence`)."""

    def __init__(self, width: int):
        super().__init__()
        self.probes = nn.ModuleList(nn.Linear(width, len(words)) for words in PROBE_WORDS)
        self.presence = nn.Linear(width, 21)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, presence: torch.Tensor, counts: torch.Tensor):
        cls, patches = hidden[:, 0], hidden[:, 1:]
        count = torch.zeros_like(targets[:, 0]).view(-1, LAYOUT.num_crops, patches.shape[1])
        count[:, 0] = counts.unsqueeze(1)  # the thumbnail sees every object
        labels = [targets[:, 0], targets[:, 1], targets[:, 2], count.flatten(0, 1)]
        loss = sum(nn.functional.cross_entropy(head(patches).flatten(0, 1), label.flatten())
                   for head, label in zip(self.probes, labels))
        return loss + nn.functional.binary_cross_entropy_with_logits(self.presence(cls), presence)


class _Batches(torch.utils.data.Dataset):
    """Step ``i`` of a stage -> its whole batch, rendered in a DataLoader worker."""

    def __init__(self, processor, stage: str, steps: int, batch: int):
        self.processor, self.stage, self.steps, self.batch = processor, stage, steps, batch

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int):
        if self.stage == "encoder":
            samples = [scenes.sample("train", 10_000_000 + step * self.batch + i) for i in range(self.batch)]
            targets = np.stack([patch_targets(s.labels) for s in samples])  # (b, crops, 3, n)
            presence = np.stack([crop_presence(t) for t in targets])
            return (torch.cat([self.processor.crops(s.image) for s in samples]),
                    torch.from_numpy(targets).flatten(0, 1).long(), torch.from_numpy(presence).flatten(0, 1),
                    torch.tensor([s.count for s in samples]))
        samples = [scenes.sample("train", step * self.batch + i) for i in range(self.batch)]
        return self.processor([s.image for s in samples], [s.question for s in samples],
                              [s.answer for s in samples])


def _batches(processor, stage: str, steps: int, batch: int, workers: int):
    loader = torch.utils.data.DataLoader(_Batches(processor, stage, steps, batch), batch_size=None,
                                         num_workers=workers, prefetch_factor=4 if workers else None)
    return tqdm(loader, desc="stage 1: encoder" if stage == "encoder" else "stage 2: alignment", unit="step")


def _device(device) -> torch.device:
    """``"auto"`` -> the GPU when there is one, else the CPU; a GPU asked for must exist."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise TokenomyError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise TokenomyError(f"device {device!r} asked for, but torch sees no GPU here (use --device cpu)")
    return chosen


def pretrain_encoder(vlm, processor, steps: int, batch: int, lr: float = 1e-3, workers: int = 0) -> EncoderHeads:
    tower = vlm.model.vision_tower
    device = tower.device
    heads = EncoderHeads(tower.config.hidden_size).to(device)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    tower.train()
    bar = _batches(processor, "encoder", steps, batch, workers)
    for pixels, targets, presence, counts in bar:
        hidden = tower(pixels.to(device), output_hidden_states=True).hidden_states[-1]
        loss = heads.loss(hidden, targets.to(device), presence.to(device), counts.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    return heads


@torch.no_grad()
def semantic_projector(vlm, processor, heads: EncoderHeads) -> None:
    """Projector layer 1 := the patch probes (other units shrunk); layer 2 maps each probe class to the
    embedding of its word, scaled so a confident class yields about one embedding."""
    proj, tokenizer = vlm.model.multi_modal_projector, processor.tokenizer
    embed = vlm.model.language_model.embed_tokens.weight
    weight = torch.cat([p.weight for p in heads.probes])
    bias = torch.cat([p.bias for p in heads.probes])
    classes = weight.shape[0]
    samples = [scenes.sample("train", 20_000_000 + i) for i in range(16)]
    pixels = torch.cat([processor.crops(s.image) for s in samples]).to(embed.device)
    features = vlm.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-1][:, 1:]
    top = torch.stack([p(features).amax(-1) for p in heads.probes]).flatten()
    scale = 1.0 / float(top[top > 0].median())
    proj.linear_1.weight.mul_(0.1)[:classes] = weight
    proj.linear_1.bias.zero_()[:classes] = bias
    proj.linear_2.weight.mul_(0.01)
    proj.linear_2.bias.zero_()
    column = 0
    for words in PROBE_WORDS:
        for word in words:
            target = torch.zeros(embed.shape[1], device=embed.device) if word is None else embed[
                tokenizer(word, add_special_tokens=False).input_ids].float().mean(0)
            proj.linear_2.weight[:, column] = target * scale
            column += 1


@torch.no_grad()
def evaluate(vlm, processor, count: int, blank: bool = False) -> dict[str, float]:
    """Accuracy per question type on the first ``count`` validation samples (greedy, first word)."""
    from tokenomy.models.reference_vlm.answers import answer, blank_like, first_word

    right: dict[str, list[bool]] = {}
    for i in range(count):
        s = scenes.sample("val", i)
        text = answer(vlm, processor, processor(blank_like(s.image) if blank else s.image, s.question))
        right.setdefault(s.qtype, []).append(first_word(text) == s.answer)
    scores = {q: sum(v) / len(v) for q, v in right.items()}
    scores["all"] = sum(sum(v) for v in right.values()) / count
    return scores


LORA_TARGETS = ("q_proj", "v_proj")


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``scale * B @ A`` (kept in float32)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        device = base.weight.device
        self.A = nn.Parameter(torch.randn(rank, base.in_features, device=device) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T.to(x.dtype)) @ (self.B.T * self.scale).to(x.dtype)


def add_lora(language_model, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every attention projection (LORA_TARGETS); returns the wrappers by checkpoint prefix."""
    wrapped = {}
    for i, layer in enumerate(language_model.layers):
        for name in LORA_TARGETS:
            lora = LoRALinear(getattr(layer.self_attn, name), rank, alpha)
            setattr(layer.self_attn, name, lora)
            wrapped[f"{LORA_PREFIX}{i}.{name}"] = lora
    return wrapped


@torch.no_grad()
def merge_lora(language_model, wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Unwrap the layers, add each delta ``key.B @ key.A`` to its base weight (as loading does), and
    return the low-rank factors to save."""
    factors = {}
    for key, lora in wrapped.items():
        i, name = key[len(LORA_PREFIX):].split(".")
        setattr(language_model.layers[int(i)].self_attn, name, lora.base)
        factors[f"{key}.B"], factors[f"{key}.A"] = (lora.B * lora.scale).half(), lora.A.half()
        lora.base.weight += (factors[f"{key}.B"].float() @ factors[f"{key}.A"].float()).to(lora.base.weight.dtype)
    return factors


def align(vlm, processor, steps: int, batch: int, lr: float = 3e-4, rank: int = 8,
          workers: int = 0) -> dict[str, torch.Tensor]:
    lm = vlm.model.language_model
    lm.to(torch.bfloat16).requires_grad_(False)
    vlm.lm_head.to(torch.bfloat16).requires_grad_(False)
    wrapped = add_lora(lm, rank, alpha=2.0 * rank)
    lora_params = [p for lora in wrapped.values() for p in (lora.A, lora.B)]
    rates = [lr, 3 * lr, lr / 10]  # projector, LoRA, ViT
    groups = [{"params": vlm.model.multi_modal_projector.parameters()}, {"params": lora_params},
              {"params": vlm.model.vision_tower.parameters()}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, rates, total_steps=steps, pct_start=0.05)
    vlm.model.vision_tower.train()
    bar = _batches(processor, "alignment", steps, batch, workers)
    for inputs in bar:
        loss = vlm(**{k: v.to(vlm.device) for k, v in inputs.items()}).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    vlm.model.vision_tower.eval()
    lm.to(torch.float32)
    vlm.lm_head.to(torch.float32)
    return merge_lora(lm, wrapped)


def train(out: str | Path | None = None, encoder_steps: int = 800, align_steps: int = 300, batch: int = 16,
          seed: int = 0, device: str = "auto", workers: int = 0, log=print) -> Path:
    """Train from scratch and save the vision tower, projector and LoRA factors (fp16 safetensors) to
    ``out``. ``workers`` processes render batches in parallel; ``device`` ``"auto"`` takes a GPU if any."""
    from safetensors.torch import save_file

    from tokenomy.models.loader import load

    for name, value in (("encoder_steps", encoder_steps), ("align_steps", align_steps), ("batch", batch)):
        check_int(name, value, minimum=1)
    check_int("workers", workers)
    device = _device(device)
    torch.manual_seed(seed)
    language_model, tokenizer = load("smollm2-135m")
    vlm, processor = build(language_model, tokenizer)
    vlm.to(device)
    start = time.perf_counter()
    heads = pretrain_encoder(vlm, processor, encoder_steps, batch * 4, workers=workers)
    semantic_projector(vlm, processor, heads)
    log(f"semantic projector, before alignment (val, 25 samples): {evaluate(vlm, processor, 25)}")
    deltas = align(vlm, processor, align_steps, batch, workers=workers)
    log(f"trained (val, 50 samples): {evaluate(vlm, processor, 50)}")
    log(f"trained, image blanked (val, 50 samples): {evaluate(vlm, processor, 50, blank=True)}")
    out = Path(out) if out is not None else WEIGHTS
    tensors = {**trained_parameters(vlm), **deltas}
    save_file({k: v.half().cpu().contiguous() for k, v in tensors.items()}, str(out),
              metadata={"encoder_steps": str(encoder_steps), "align_steps": str(align_steps),
                        "batch": str(batch), "seed": str(seed), "device": str(device),
                        "minutes": f"{(time.perf_counter() - start) / 60:.1f}"})
    return out
