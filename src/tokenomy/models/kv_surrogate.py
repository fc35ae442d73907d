"""The KVzap method's surrogate: one small MLP per layer predicting KVzip's log score of a cached entry from the
entry itself (`tokenomy.score.surrogate.entry_features`), after KVzap (Jégou & Jeblick, 2026, arXiv:2601.07891),
which predicts it from the hidden state.

Labels: tokenomy's own KVzip (`tokenomy.score.reconstruction`) run on windows of public text — WikiText-2, three
Canterbury books, the King James Bible — never the NIAH haystack (*Alice in Wonderland*) the benchmark hides
needles in. `train` takes minutes on a CPU; the head for SmolLM2-135M ships with tokenomy
(``kvzap_smollm2-135m.safetensors``, under a MB).
"""

from __future__ import annotations

import random
import time
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from tokenomy._files import follow_umask
from tokenomy._validation import TokenomyError, check_int
from tokenomy.score.surrogate import entry_features

SHIPPED = Path(__file__).with_name("kvzap_smollm2-135m.safetensors")
TEXTS = ("text/wikitext-2/wiki.test.raw", "text/lcet10.txt", "text/plrabn12.txt", "text/asyoulik.txt",
         "text/bible.txt")
FLOOR = -20.0  # log scores below this (entries no replayed query looks at) are trained as this


class SurrogateNet(nn.Module):
    """Per layer: standardised features -> ``hidden`` GELU units -> one log score per KV head (``hidden=0``: a
    linear map). All layers' weights are stacked, so training runs every layer in one batched product."""

    def __init__(self, num_layers: int, features: int, kv_heads: int, hidden: int = 32, trained_for: str = "?"):
        super().__init__()
        self.num_layers, self.features, self.kv_heads, self.trained_for = num_layers, features, kv_heads, trained_for
        self.register_buffer("mean", torch.zeros(num_layers, 1, features))
        self.register_buffer("scale", torch.ones(num_layers, 1, features))
        width = hidden or kv_heads
        self.w1 = nn.Parameter(torch.randn(num_layers, features, width) / features ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(num_layers, 1, width))
        self.w2 = nn.Parameter(torch.randn(num_layers, hidden, kv_heads) / max(hidden, 1) ** 0.5) if hidden else None
        self.b2 = nn.Parameter(torch.zeros(num_layers, 1, kv_heads)) if hidden else None

    def forward(self, features: Tensor, layers: list[int]) -> Tensor:
        x = (features - self.mean[layers]) / self.scale[layers]
        x = torch.baddbmm(self.b1[layers], x, self.w1[layers])
        if self.w2 is None:
            return x
        return torch.baddbmm(self.b2[layers], nn.functional.gelu(x), self.w2[layers])


def save(net: SurrogateNet, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.half().contiguous() for k, v in net.state_dict().items()}
    shape = {"num_layers": net.num_layers, "features": net.features, "kv_heads": net.kv_heads,
             "hidden": 0 if net.w2 is None else net.w2.shape[1], "trained_for": net.trained_for}
    save_file(tensors, str(path), metadata={**metadata, **{k: str(v) for k, v in shape.items()}})
    follow_umask(path)
    return path


