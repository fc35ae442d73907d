"""`tokenomy ensemble` and `tokenomy bench ensemble`: models with different tokenizers decoding as one."""

from __future__ import annotations

import argparse
import sys

from tokenomy._validation import TokenomyError
from tokenomy.cli._common import csv_list, json_option, read_input, sample_sweep, sweep_options


def cmd_ensemble(args) -> int:
    from tokenomy._progress import progress_bar

    from tokenomy.ensemble import Ensemble
    from tokenomy.ensemble.generate import check_generation

    prompts = list(args.prompt or [])
    if args.prompts_file:
        text = read_input(args.prompts_file).decode("utf-8", errors="strict")
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TokenomyError("give a prompt (or --prompts-file FILE, one prompt per line)")
    if len(args.models) < 2:
        raise TokenomyError("an ensemble needs at least two models: --models a,b[,c...]")
    check_generation(prompts, args.max_new_bytes, args.stop or [], args.temperature)  # before any model loads
    ensemble = Ensemble(args.models, alignment=args.alignment,  # checks every option, then loads the models
                        strategy=args.strategy, weights=args.weights, core=args.core, core_beta=args.core_beta,
                        max_hypotheses=args.max_hypotheses or None, prune=args.prune, backoff=args.backoff)
    with progress_bar(total=len(prompts) * args.max_new_bytes, desc="ensemble", unit="B", leave=False) as bar:
        outputs = ensemble.generate(prompts, max_new_bytes=args.max_new_bytes, stop=args.stop or [],
                                    temperature=args.temperature, seed=args.seed, progress=bar.update)
    for prompt, out in zip(prompts, outputs):
        if len(prompts) > 1:
            print(f"### {prompt}")
        print(prompt + out.text if args.echo else out.text)
        note = f"[{out.steps} steps, {len(out.data) / max(out.seconds, 1e-9):.1f} bytes/s, stopped: {out.stopped}"
        if args.core:
            note += f", CoRE changed {out.core_changed}"
        if out.capped_steps:
            note += f", hypothesis cap reached at {out.capped_steps} bytes (dropped <= {out.pruned_mass:.1e})"
        if out.respelled:
            note += f", {out.respelled} byte(s) re-spelled after pruning"
        print(note + "]", file=sys.stderr)
    return 0


def cmd_bench_ensemble(args) -> int:
    from tokenomy._progress import progress_bar

    from tokenomy.bench import ensemble as bench
    from tokenomy.bench import sweep
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.bench.sweep import Cell
    from tokenomy.ensemble import ALIGNMENTS, STRATEGIES
    from tokenomy._validation import check_choice, check_int

    check_int("--limit", args.limit, minimum=1)
    for name in args.alignments:
        check_choice("alignment", name, ALIGNMENTS)
    for name in args.strategies:
        check_choice("strategy", name, STRATEGIES)
    if "weighted" in args.strategies and not args.weights:
        raise TokenomyError("strategy weighted needs --weights (one number per model)")
    if args.weights and len(args.weights) != len(args.models):
        raise TokenomyError(f"--weights gives {len(args.weights)} numbers for {len(args.models)} models")
    if len(args.models) < 2:
        raise TokenomyError("an ensemble needs at least two models: --models a,b[,c...]")
    if args.data:
        items = bench.read_jsonl(args.data, args.limit, args.seed)
    else:
        loaders = {"alice": bench.alice, "lambada": bench.lambada, "squad": bench.squad}
        items = []
        for task in args.tasks:
            check_choice("task", task, bench.TASKS)
            items += loaders[task](args.limit, args.seed)
    core = {"both": [False, True], "on": [True], "off": [False]}[args.core]
    options = {"alignments": args.alignments, "strategies": args.strategies, "weights": args.weights, "core": core,
               "byte_options": {"max_hypotheses": args.max_hypotheses or None, "prune": args.prune,
                                "backoff": args.backoff}}
    if args.ray:
        sweep.connect(args.ray)  # an unreachable cluster or a missing ray fails before the models load
    count = 2 * len(args.models) + len(args.alignments) * len(args.strategies) * len(core)  # `bench.systems`
    cells = [Cell(f"sample-{i}", (args.models, options, i, item), f"{args.models}|{options!r}|{i}|{item!r}")
             for i, item in enumerate(items)]
    with progress_bar(total=len(items) * count, desc="bench ensemble", unit="run") as bar:
        def here(payload) -> list[dict]:  # in this process, progress system by system
            return bench.run_cell(payload, progress=bar.update)

        per_cell, folder = sample_sweep(args, "ensemble", cells, here, bench.run_cell, bar)
    rows = [row for cell in per_cell for row in cell]
    results = bench.summarize(rows, args.models)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {**result_header("ensemble", args), "results": results, "samples": rows}
        print(f"wrote {write_json(args.json, payload)}")
    sweep.clear(folder, cells)  # complete and written: nothing left to resume
    return 0


