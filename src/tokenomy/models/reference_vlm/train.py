"""Train a reference VLM in one reproducible, resumable command (``tokenomy train-vlm``), on the CPU or a GPU.

Two stages, both seeded and with a fixed number of steps:

1. Encoder probes (cheap, no language model): every patch token predicts the kind (background, shape,
   filler text, large word), colour and word under it, the first crop's patches (it sees the whole image)
   also the number of objects; the [CLS] token predicts which (shape, colour) pairs and which word its crop
   contains. v1's ViT is trained from scratch this way (so its [CLS] attention means something, as in
   CLIP); v2's pretrained DINOv2 stays frozen and only the probes learn.
2. Alignment: the projector starts out *semantic* — its first layer holds stage 1's probes and its
   second maps each probe class to the embedding of the word that names it ("red", "circle", "cat",
   "3"), so a visual token first reads to SmolLM2 like the words for what it shows — and then the
   projector (and, slowly, v1's ViT) learns from the cross-entropy of the answer tokens. SmolLM2's weights
   stay frozen (bfloat16); a rank-8 LoRA on its query and value projections (LoRA: Hu et al., 2021,
   arXiv:2106.09685) lets it learn to read visual tokens. The LoRA deltas ship with the checkpoint and are
   merged into the weights at load time, so the served model is a plain LLaVA again.

Variants that share a checkpoint (v2 and v2-anyres) are trained together: step ``i`` uses the ``i mod k``-th
of their layouts. Batches depend only on (stage, step), so worker processes that render them in parallel,
the device, and where a run was interrupted change speed, not the data a step sees. With ``max_minutes`` a
run stops at the time limit and saves a checkpoint (the stage, the step, every trained tensor and the
optimiser); the same command with the same checkpoint path resumes from there.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tokenomy._progress import progress_bar

from tokenomy._files import follow_umask
from tokenomy._validation import TokenomyError, check_int
from tokenomy.models.reference_vlm import scenes
from tokenomy.models.reference_vlm.model import (
    DINOV2_TOWER,
    LORA_PREFIX,
    VARIANTS,
    CropLayout,
    Variant,
    build,
    trained_parameters,
    variant,
)


def patch_targets(labels: np.ndarray, layout: CropLayout) -> np.ndarray:
    """Per-pixel labels ``(3, H, W)`` -> per-patch labels ``(num_crops, 3, side*side)``: the most common
    non-zero label of a patch when at least 15% of it is labelled, else 0. Crops as the processor cuts them."""
    side = layout.side

    def pooled(block: np.ndarray) -> np.ndarray:  # (3, H, W) -> (3, side*side)
        c, h, w = block.shape
        p = h // side
        patches = block.reshape(c, side, p, side, p).transpose(0, 1, 3, 2, 4).reshape(c, side * side, p * p)
        counts = np.stack([(patches == k).sum(-1) for k in range(10)], -1)  # (c, n, 10)
        counts[..., 0] = 0
        best = counts.argmax(-1)
        return np.where(counts.max(-1) >= 0.15 * p * p, best, 0)

    rows, cols = layout.rows, layout.cols
    h, w = labels.shape[1] // rows, labels.shape[2] // cols
    crops = [pooled(labels)] if layout.thumbnail else []
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
        count = torch.zeros_like(targets[:, 0]).view(len(counts), -1, patches.shape[1])
        count[:, 0] = counts.unsqueeze(1)  # the first crop (thumbnail, or the only one) sees every object
        labels = [targets[:, 0], targets[:, 1], targets[:, 2], count.flatten(0, 1)]
        loss = sum(nn.functional.cross_entropy(head(patches).flatten(0, 1), label.flatten())
                   for head, label in zip(self.probes, labels))
        return loss + nn.functional.binary_cross_entropy_with_logits(self.presence(cls), presence)


class _Batches(torch.utils.data.Dataset):
    """Step ``i`` of a stage -> its whole batch, rendered in a DataLoader worker; steps from ``first`` on. Step
    ``i`` cuts its images as ``processors[i % len(processors)]`` does."""

    def __init__(self, processors, style: scenes.Style, stage: str, steps: int, batch: int, first: int = 0):
        self.processors, self.style, self.stage = processors, style, stage
        self.steps, self.batch, self.first = steps, batch, first

    def __len__(self) -> int:
        return self.steps - self.first

    def __getitem__(self, index: int):
        step = self.first + index
        processor = self.processors[step % len(self.processors)]
        if self.stage == "encoder":
            base = 10_000_000 + step * self.batch
            samples = [scenes.sample("train", base + i, self.style) for i in range(self.batch)]
            targets = np.stack([patch_targets(s.labels, processor.layout) for s in samples])  # (b, crops, 3, n)
            presence = np.stack([crop_presence(t) for t in targets])
            return (torch.cat([processor.crops(s.image) for s in samples]),
                    torch.from_numpy(targets).flatten(0, 1).long(), torch.from_numpy(presence).flatten(0, 1),
                    torch.tensor([s.count for s in samples]))
        samples = [scenes.sample("train", step * self.batch + i, self.style) for i in range(self.batch)]
        return processor([s.image for s in samples], [s.question for s in samples], [s.answer for s in samples])


def _batches(run: _Run, stage: str, steps: int, batch: int, first: int):
    dataset = _Batches(run.processors, run.variant.style, stage, steps, batch, first)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=run.workers,
                                         prefetch_factor=4 if run.workers else None)
    name = "stage 1: encoder" if stage == "encoder" else "stage 2: alignment"
    return progress_bar(loader, desc=name, unit="step", initial=first, total=steps)


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


class _Run:
    """What a training run carries between its stages: the model, the processors of its layouts, the
    checkpoint (resumed from, saved to) and the clock."""

    def __init__(self, vlm, processors, chosen: Variant, settings: dict, workers: int, checkpoint: Path | None,
                 saved: dict | None, max_minutes: float | None):
        self.vlm, self.processors, self.variant, self.settings = vlm, processors, chosen, settings
        self.workers, self.checkpoint, self.saved = workers, checkpoint, saved
        self.started = time.perf_counter()
        self.deadline = None if max_minutes is None else self.started + 60 * max_minutes

    @staticmethod
    def load(checkpoint: Path | None, settings: dict) -> dict | None:
        """The saved state to resume from (None: start afresh); refused when made with other settings."""
        if checkpoint is None or not checkpoint.exists():
            return None
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("settings") != settings:
            raise TokenomyError(f"checkpoint {checkpoint} was made with {saved.get('settings')}, not {settings}: "
                                "rerun with those settings or another checkpoint path")
        return saved

    @property
    def stage(self) -> str:
        return self.saved["stage"] if self.saved else "encoder"

    @property
    def minutes(self) -> float:
        """Minutes spent training, over every resumed run."""
        return (self.saved["minutes"] if self.saved else 0.0) + (time.perf_counter() - self.started) / 60

    def resume(self, stage: str, modules: dict, opt, sched) -> int:
        """Load the checkpoint's tensors into ``modules``, ``opt`` and ``sched`` when it was saved in ``stage``;
        the step to start from."""
        if not self.saved or self.saved["stage"] != stage:
            return 0
        for name, module in modules.items():
            module.load_state_dict(self.saved["modules"][name])
        opt.load_state_dict(self.saved["optimizer"])
        sched.load_state_dict(self.saved["scheduler"])
        return self.saved["step"]

    def save(self, stage: str, step: int, modules: dict, opt, sched) -> None:
        state = {"settings": self.settings, "stage": stage, "step": step, "minutes": self.minutes,
                 "modules": {name: module.state_dict() for name, module in modules.items()},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        scratch = self.checkpoint.with_name(f".{self.checkpoint.name}.partial")
        torch.save(state, scratch)
        os.replace(scratch, self.checkpoint)


def _loop(run: _Run, stage: str, steps: int, batch: int, modules: dict, opt, sched, loss_of) -> bool:
    """Run ``stage``'s steps from where the checkpoint left it; False when the time ran out first (saved)."""
    first = run.resume(stage, modules, opt, sched)
    bar = _batches(run, stage, steps, batch, first)
    for step, inputs in enumerate(bar, start=first):
        loss = loss_of(inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if run.deadline is not None and time.perf_counter() > run.deadline and step + 1 < steps:
            bar.close()
            run.save(stage, step + 1, modules, opt, sched)
            return False
    return True


def pretrain_encoder(run: _Run, heads: EncoderHeads, steps: int, batch: int, lr: float = 1e-3) -> bool:
    """Stage 1 (see the module docstring); False when the run stopped at its time limit."""
    tower = run.vlm.model.vision_tower
    device = tower.device
    frozen = run.variant.tower == DINOV2_TOWER
    params = list(heads.parameters()) + ([] if frozen else list(tower.parameters()))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    tower.train(not frozen)

    def loss_of(batch_tensors):
        pixels, targets, presence, counts = (t.to(device) for t in batch_tensors)
        with torch.set_grad_enabled(not frozen):
            hidden = tower(pixels, output_hidden_states=True).hidden_states[-1]
        return heads.loss(hidden, targets, presence, counts)

    modules = {"heads": heads} if frozen else {"heads": heads, "tower": tower}
    done = _loop(run, "encoder", steps, batch, modules, opt, sched, loss_of)
    tower.eval()
    return done


@torch.no_grad()
def semantic_projector(vlm, processor, heads: EncoderHeads, style: scenes.Style) -> None:
    """Projector layer 1 := the patch probes (other units shrunk); layer 2 maps each probe class to the
    embedding of its word, scaled so a confident class yields about one embedding."""
    proj, tokenizer = vlm.model.multi_modal_projector, processor.tokenizer
    embed = vlm.model.language_model.embed_tokens.weight
    weight = torch.cat([p.weight for p in heads.probes])
    bias = torch.cat([p.bias for p in heads.probes])
    classes = weight.shape[0]
    samples = [scenes.sample("train", 20_000_000 + i, style) for i in range(16)]
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
def evaluate(vlm, processor, count: int, style: scenes.Style, blank: bool = False) -> dict[str, float]:
    """Accuracy per question type on the first ``count`` validation samples (greedy, first word)."""
    from tokenomy.models.reference_vlm.answers import answer, blank_like, first_word

    right: dict[str, list[bool]] = {}
    for i in range(count):
        s = scenes.sample("val", i, style)
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


def align(run: _Run, steps: int, batch: int, lr: float = 3e-4, rank: int = 8) -> dict[str, torch.Tensor] | None:
    """Stage 2 (see the module docstring): the LoRA factors to save, or None when the run stopped at its time
    limit."""
    vlm = run.vlm
    lm = vlm.model.language_model
    lm.to(torch.bfloat16).requires_grad_(False)
    vlm.lm_head.to(torch.bfloat16).requires_grad_(False)
    wrapped = add_lora(lm, rank, alpha=2.0 * rank)
    lora = nn.ParameterDict({f"{key}.{n}".replace(".", "_"): getattr(layer, n)
                             for key, layer in wrapped.items() for n in ("A", "B")})
    projector, tower = vlm.model.multi_modal_projector, vlm.model.vision_tower
    groups = [{"params": projector.parameters(), "lr": lr}, {"params": lora.parameters(), "lr": 3 * lr}]
    modules = {"projector": projector, "lora": lora}
    if run.variant.tower != DINOV2_TOWER:  # a tower trained from scratch keeps learning, slowly
        groups.append({"params": tower.parameters(), "lr": lr / 10})
        modules["tower"] = tower
        tower.train()
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, [g["lr"] for g in groups], total_steps=steps, pct_start=0.05)
    loss_of = lambda inputs: vlm(**{k: v.to(vlm.device) for k, v in inputs.items()}).loss
    done = _loop(run, "align", steps, batch, modules, opt, sched, loss_of)
    tower.eval()
    if not done:
        return None
    lm.to(torch.float32)
    vlm.lm_head.to(torch.float32)
    return merge_lora(lm, wrapped)


