"""`tokenomy bench kv` (KV-cache methods on long-context tasks) and `bench kv-decode` (what they save while
decoding)."""

from __future__ import annotations

import time

from tokenomy.cli._common import csv_list, json_option, sample_sweep, sweep_options


def cmd_bench_kv(args) -> int:
    import dataclasses
    import os

    from tokenomy import catalog, load
    from tokenomy._progress import progress_bar
    from tokenomy._validation import check_choice, check_int
    from tokenomy.bench import sweep
    from tokenomy.bench.kv import KVBench, KVBenchConfig, Row, aggregate, by_length, columns, notes, run_cell
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.bench.sweep import Cell
    from tokenomy.bench.tasks import REPLY_TOKENS, TASKS, missing_prefix_note, read_jsonl
    from tokenomy.sites.kv_cache import SITE

    if args.methods == ["all"]:
        method_names = [m.name for m in catalog.methods(SITE)]
    else:
        method_names = args.methods
    if args.max_new_tokens is not None:
        check_int("--max-new-tokens", args.max_new_tokens, minimum=1)
    reply = args.max_new_tokens or REPLY_TOKENS.get("" if args.data else args.task, 16)
    config = KVBenchConfig(method_names, args.keep, args.setting, reply, args.compare or [])
    check_int("--limit", args.limit, minimum=1)
    check_int("--continuation", args.continuation, minimum=2)
    for n in args.length:
        check_int("--length", n, minimum=1)
    if args.data is None:
        check_choice("task", args.task, TASKS)
    if args.data is not None:
        samples = read_jsonl(args.data, args.template)[: args.limit]
        task = f"data:{args.data}"
    if args.ray:
        sweep.connect(args.ray)  # an unreachable cluster or a missing ray fails before the model loads
    model, tokenizer = load(args.model)
    if args.data is None:
        extra = {"continuation_tokens": args.continuation} if args.task == "ppl" else {}
        samples = TASKS[args.task](tokenizer, args.length, args.limit, args.seed, **extra)
        task = args.task
    bench = KVBench(model, tokenizer, config)
    bench.check(samples)  # too long for the model or a method's replay: refused before any prefill
    started = time.perf_counter()
    lengths = "" if args.data is not None else f", context {'/'.join(map(str, args.length))} tokens"
    described = f"task {task}{lengths}, {len(samples)} sample{'s' if len(samples) != 1 else ''}"
    cells = [Cell(f"sample-{index}", (args.model, config, index, sample), f"{args.model}|{config!r}|{sample!r}")
             for index, sample in enumerate(samples)]
    with progress_bar(total=sum(bench.cells(s) for s in samples), desc=f"bench kv {task}", unit="run") as bar:
        def advance(row) -> None:
            bar.set_postfix_str(f"sample {row.sample + 1}/{len(samples)}: {row.label} keep {row.keep:g}")
            bar.update(1)

        def here(payload) -> list[dict]:  # in this process: the loaded model, progress run by run
            return [dataclasses.asdict(r) for r in bench.run_sample(payload[2], payload[3], progress=advance)]

        records, folder = sample_sweep(args, "kv", cells, here, run_cell, bar)
    rows = [Row(**record) for cell in records for record in cell]
    summary = aggregate(rows)
    print(described)
    print(table(summary, columns(samples[0].continuation is not None)))
    for line in notes(summary) + ([missing_prefix_note(samples)] if args.data else []):
        if line:
            print(line)
    for entry in summary:
        if entry["errors"]:
            failed = next(r.error for r in rows if r.label == entry["method"] and r.keep == entry["keep"]
                          and r.setting == entry["setting"] and r.error)
            print(f"{entry['method']} ({entry['setting']}, keep {entry['keep']}) failed on {entry['errors']} "
                  f"sample(s): {failed}")
    print(f"{described}, {time.perf_counter() - started:.0f} s; model {os.path.basename(args.model)}")
    if args.json:
        payload = {
            **result_header("kv", args),
            "task": task,
            "model": args.model,
            "aggregate": summary,
            "aggregate_by_length": by_length(rows),
            "rows": rows,
        }
        print(f"wrote {write_json(args.json, payload)}")
    sweep.clear(folder, cells)  # complete and written: nothing left to resume
    return 0