def _byte_level_options(p: argparse.ArgumentParser) -> None:
    """The byte-level alignment's cost bound (defaults: the library's, `tokenomy.ensemble.bytelevel`; a test
    keeps them equal without importing it here, which would load transformers for ``--help``)."""
    p.add_argument("--max-hypotheses", type=int, default=4,
                   help="byte level: cap on tokenizations kept per byte, i.e. on per-step cost (0: no cap)")
    p.add_argument("--prune", type=float, default=3e-3,
                   help="byte level: drop tokenizations below this share of the best (0: none)")


def add_commands(sub, bench) -> None:
    """Register 'tokenomy ensemble', 'tokenomy bench ensemble'."""
    p = sub.add_parser("ensemble", help="generate with two or more models that have different tokenizers")
    p.add_argument("prompt", nargs="*", help="prompt(s); each is continued separately")
    p.add_argument("--prompts-file", help="one prompt per line (- for stdin)")
    p.add_argument("--models", type=csv_list(str), default=["gemma3-270m", "smollm2-135m"],
                   help="comma list; the first is CoRE's main model (default: the larger first)")
    p.add_argument("--alignment", default="bytes", help="bytes (exact next-byte probabilities) or union")
    p.add_argument("--strategy", default="average", help="average, weighted, max-confidence")
    p.add_argument("--weights", type=csv_list(float), help="per-model weights (strategy weighted)")
    p.add_argument("--core", action="store_true", help="wrap the strategy with CoRE consistency weighting")
    p.add_argument("--core-beta", type=float,
                   help="sharpness of CoRE's token-level low-pass filter (default 2, the authors' code)")
    p.add_argument("--max-new-bytes", type=int, default=128)
    p.add_argument("--stop", action="append", help="stop string (repeatable); not included in the output")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--seed", type=int, default=0)
    _byte_level_options(p)
    p.add_argument("--backoff", type=int, default=1,
                   help="byte level: last prompt tokens re-read as bytes, so a prompt may end mid-token")
    p.add_argument("--echo", action="store_true", help="print the prompt before its continuation")
    p.set_defaults(func=cmd_ensemble)

    p = bench.add_parser("ensemble", help="single models vs byte-level / union ensembles, with and without CoRE")
    p.add_argument("--models", type=csv_list(str), default=["gemma3-270m", "smollm2-135m"],
                   help="comma list; the first is CoRE's main model (default: the larger first)")
    p.add_argument("--tasks", type=csv_list(str), default=["alice"],
                   help="alice (packaged), lambada, squad (read from ../shared/data)")
    p.add_argument("--data", help="JSONL with prompt and answers (list); replaces --tasks")
    p.add_argument("--alignments", type=csv_list(str), default=["bytes", "union"])
    p.add_argument("--strategies", type=csv_list(str), default=["average", "max-confidence"],
                   help="average, weighted (needs --weights), max-confidence")
    p.add_argument("--weights", type=csv_list(float), help="per-model weights for the weighted strategy")
    p.add_argument("--core", choices=["both", "on", "off"], default="both", help="rows without and/or with CoRE")
    p.add_argument("--limit", type=int, default=10, help="samples per task")
    p.add_argument("--seed", type=int, default=0)
    _byte_level_options(p)
    p.add_argument("--backoff", type=int, default=0,
                   help="byte level: prompt tokens re-read as bytes (0: every row conditions on the same canonical "
                        "prompt tokens; the tasks' prompts end at word boundaries)")
    json_option(p, "write per-sample rows and aggregates to this JSON file")
    sweep_options(p)
    p.set_defaults(func=cmd_bench_ensemble)