def train(model: str = "reference-vlm-v1", out: str | Path | None = None, encoder_steps: int = 800,
          align_steps: int = 300, batch: int = 16, seed: int = 0, device: str = "auto", workers: int = 0,
          checkpoint: str | Path | None = None, max_minutes: float | None = None, check: int = 50,
          log=print) -> Path | None:
    """Train ``model``'s checkpoint from scratch (with every variant that shares it) and save the trained
    tensors and LoRA factors (fp16 safetensors) to ``out`` (default: the packaged path). ``workers``
    processes render batches in parallel; ``device`` ``"auto"`` takes a GPU if any. With ``max_minutes`` the
    run stops at that limit and saves ``checkpoint`` (default: next to ``out``); the same call resumes it.
    ``check`` validation questions are answered and logged after each stage (0: none). Returns ``out``, or None
    when the run stopped before the end."""
    from safetensors.torch import save_file

    from tokenomy.models.loader import load

    chosen = variant(model)
    for name, value in (("encoder_steps", encoder_steps), ("align_steps", align_steps), ("batch", batch)):
        check_int(name, value, minimum=1)
    check_int("workers", workers)
    check_int("check", check)
    if max_minutes is not None and (isinstance(max_minutes, bool) or not max_minutes > 0):
        raise TokenomyError(f"max_minutes must be a positive number of minutes, got {max_minutes!r}")
    device = _device(device)
    out = Path(out) if out is not None else chosen.weights
    if checkpoint is None and max_minutes is not None:
        checkpoint = out.with_name(out.name + ".checkpoint")
    siblings = [v for v in VARIANTS.values() if v.weights == chosen.weights]
    settings = {"variants": [v.name for v in siblings], "encoder_steps": encoder_steps,
                "align_steps": align_steps, "batch": batch, "seed": seed}
    checkpoint = None if checkpoint is None else Path(checkpoint)
    saved = _Run.load(checkpoint, settings)
    torch.manual_seed(seed)
    language_model, tokenizer = load("smollm2-135m")
    vlm, processor = build(language_model, tokenizer, chosen)
    processors = [processor] + [replace(processor, layout=v.layout, crop=v.crop) for v in siblings if v is not chosen]
    if chosen.tower == DINOV2_TOWER:
        vlm.model.vision_tower.requires_grad_(False)
    vlm.to(device)
    run = _Run(vlm, processors, chosen, settings, workers, checkpoint, saved, max_minutes)
    style = chosen.style
    if run.stage == "encoder":
        heads = EncoderHeads(vlm.model.vision_tower.config.hidden_size).to(device)
        if not pretrain_encoder(run, heads, encoder_steps, batch * 4):
            log(f"stopped in stage 1 after {run.minutes:.1f} min; checkpoint {checkpoint}: run again to resume")
            return None
        semantic_projector(vlm, processor, heads, style)
        if check:
            log(f"semantic projector, before alignment (val, {check} samples): {evaluate(vlm, processor, check, style)}")
    deltas = align(run, align_steps, batch)
    if deltas is None:
        log(f"stopped in stage 2 after {run.minutes:.1f} min; checkpoint {checkpoint}: run again to resume")
        return None
    if check:
        for each in processors:
            log(f"trained, {each.layout.num_crops} crop(s) (val, {check} samples): {evaluate(vlm, each, check, style)}")
        log(f"trained, image blanked (val, {check} samples): {evaluate(vlm, processor, check, style, blank=True)}")
    tensors = {**trained_parameters(vlm, chosen), **deltas}
    save_file({k: v.half().cpu().contiguous() for k, v in tensors.items()}, str(out),
              metadata={"tower": chosen.tower, **{k: str(v) for k, v in settings.items()},
                        "device": str(device), "minutes": f"{run.minutes:.1f}"})
    follow_umask(out)
    if run.checkpoint is not None:
        run.checkpoint.unlink(missing_ok=True)  # done: the same command trains afresh
    return out
