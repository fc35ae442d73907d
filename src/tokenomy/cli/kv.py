"""`tokenomy bench kv`: KV-cache methods on long-context tasks."""

from __future__ import annotations

import time

from tokenomy.cli._common import csv_list, json_option


def cmd_bench_kv(args) -> int:
    import os

    from tokenomy._progress import progress_bar

    from tokenomy import catalog, load
    from tokenomy.registry import method_spec
    from tokenomy.bench.kv import KVBench, KVBenchConfig, aggregate, by_length, columns, notes
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.bench.tasks import TASKS, read_jsonl
    from tokenomy._validation import check_choice, check_int
    from tokenomy.sites.kv_cache import SITE

    if args.methods == ["all"]:
        method_names = [m.name for m in catalog.methods(SITE)]
    else:
        method_names = args.methods
    for spec in method_names:
        catalog.get(method_spec(spec)[0], SITE)
    config = KVBenchConfig(method_names, args.keep, args.setting, args.max_new_tokens, args.compare or [])
    check_int("--limit", args.limit, minimum=1)
    check_int("--continuation", args.continuation, minimum=2)
    for n in args.length:
        check_int("--length", n, minimum=1)
    if args.data is None:
        check_choice("task", args.task, TASKS)
    model, tokenizer = load(args.model)
    if args.data is not None:
        samples = read_jsonl(args.data)[: args.limit]
        task = f"data:{args.data}"
    else:
        extra = {"continuation_tokens": args.continuation} if args.task == "ppl" else {}
        samples = TASKS[args.task](tokenizer, args.length, args.limit, args.seed, **extra)
        task = args.task
    bench = KVBench(model, tokenizer, config)
    rows = []
    started = time.perf_counter()
    lengths = "" if args.data is not None else f", context {'/'.join(map(str, args.length))} tokens"
    described = f"task {task}{lengths}, {len(samples)} sample{'s' if len(samples) != 1 else ''}"
    with progress_bar(total=sum(bench.cells(s) for s in samples), desc=f"bench kv {task}", unit="run") as bar:
        def advance(row) -> None:
            bar.set_postfix_str(f"sample {row.sample + 1}/{len(samples)}: {row.label} keep {row.keep:g}")
            bar.update(1)

        for index, sample in enumerate(samples):
            rows.extend(bench.run_sample(index, sample, progress=advance))
    summary = aggregate(rows)
    print(described)
    print(table(summary, columns(samples[0].continuation is not None)))
    for line in notes(summary):
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
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy bench kv'."""
    p = bench.add_parser("kv", help="KV-cache compression on long-context tasks")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--methods", type=csv_list(str), default=["snapkv", "kvzip", "tova", "streamingllm"],
                   help="comma list of KV methods, or all (the full sweep); options as name:option=value "
                        "(keydiff-pool:recent=32); default: four that span the families, so the first run takes minutes")
    p.add_argument("--keep", type=csv_list(float), default=[0.5, 0.25], help="comma list of kept fractions")
    p.add_argument("--task", default="niah", help="niah, multikey, vartrack or ppl (ignored with --data)")
    p.add_argument("--data", help="JSONL with context, question, answers (list) [, answer_prefix]")
    p.add_argument("--length", type=csv_list(int), default=[1000], help="comma list of context lengths (tokens)")
    p.add_argument("--limit", type=int, default=4, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", type=csv_list(str), default=["aware"],
                   help="aware (question inside the compressed prompt), agnostic (question after)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--continuation", type=int, default=64, help="ppl: tokens of continuation scored after the context")
    p.add_argument("--compare", type=csv_list(str), help="peer libraries to run side by side: kvpress")
    json_option(p, "write per-sample rows and aggregates to this JSON file")
    p.set_defaults(func=cmd_bench_kv)