def cmd_bench_kv_decode(args) -> int:
    from tokenomy import load
    from tokenomy._progress import progress_bar
    from tokenomy._validation import check_fraction, check_int
    from tokenomy.bench import kv_decode as bench
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.catalog import create_spec

    keep = check_fraction("keep", args.keep)
    check_int("--steps", args.steps, minimum=1)
    check_int("--repeats", args.repeats, minimum=1)
    for n in args.length:
        check_int("--length", n, minimum=16)
    for spec in args.methods:
        create_spec(spec, keep=keep)  # a bad method fails before the model loads
    model, tokenizer = load(args.model)
    prefills = 1 + len(args.methods)  # and one more row decoded: the full cache held in place
    with progress_bar(total=len(args.length) * (prefills + (prefills + 1) * args.repeats), desc="bench kv-decode",
                      unit="run") as bar:
        records = bench.run(model, tokenizer, args.length, args.methods, keep, args.steps, args.repeats, args.seed,
                            progress=bar.update)
    results = bench.summarize(records)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {**result_header("kv-decode", args), "model": args.model, "results": results, "timings": records}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def cmd_train_kv(args) -> int:
    from tokenomy._validation import TokenomyError
    from tokenomy.bench.tasks import shared_data_dir

    data = args.data or shared_data_dir()
    if data is None:
        raise TokenomyError("the training texts live in ../shared/data; point --data at a copy of that folder")
    if args.method == "kvzap":
        from tokenomy.models.kv_surrogate import train

        out = train(data, args.model, args.output, windows_count=args.samples, length=args.length,
                    hidden=args.hidden, epochs=args.epochs, seed=args.seed)
    else:
        from tokenomy.models.kv_heads import train

        out = train(data, args.model, args.output, samples=args.samples, length=args.length, seed=args.seed)
    print(f"wrote {out}")
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy bench kv', 'tokenomy bench kv-decode' and 'tokenomy train-kv'."""
    p = bench.add_parser("kv", help="KV-cache compression on long-context tasks")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--methods", type=csv_list(str), default=["snapkv", "kvzip", "tova", "streamingllm"],
                   help="comma list of KV methods, or all (the full sweep); options as name:option=value "
                        "(keydiff-pool:recent=32); default: four that span the families, so the first run takes minutes")
    p.add_argument("--keep", type=csv_list(float), default=[0.5, 0.25], help="comma list of kept fractions")
    p.add_argument("--task", default="niah", help="niah, multikey, multivalue, multiquery, cwe, vartrack, squad (reads "
                   "../shared/data) or ppl (ignored with --data)")
    p.add_argument("--data", help="JSONL with context, question, answers (list) [, answer_prefix, template]")
    p.add_argument("--template", help="how a --data row's question follows its context (default: on a new line, "
                   "\"\\n{question}\"); a row's own template field wins")
    p.add_argument("--length", type=csv_list(int), default=[1000], help="comma list of context lengths (tokens)")
    p.add_argument("--limit", type=int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", type=csv_list(str), default=["aware"],
                   help="aware (question inside the compressed prompt), agnostic (question after)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="reply tokens (default: 64 for multivalue, multiquery and cwe, whose replies list several "
                   "items; 16)")
    p.add_argument("--continuation", type=int, default=64, help="ppl: tokens of continuation scored after the context")
    p.add_argument("--compare", type=csv_list(str), help="peers to run side by side: kvpress (its presses for the "
                   "same methods), quanto (transformers' QuantizedCache at 4 and 2 bits)")
    sweep_options(p)
    json_option(p, "write per-sample rows and aggregates to this JSON file")
    p.set_defaults(func=cmd_bench_kv)

    p = bench.add_parser("kv-decode", help="bytes resident and decode tokens/s of compressed KV caches")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--methods", type=csv_list(str), default=["snapkv", "adakv", "kvzap"],
                   help="comma list of KV methods (options as name:option=value); the full cache is always a row")
    p.add_argument("--keep", type=float, default=0.25, help="kept fraction")
    p.add_argument("--length", type=csv_list(int), default=[2048, 4096, 8192],
                   help="comma list of context lengths (tokens of the packaged Alice)")
    p.add_argument("--steps", type=int, default=32, help="tokens decoded per repeat (each one timed)")
    p.add_argument("--repeats", type=int, default=3, help="decoding rounds, rows alternating (medians reported)")
    p.add_argument("--seed", type=int, default=0, help="where in the book the context starts")
    json_option(p, "write the rows and every step's time here")
    p.set_defaults(func=cmd_bench_kv_decode)

    p = sub.add_parser("train-kv", help="fit a KV method's learned part for a model (CPU, minutes)")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, what, samples, length in (
            ("kvzap", "the surrogate of KVzip's scores, on windows of public text KVzip labels", 48, 2048),
            ("duoattention", "the head profile, on pass-key haystacks of public text", 24, 1024)):
        m = methods.add_parser(name, help=what)
        m.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
        m.add_argument("-o", "--output", default=None, help="where to write it (default: the file shipped with "
                       "tokenomy, which is SmolLM2-135M's)")
        m.add_argument("--samples", type=int, default=samples, help="texts it is fitted on")
        m.add_argument("--length", type=int, default=length, help="tokens per text")
        m.add_argument("--seed", type=int, default=0)
        m.add_argument("--data", default=None, help="folder holding the public texts (default: ../shared/data)")
        if name == "kvzap":
            m.add_argument("--hidden", type=int, default=32, help="hidden units per layer (0: a linear map)")
            m.add_argument("--epochs", type=int, default=40)
        m.set_defaults(func=cmd_train_kv)
