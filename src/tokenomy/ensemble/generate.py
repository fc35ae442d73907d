"""The decoding loop every alignment shares, and the public `generate` / `Ensemble`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from tokenomy._validation import TokenomyError, check_choice, check_int
from tokenomy.ensemble.align import ALIGNMENTS, ByteAlignment, TokenAlignment, UnionAlignment
from tokenomy.ensemble.bytelevel import MAX_HYPOTHESES, PRUNE
from tokenomy.ensemble.combine import STRATEGIES, Combiner, Core, Strategy
from tokenomy.ensemble.vocab import Vocabulary


@dataclass
class Output:
    """One generated continuation."""

    text: str
    data: bytes
    steps: int  # decisions taken (bytes for "bytes", tokens/strings otherwise)
    core_changed: int  # steps at which CoRE picked another symbol than the bare strategy
    seconds: float  # decoding, after the prompt
    prompt_seconds: float  # conditioning on the prompt (a remembered prefill is only copied)
    forwarded_tokens: int  # tokens run through all models while decoding (all live tokenizations)
    prompt_tokens: int  # tokens the prompt took, over all models
    stopped: str  # "end", "stop" or "length"
    pruned_mass: float = 0.0  # byte level: largest probability share dropped at one byte
    capped_steps: int = 0  # byte level: bytes at which the hypothesis cap dropped something
    respelled: int = 0  # byte level: bytes at which a model re-spelled its best tokenization (see ByteLevelLM)


def decode(alignment, combiner: Combiner, prompt: bytes, *, max_new_bytes: int, stop: Sequence[bytes] = (),
           temperature: float = 0.0, generator: torch.Generator | None = None,
           until: Callable[[bytes], bool] | None = None, progress: Callable[[int], None] | None = None) -> Output:
    """Greedy (temperature 0) or sampled decoding until END, a stop string, ``until(output)`` or
    ``max_new_bytes``; ``progress(n)`` hears of every ``n`` bytes added."""
    with alignment.parallel.threads():
        return _decode(alignment, combiner, prompt, max_new_bytes, stop, temperature, generator, until, progress)


def _decode(alignment, combiner, prompt, max_new_bytes, stop, temperature, generator, until, progress) -> Output:
    began, forwarded = time.perf_counter(), alignment.forwarded
    alignment.start(prompt)
    prompted, prompt_tokens = time.perf_counter(), alignment.forwarded - forwarded
    out, steps, changed, stopped = b"", 0, 0, "length"
    while len(out) < max_new_bytes:
        probs, differs = combiner(alignment.distributions())
        if temperature > 0:
            scaled = probs ** (1.0 / temperature)
            symbol = int(torch.multinomial(scaled / scaled.sum(), 1, generator=generator))
        else:
            symbol = int(torch.argmax(probs))
        steps += 1
        changed += differs
        if symbol == alignment.end:
            stopped = "end"
            break
        piece = alignment.spell(symbol)
        out += piece
        if progress is not None:
            progress(len(piece))
        fresh = len(out) - len(piece)  # earlier bytes held no stop string: search only what overlaps the piece
        hit = [i for s in stop if (i := out.find(s, max(0, fresh - len(s) + 1))) >= 0]
        if hit:
            out, stopped = out[: min(hit)], "stop"
            break
        if until is not None and until(out):
            stopped = "stop"
            break
        if len(out) >= max_new_bytes:
            break
        alignment.advance(symbol)
    if len(out) > max_new_bytes:  # a token may reach past the limit: cut there (reported as "length")
        out = out[:max_new_bytes]
    stats = getattr(alignment, "stats", None) or []
    return Output(
        text=out.decode("utf-8", errors="replace"), data=out, steps=steps, core_changed=changed,
        seconds=time.perf_counter() - prompted, prompt_seconds=prompted - began,
        forwarded_tokens=alignment.forwarded - forwarded - prompt_tokens, prompt_tokens=prompt_tokens, stopped=stopped,
        pruned_mass=max((s.pruned_mass for s in stats), default=0.0),
        capped_steps=sum(s.capped_steps for s in stats), respelled=sum(s.respelled for s in stats),
    )


class Ensemble:
    """Two or more causal LMs, any tokenizers, decoding as one (with CoRE, the first is the main model).

        ens = Ensemble(["gemma3-270m", "smollm2-135m"], alignment="bytes", strategy="average", core=True)
        ens.generate(["The capital of France is"], max_new_bytes=32, stop=["\\n"])
    """

    def __init__(self, models: Sequence, *, alignment: str = "bytes", strategy: str = "average",
                 weights: Sequence[float] | None = None, core: bool = False, core_beta: float | None = None,
                 max_hypotheses: int | None = MAX_HYPOTHESES, prune: float = PRUNE, backoff: int = 1):
        check_choice("alignment", alignment, ALIGNMENTS)
        check_choice("strategy", strategy, STRATEGIES)
        if isinstance(models, (str, bytes)) or len(models) < 2:
            raise TokenomyError("an ensemble needs at least two models (give a list of two or more)")
        if core_beta is not None and not core:
            raise TokenomyError("core_beta (--core-beta) sets CoRE's filter: turn CoRE on too (core=True, --core)")
        consistency = (Core() if core_beta is None else Core(core_beta)) if core else None
        combination = Strategy(strategy, tuple(weights) if weights is not None else None)
        combination.model_weights(len(models))  # checks the number of weights before any model loads
        self.members = [member(m) for m in models]
        self.combiner = Combiner(combination, consistency)
        if alignment == "bytes":
            self.alignment = ByteAlignment(self.members, max_hypotheses=max_hypotheses, prune=prune,
                                           backoff=backoff)
        else:
            self.alignment = UnionAlignment(self.members)

    def generate(self, prompts: str | Sequence[str], *, max_new_bytes: int = 64, stop: Sequence[str] = (),
                 temperature: float = 0.0, seed: int = 0, progress=None) -> list[Output]:
        """Continue each prompt (one after another); ``stop`` strings end a continuation (excluded);
        ``progress(n)`` hears of every ``n`` bytes generated."""
        prompts, stops = check_generation(prompts, max_new_bytes, stop, temperature)
        generator = torch.Generator().manual_seed(seed)
        return [decode(self.alignment, self.combiner, prompt.encode("utf-8"), max_new_bytes=max_new_bytes,
                       stop=stops, temperature=temperature, generator=generator, progress=progress)
                for prompt in prompts]


def check_generation(prompts: str | Sequence[str], max_new_bytes: int = 64, stop: Sequence[str] = (),
                     temperature: float = 0.0) -> tuple[list[str], list[bytes]]:
    """Validate what `Ensemble.generate` is asked before any model loads: the prompts as a list and the stop
    strings as bytes."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise TokenomyError("give at least one prompt")
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt:
            raise TokenomyError(f"prompts must be non-empty strings, got {prompt!r}")
    check_int("max_new_bytes", max_new_bytes, minimum=1)
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise TokenomyError(f"temperature must be >= 0, got {temperature!r}")
    stops = [s.encode("utf-8") for s in stop]
    if any(not s for s in stops):
        raise TokenomyError("stop strings must be non-empty")
    return prompts, stops


