"""tokenomy: make transformer models spend fewer tokens, without retraining.

    import tokenomy
    model, tok = tokenomy.load("smollm2-135m")
    with tokenomy.apply(model, "snapkv", keep=0.5):
        out = model.generate(**inputs, max_new_tokens=32)
    tokenomy.methods()
"""

from __future__ import annotations

from tokenomy._validation import TokenomyError
from tokenomy.models.loader import load as _load_lm
from tokenomy.catalog import get, methods
from tokenomy.registry import MethodInfo

__version__ = "0.1.0"


REFERENCE_VLM = "reference-vlm"


def load(name_or_path: str, *, dtype=None, device: str = "cpu"):
    """Load ``(model, tokenizer)`` from a packaged name (offline: ``smollm2-135m``, ``gemma3-270m``), a local
    folder or a Hugging Face hub id; ``reference-vlm`` (``-v1``, ``-v2``, ``-v2-anyres``) gives ``(vlm,
    processor)``, a LLaVA tokenomy trains to measure visual-token methods (`tokenomy.models.reference_vlm`)."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if name_or_path.startswith(REFERENCE_VLM):
        from tokenomy.models.reference_vlm import load_reference_vlm

        return load_reference_vlm(name_or_path, dtype=dtype)
    return _load_lm(name_or_path, dtype=dtype, device=device)


def apply(model, method: str | list[str], **options):
    """Apply the registered ``method`` to ``model`` inside a ``with`` block; options go to the method
    (e.g. ``keep=0.5``). Returns the session, whose ``stats`` report what was kept.

    A list stacks methods of different places — before a VLM's language model, inside it, the KV cache —
    in one block: ``tokenomy.apply(vlm, ["divprune", "fastv:K=2", "snapkv"], keep=[0.25, 0.5, 0.5])``; each
    entry may carry options (``"name:option=value"``), ``keep`` is one fraction per entry (or one for all).
    """
    if isinstance(method, str):
        return get(method).create(**options).apply(model)
    from tokenomy.catalog import create_spec
    from tokenomy.sites.stack import stack

    keep = options.pop("keep", None)
    if options:
        raise TokenomyError(f"options of stacked methods go in their specs (\"name:option=value\"), got "
                            f"{', '.join(options)}")
    specs = list(method)
    keeps = keep if isinstance(keep, (list, tuple)) else [keep] * len(specs)
    if not specs or len(keeps) != len(specs) or len(set(specs)) != len(specs):
        raise TokenomyError(f"keep must be one fraction per stacked method ({len(specs)}), and each method named "
                            f"once; got {specs} with keep={keep!r}")
    return stack(model, {spec: create_spec(spec) if k is None else create_spec(spec, keep=k)
                         for spec, k in zip(specs, keeps)})


def compress_prompt(context, method: str = "llmlingua", rate: float = 0.33, question: str = "", *,
                    model="smollm2-135m", target=None, force_tokens=(), **options):
    """Compress a prompt's ``context`` (text, or a list of documents) with the registered prompt ``method`` so
    the whole prompt (context, then ``question``, never compressed) keeps ``rate`` of its tokens.

    ``model`` scores the tokens: a packaged name or path (loaded once per process) or a ``(model, tokenizer)``
    pair; ``target`` (a tokenizer, or a name/pair whose tokenizer is used) counts the tokens the reading model
    pays (default: the compressor's). ``force_tokens``: strings whose words are always kept. Returns a
    `tokenomy.sites.prompt.CompressedPrompt` (``compressed_prompt``, ``origin_tokens``,
    ``compressed_tokens``, ``ratio``, ``rate``, ``kept``); ``restore_prompt`` inverts ``method="lossless"``."""
    info = get(method, "prompt")
    if not isinstance(question, str) or isinstance(force_tokens, str):
        raise TokenomyError("question must be a string and force_tokens a list of strings")
    compressor = info.create(rate=rate, **options) if "rate" in info.options() else info.create(**options)
    texts = [context] if isinstance(context, str) else list(context) if isinstance(context, (list, tuple)) else None
    if texts is None or not all(isinstance(t, str) for t in texts):
        raise TokenomyError(f"context must be a string or a list of strings, got {type(context).__name__}")
    if not any(t.strip() for t in texts):
        raise TokenomyError("the prompt is empty: nothing to compress")
    scorer, tokenizer = _prompt_model(model)
    target_tokenizer = target if target is None or not isinstance(target, (str, tuple)) else _prompt_model(target)[1]
    return compressor.compress(context, question, model=scorer, tokenizer=tokenizer, target_tokenizer=target_tokenizer,
                               force_tokens=tuple(force_tokens), name=method)


def restore_prompt(text: str) -> str:
    """The original of a ``method="lossless"`` compressed context (exact)."""
    from tokenomy.sites.prompt import restore

    return restore(text)


_LOADED: dict = {}


def _prompt_model(model):
    if isinstance(model, tuple) and len(model) == 2:
        return model
    if not isinstance(model, str):
        raise TokenomyError(f"model must be a packaged name, a path or a (model, tokenizer) pair, got {model!r}")
    if model not in _LOADED:
        _LOADED[model] = load(model)
    return _LOADED[model]


__all__ = ["MethodInfo", "TokenomyError", "apply", "compress_prompt", "get", "load", "methods", "restore_prompt",
           "__version__"]
