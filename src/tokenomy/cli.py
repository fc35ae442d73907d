"""The `tokenomy` command line: `tokenomy methods`, `tokenomy bench kv ...`."""

from __future__ import annotations

import argparse
import sys
import time

from tokenomy._validation import TokenomyError


def _csv(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [kind(t) for t in items]
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from err

    return parse


def cmd_methods(args) -> int:
    from tokenomy import methods
    from tokenomy.bench.report import table

    rows = [
        {"name": m.name, "site": m.site, "query": "aware" if m.query_aware else "agnostic",
         "summary": m.summary, "paper": m.paper}
        for m in methods(args.site)
    ]
    print(table(rows, [("name", "method", ""), ("site", "site", ""), ("query", "query", ""),
                       ("summary", "what it keeps", "")]))
    if args.papers:
        print()
        for row in rows:
            print(f"{row['name']}: {row['paper']}")
    return 0


def cmd_bench_kv(args) -> int:
    import os

    from tqdm.auto import tqdm

    from tokenomy import load, registry
    from tokenomy.bench.kv import KVBench, KVBenchConfig, aggregate, by_length
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.bench.tasks import TASKS, read_jsonl
    from tokenomy._validation import check_choice, check_int
    from tokenomy.sites.kv_cache import SITE

    if args.methods == ["all"]:
        method_names = [m.name for m in registry.methods(SITE)]
    else:
        method_names = args.methods
    config = KVBenchConfig(method_names, args.keep, args.setting, args.max_new_tokens, args.compare or [])
    check_int("--limit", args.limit, minimum=1)
    for n in args.length:
        check_int("--length", n, minimum=1)
    if args.data is None:
        check_choice("task", args.task, TASKS)
    model, tokenizer = load(args.model)
    if args.data is not None:
        samples = read_jsonl(args.data)[: args.limit]
        task = f"data:{args.data}"
    else:
        samples = TASKS[args.task](tokenizer, args.length, args.limit, args.seed)
        task = args.task
    bench = KVBench(model, tokenizer, config)
    rows = []
    started = time.perf_counter()
    for index, sample in enumerate(tqdm(samples, desc=f"bench kv {task}", unit="sample")):
        rows.extend(bench.run_sample(index, sample))
    summary = aggregate(rows)
    quality = ("accuracy", "acc", ".3f") if samples[0].continuation is None else ("perplexity", "ppl", ".3f")
    relative = (
        ("relative_accuracy", "rel", ".3f") if samples[0].continuation is None else ("kl", "KL", ".4f")
    )
    print(table(summary, [
        ("setting", "setting", ""), ("method", "method", ""), ("keep", "keep", ".2f"), quality, relative,
        ("kept_fraction", "kept", ".3f"), ("prefill_seconds_median", "prefill s", ".3f"),
        ("scoring_overhead_median", "overhead", ".1%"),
        ("decode_tokens_per_second_median", "decode tok/s", ".1f"),
    ]))
    for entry in summary:
        if entry["errors"]:
            failed = next(r.error for r in rows if r.label == entry["method"] and r.keep == entry["keep"]
                          and r.setting == entry["setting"] and r.error)
            print(f"{entry['method']} ({entry['setting']}, keep {entry['keep']}) failed on {entry['errors']} "
                  f"sample(s): {failed}")
    print(f"{len(samples)} samples, {time.perf_counter() - started:.0f} s; {os.path.basename(args.model)}")
    if args.json:
        payload = {
            "command": command_line(),
            "task": task,
            "model": args.model,
            "config": vars(args) | {"func": None},
            "environment": environment(),
            "aggregate": summary,
            "aggregate_by_length": by_length(rows),
            "rows": rows,
        }
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenomy", description="Make transformer models spend fewer tokens.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list every registered method")
    p.add_argument("--site", help="only methods of this site (e.g. kv-cache)")
    p.add_argument("--papers", action="store_true", help="also print each method's paper")
    p.set_defaults(func=cmd_methods)

    bench = sub.add_parser("bench", help="run a benchmark").add_subparsers(dest="suite", required=True)
    p = bench.add_parser("kv", help="KV-cache compression on long-context tasks")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--methods", type=_csv(str), default=["all"], help="comma list of KV methods, or all")
    p.add_argument("--keep", type=_csv(float), default=[0.5, 0.25], help="comma list of kept fractions")
    p.add_argument("--task", default="niah", help="niah, multikey, vartrack or ppl (ignored with --data)")
    p.add_argument("--data", help="JSONL with context, question, answers (list) [, answer_prefix]")
    p.add_argument("--length", type=_csv(int), default=[1000], help="comma list of context lengths (tokens)")
    p.add_argument("--limit", type=int, default=8, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", type=_csv(str), default=["aware", "agnostic"],
                   help="aware (question inside the compressed prompt), agnostic (question after)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--compare", type=_csv(str), help="peer libraries to run side by side: kvpress")
    p.add_argument("--json", help="write per-sample rows and aggregates to this JSON file")
    p.set_defaults(func=cmd_bench_kv)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TokenomyError as err:
        print(f"tokenomy: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tokenomy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