def member(spec):
    """(model, tokenizer, vocabulary) from a name/path or a (model, tokenizer) pair."""
    if isinstance(spec, str):
        from tokenomy.models.loader import load

        model, tokenizer = load(spec)
    else:
        model, tokenizer = spec
    return model, tokenizer, Vocabulary(tokenizer, model.config.vocab_size)


def single(model, tokenizer, *, byte_level: bool = False, **byte_options):
    """One model as a decoder for `decode` (its own tokens, or exact bytes): the ensembles' reference."""
    member = (model, tokenizer, Vocabulary(tokenizer, model.config.vocab_size))
    return ByteAlignment([member], **byte_options) if byte_level else TokenAlignment(member)


def generate(models: Sequence, prompts: str | Sequence[str], **options) -> list[Output]:
    """One-call form: ``generate(["gemma3-270m", "smollm2-135m"], "Once upon", strategy="average")``."""
    decode_keys = {"max_new_bytes", "stop", "temperature", "seed", "progress"}
    check_generation(prompts, **{k: v for k, v in options.items() if k in decode_keys - {"seed", "progress"}})
    ensemble = Ensemble(models, **{k: v for k, v in options.items() if k not in decode_keys})
    return ensemble.generate(prompts, **{k: v for k, v in options.items() if k in decode_keys})