@lru_cache(maxsize=4)
def load_surrogate(path: str | None = None) -> SurrogateNet:
    """The shipped surrogate (SmolLM2-135M), or the one `train` saved at ``path``."""
    from safetensors import safe_open

    where = Path(path) if path else SHIPPED
    if not where.is_file():
        raise TokenomyError(f"no KVzap surrogate at {where}; train one with `tokenomy train-kv kvzap -o {where}`")
    try:
        with safe_open(str(where), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
        net = SurrogateNet(int(meta["num_layers"]), int(meta["features"]), int(meta["kv_heads"]),
                           int(meta["hidden"]), meta["trained_for"])
        net.load_state_dict(tensors)
    except Exception as error:  # a file of another kind, truncated, or from another shape of net
        raise TokenomyError(f"{where} is not a KVzap surrogate saved by `tokenomy train-kv kvzap` ({error})") from error
    return net.eval()


def label(model, ids: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Run KVzip on a prefill of ``ids`` ``(1, n)``: per layer, the entries' features ``(n, F)`` and KVzip's log
    scores ``(n, h_kv)``."""
    from transformers import DynamicCache

    from tokenomy.budget import HeadAdaptive, Keep
    from tokenomy.score.reconstruction import Reconstruction
    from tokenomy.sites.kv_cache import KVCompression

    records: dict[int, tuple[Tensor, Tensor]] = {}
    kvzip = Reconstruction()

    def recording(obs):
        scores = kvzip(obs)
        records[obs.layer_idx] = (entry_features(obs.keys, obs.values)[0], scores[0].T.log().clamp_min(FLOOR))
        return scores

    recording.replays = True  # the site runs the replay for it, as for KVzip itself
    method = KVCompression(score=recording, budget=Keep(0.5), heads=HeadAdaptive(0.0, across_layers=True))
    with torch.no_grad(), method.apply(model):
        model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True)
    return [records[i] for i in sorted(records)]


def read_texts(data: str | Path) -> list[str]:
    """The public training texts (`TEXTS`) under ``data``; a missing one fails naming it."""
    root = Path(data)
    missing = [t for t in TEXTS if not (root / t).exists()]
    if missing:
        raise TokenomyError(f"training reads {', '.join(TEXTS)} under {root} (../shared/data, or --data DIR); "
                            f"missing: {', '.join(missing)}")
    return [(root / t).read_text(encoding="utf-8", errors="replace") for t in TEXTS]


def windows(texts: list[str], tokenizer, count: int, length: int, seed: int) -> list[Tensor]:
    """``count`` windows of ``length`` tokens drawn with ``seed`` from ``texts``."""
    rng = random.Random(seed)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    encoded = [ids for ids in encoded if len(ids) > length]
    if not encoded:
        raise TokenomyError(f"no training text holds more than {length} tokens")
    found = []
    for _ in range(count):
        ids = rng.choice(encoded)
        start = rng.randrange(len(ids) - length)
        found.append(torch.tensor([ids[start:start + length]]))
    return found


def fit(samples: list[list[tuple[Tensor, Tensor]]], hidden: int, epochs: int, seed: int, trained_for: str,
        per_layer: int = 1024, log=print) -> SurrogateNet:
    """A `SurrogateNet` fitted (mean squared error on log scores) to labelled samples, ``per_layer`` entries
    drawn from each sample's layers; the last tenth of the samples only measures it (Pearson correlation)."""
    from tokenomy._progress import progress_bar

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    held_out = max(1, len(samples) // 10)

    def stack(part):  # (layers, entries, F), (layers, entries, h_kv)
        xs, ys = [], []
        for layers in part:
            n = layers[0][0].shape[0]
            pick = torch.randperm(n, generator=generator)[: min(per_layer, n)]
            xs.append(torch.stack([x[pick] for x, _ in layers]))
            ys.append(torch.stack([y[pick] for _, y in layers]))
        return torch.cat(xs, 1), torch.cat(ys, 1)

    x, y = stack(samples[:-held_out])
    num_layers, _, features = x.shape
    net = SurrogateNet(num_layers, features, y.shape[-1], hidden, trained_for)
    net.mean.copy_(x.mean(1, keepdim=True))
    net.scale.copy_(x.std(1, keepdim=True).clamp_min(1e-4))
    everything = list(range(num_layers))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    steps = epochs * max(1, x.shape[1] // 512)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in progress_bar(range(epochs), desc="training the surrogate", unit="epoch"):
        for batch in torch.randperm(x.shape[1], generator=generator).split(512):
            loss = nn.functional.mse_loss(net(x[:, batch], everything), y[:, batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    net.eval()
    tx, ty = stack(samples[-held_out:])
    with torch.no_grad():
        predicted = net(tx, everything)
    net.held_out_correlation = float(torch.corrcoef(torch.stack([predicted.flatten(), ty.flatten()]))[0, 1])
    log(f"held-out windows: Pearson correlation with KVzip's log scores {net.held_out_correlation:.3f}")
    return net


def train(data: str | Path, model_name: str = "smollm2-135m", out: str | Path | None = None, windows_count: int = 48,
          length: int = 2048, hidden: int = 32, epochs: int = 40, seed: int = 0, log=print) -> Path:
    """Label ``windows_count`` windows of ``length`` tokens of the public texts under ``data`` (see the module
    docstring; ``../shared/data`` here) with ``model_name``'s KVzip scores, fit a surrogate and save it to ``out``
    (default: the shipped one)."""
    from tokenomy._progress import progress_bar
    from tokenomy.models.loader import load

    check_int("windows", windows_count, minimum=2)
    check_int("length", length, minimum=16)
    check_int("hidden", hidden, minimum=0)
    check_int("epochs", epochs, minimum=1)
    texts = read_texts(data)
    started = time.perf_counter()
    model, tokenizer = load(model_name)
    samples = [label(model, ids) for ids in progress_bar(windows(texts, tokenizer, windows_count, length, seed),
                                                         desc="labelling with KVzip", unit="window")]
    net = fit(samples, hidden, epochs, seed, model_name, log=log)
    out = Path(out) if out is not None else SHIPPED
    save(net, out, {"windows": str(windows_count), "length": str(length), "epochs": str(epochs), "seed": str(seed),
                    "held_out_correlation": f"{net.held_out_correlation:.3f}",
                    "minutes": f"{(time.perf_counter() - started) / 60:.1f}"})
    load_surrogate.cache_clear()
    return out
