"""Train the reference VLM in one reproducible command (``tokenomy train-vlm``), on the CPU.

Two stages, both seeded and with a fixed number of steps:

1. Encoder pre-training (cheap, no language model): the ViT learns what is where. Every patch token
   predicts the kind (background, shape, filler text, large word), colour and word under it, thumbnail
   patches also the number of objects; the [CLS] token predicts which (shape, colour) pairs and which
   word its crop contains — so [CLS] attention means something, as it does in CLIP.
2. Alignment: the projector (and, slowly, the ViT) learns to speak to SmolLM2, with the cross-entropy
   of the answer tokens. SmolLM2's weights stay frozen (bfloat16); a rank-8 LoRA on its query and value
   projections (LoRA: Hu et al., 2021, arXiv:2106.09685) lets it learn to read visual tokens. The LoRA
   deltas ship with the checkpoint and are merged into the weights at load time, so the served model is
   a plain LLaVA again.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

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


class EncoderHeads(nn.Module):
    """Linear probes used only by stage 1."""

    def __init__(self, width: int):
        super().__init__()
        self.kind, self.colour, self.word, self.count = (nn.Linear(width, n) for n in (6, 5, 9, 5))
        self.presence = nn.Linear(width, 21)

    def loss(self, hidden: torch.Tensor, targets: torch.Tensor, presence: torch.Tensor, counts: torch.Tensor):
        cls, patches = hidden[:, 0], hidden[:, 1:]
        ce = nn.functional.cross_entropy
        loss = sum(ce(head(patches).flatten(0, 1), targets[:, i].flatten())
                   for i, head in enumerate((self.kind, self.colour, self.word)))
        thumb = patches.view(-1, LAYOUT.num_crops, *patches.shape[1:])[:, 0]
        loss = loss + ce(self.count(thumb).flatten(0, 1), counts.repeat_interleave(thumb.shape[1]))
        return loss + nn.functional.binary_cross_entropy_with_logits(self.presence(cls), presence)


def _batch(processor, split: str, start: int, size: int):
    samples = [scenes.sample(split, i) for i in range(start, start + size)]
    return samples, processor([s.image for s in samples], [s.question for s in samples],
                              [s.answer for s in samples])


def pretrain_encoder(vlm, processor, steps: int, batch: int, lr: float = 1e-3) -> None:
    tower = vlm.model.vision_tower
    heads = EncoderHeads(tower.config.hidden_size)
    params = list(tower.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    tower.train()
    bar = tqdm(range(steps), desc="stage 1: encoder", unit="step")
    for step in bar:
        samples = [scenes.sample("train", 10_000_000 + step * batch + i) for i in range(batch)]
        pixels = torch.cat([processor.crops(s.image) for s in samples])
        targets = np.stack([patch_targets(s.labels) for s in samples])  # (b, crops, 3, n)
        presence = np.stack([crop_presence(t) for t in targets])
        hidden = tower(pixels, output_hidden_states=True).hidden_states[-1]
        loss = heads.loss(hidden, torch.from_numpy(targets).flatten(0, 1).long(),
                          torch.from_numpy(presence).flatten(0, 1),
                          torch.tensor([s.count for s in samples]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update ``scale * B @ A`` (kept in float32)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T.to(x.dtype)) @ (self.B.T * self.scale).to(x.dtype)


def add_lora(language_model, rank: int, alpha: float) -> dict[str, LoRALinear]:
    """Wrap every attention layer's q_proj and v_proj; returns the wrappers by checkpoint prefix."""
    wrapped = {}
    for i, layer in enumerate(language_model.layers):
        for name in ("q_proj", "v_proj"):
            lora = LoRALinear(getattr(layer.self_attn, name), rank, alpha)
            setattr(layer.self_attn, name, lora)
            wrapped[f"{LORA_PREFIX}{i}.{name}"] = lora
    return wrapped


def remove_lora(language_model, wrapped: dict[str, LoRALinear]) -> dict[str, torch.Tensor]:
    """Unwrap the layers (base weights untouched) and return the deltas to save."""
    deltas = {}
    for key, lora in wrapped.items():
        i, name = key[len(LORA_PREFIX):].split(".")
        setattr(language_model.layers[int(i)].self_attn, name, lora.base)
        deltas[key] = (lora.B @ lora.A * lora.scale).detach()
    return deltas


def align(vlm, processor, steps: int, batch: int, lr: float = 1e-3, rank: int = 8) -> dict[str, torch.Tensor]:
    lm = vlm.model.language_model
    lm.to(torch.bfloat16).requires_grad_(False)
    vlm.lm_head.to(torch.bfloat16).requires_grad_(False)
    wrapped = add_lora(lm, rank, alpha=2.0 * rank)
    lora_params = [p for lora in wrapped.values() for p in (lora.A, lora.B)]
    groups = [{"params": vlm.model.multi_modal_projector.parameters(), "lr": lr},
              {"params": lora_params, "lr": lr},
              {"params": vlm.model.vision_tower.parameters(), "lr": lr / 10}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [lr, lr, lr / 10], total_steps=steps, pct_start=0.05)
    vlm.model.vision_tower.train()
    bar = tqdm(range(steps), desc="stage 2: alignment", unit="step")
    for step in bar:
        _, inputs = _batch(processor, "train", step * batch, batch)
        loss = vlm(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    vlm.model.vision_tower.eval()
    deltas = remove_lora(lm, wrapped)
    lm.to(torch.float32)
    vlm.lm_head.to(torch.float32)
    return deltas


def train(out: str | Path | None = None, encoder_steps: int = 800, align_steps: int = 350, batch: int = 16,
          seed: int = 0) -> Path:
    """Train from scratch and save the vision tower and projector (fp16 safetensors) to ``out``."""
    from safetensors.torch import save_file

    from tokenomy.models.loader import load

    torch.manual_seed(seed)
    language_model, tokenizer = load("smollm2-135m")
    vlm, processor = build(language_model, tokenizer)
    start = time.perf_counter()
    pretrain_encoder(vlm, processor, encoder_steps, batch * 4)
    deltas = align(vlm, processor, align_steps, batch)
    out = Path(out) if out is not None else WEIGHTS
    tensors = {**trained_parameters(vlm), **deltas}
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(out),
              metadata={"encoder_steps": str(encoder_steps), "align_steps": str(align_steps),
                        "batch": str(batch), "seed": str(seed),
                        "minutes": f"{(time.perf_counter() - start) / 60:.1f}"})
    return out
