"""`tokenomy compress`, `bench prompt`, `bench lossless` and `train-keep-classifier`: prompt compression."""

from __future__ import annotations

import sys

from tokenomy._validation import TokenomyError
from tokenomy.cli._common import csv_list, json_option, read_input, sample_sweep, sweep_options


def cmd_compress(args) -> int:
    import tokenomy

    text = read_input(args.file).decode("utf-8")
    if args.restore:
        sys.stdout.write(tokenomy.restore_prompt(text))
        return 0
    options = {}
    if args.method != "lossless":
        options["rate"] = args.rate
    tokenomy.get(args.method)  # an unknown method fails before the model loads
    done = tokenomy.compress_prompt(text, args.method, question=args.question, model=args.model,
                                    force_tokens=args.force, **options)
    sys.stdout.write(done.compressed_context)  # exactly: `--restore` must get back the input byte for byte
    print(f"tokenomy: {done.origin_tokens} -> {done.compressed_tokens} tokens ({done.ratio:.2f}x, question included"
          f"{'; context scored in ' + str(done.windows) + ' windows' if done.windows > 1 else ''}"
          f"{'; force tokens not found: ' + ', '.join(done.forced_missing) if done.forced_missing else ''})",
          file=sys.stderr)
    if args.json:
        from tokenomy.bench.report import write_json

        write_json(args.json, {"method": args.method, "rate": args.rate, "question": args.question,
                               "compressed_prompt": done.compressed_prompt, "origin_tokens": done.origin_tokens,
                               "compressed_tokens": done.compressed_tokens, "ratio": done.ratio, "kept": done.kept})
    return 0


def cmd_bench_prompt(args) -> int:
    from tokenomy._progress import progress_bar

    import tokenomy
    from tokenomy._validation import check_choice, check_fraction, check_int
    from tokenomy.bench import prompt as bench
    from tokenomy.bench import sweep
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.bench.sweep import Cell
    from tokenomy.bench.tasks import missing_prefix_note, read_jsonl
    from tokenomy.registry import method_spec

    check_int("--limit", args.limit, minimum=1)
    rates = [check_fraction("rate", r) for r in args.rate]
    for peer in args.compare:
        check_choice("--compare peer", peer, ["llmlingua"])
    every = [m.name for m in tokenomy.methods("prompt")]
    specs = list(dict.fromkeys(s for spec in args.methods for s in (every if spec == "all" else [spec])))
    for spec in specs:
        tokenomy.get(method_spec(spec)[0], "prompt")
    if not 0 <= args.unanswerable <= 1:
        raise tokenomy.TokenomyError(f"--unanswerable must be in [0, 1], got {args.unanswerable}")
    if args.ray:
        sweep.connect(args.ray)  # an unreachable cluster or a missing ray fails before the models load
    target, target_tokenizer = tokenomy._prompt_model(args.target)
    samples = read_jsonl(args.data, args.template) if args.data else bench.samples_for(
        args.task, target_tokenizer, args.limit, args.seed, args.length, args.distractors, args.unanswerable)
    samples = samples[: args.limit]
    rows = bench.sweep_rows(specs, rates, args.compare, args.compressor, target_tokenizer)
    cells = [Cell(f"sample-{index}", (args.target, args.compressor, specs, rates, args.compare, args.max_new_tokens,
                                      index, sample), f"{args.target}|{args.compressor}|{specs}|{rates}|"
                                                      f"{args.compare}|{args.max_new_tokens}|{sample!r}")
             for index, sample in enumerate(samples)]
    with progress_bar(total=len(samples) * (1 + len(rows)), desc="bench prompt", unit="answer") as bar:
        def here(payload) -> list[dict]:  # in this process: the loaded models, progress answer by answer
            return bench.run(target, target_tokenizer, [payload[-1]], rows, args.max_new_tokens,
                             progress=bar.update, first=payload[-2])

        per_cell, folder = sample_sweep(args, "prompt", cells, here, bench.run_cell, bar)
    records = [r for cell in per_cell for r in cell]
    results = bench.summarize(records)
    print(table(results, bench.COLUMNS))
    print(f"task {args.data or args.task}, {len(samples)} samples, seed {args.seed}; target {args.target}, "
          f"compressor {args.compressor}")
    if args.data and missing_prefix_note(samples):
        print(missing_prefix_note(samples))
    if args.json:
        payload = {**result_header("prompt", args), "results": results, "samples": records}
        print(f"wrote {write_json(args.json, payload)}")
    sweep.clear(folder, cells)  # complete and written: nothing left to resume
    return 0


def cmd_bench_lossless(args) -> int:
    from pathlib import Path

    import tokenomy
    from tokenomy.bench import prompt as bench
    from tokenomy.bench.report import result_header, table, write_json

    inputs = {str(f): read_input(f).decode("utf-8") for f in args.files} if args.files else bench.lossless_inputs()
    tokenizer = tokenomy._prompt_model(args.model)[1]
    rows = bench.lossless_savings(inputs, tokenizer, args.min_tokens)
    print(table(rows, bench.LOSSLESS_COLUMNS))
    print(f"tokens of {args.model}'s tokenizer; references replace repeats of >= {args.min_tokens} tokens")
    if args.json:
        payload = {**result_header("lossless", args), "results": rows}
        print(f"wrote {write_json(Path(args.json), payload)}")
    return 0


def cmd_train_keep_classifier(args) -> int:
    from tokenomy.bench.tasks import shared_data_dir
    from tokenomy.models.keep_classifier import train

    data = args.data or shared_data_dir()
    if data is None:
        raise TokenomyError("the training texts live in ../shared/data; point --data at a copy of that folder")
    print(f"wrote {train(data, args.output, passages=args.passages, epochs=args.epochs, seed=args.seed)}")
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy compress', 'tokenomy bench prompt', 'tokenomy bench lossless', 'tokenomy train-keep-classifier'."""
    p = sub.add_parser("compress", help="compress a prompt (text in, text out)")
    p.add_argument("file", help="the context to compress (- for stdin)")
    p.add_argument("--method", default="llmlingua", help="a prompt method (tokenomy methods --site prompt)")
    p.add_argument("--rate", type=float, default=0.33, help="share of the prompt's tokens kept (question included)")
    p.add_argument("--question", default="", help="the question asked after the context (never compressed)")
    p.add_argument("--model", default="smollm2-135m", help="the compressor model")
    p.add_argument("--force", type=csv_list(str), default=[], help="comma list of strings whose words are always kept")
    p.add_argument("--restore", action="store_true", help="undo --method lossless (exact)")
    p.add_argument("--json", help="also write the record (kept mask, token counts) here")
    p.set_defaults(func=cmd_compress)

    p = bench.add_parser("prompt", help="prompt compressors, judged by the model that reads their output")
    p.add_argument("--methods", type=csv_list(str), default=["all"],
                   help="comma list of prompt methods (with options, method:option=value); 'all': every one")
    p.add_argument("--rate", type=csv_list(float), default=[0.33], help="comma list of asked rates (kept share)")
    p.add_argument("--task", choices=("squad", "niah", "boolq", "logs"), default="niah",
                   help="niah and logs are generated; squad and boolq read ../shared/data")
    p.add_argument("--data", help="JSONL with context, question, answers (and answer_prefix, template): instead of "
                   "--task")
    p.add_argument("--template", help="how a --data row's question follows its context (default: on a new line, "
                   "\"\\n{question}\"); a row's own template field wins")
    p.add_argument("--limit", type=int, default=8, help="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=int, default=2000, help="niah: context tokens")
    p.add_argument("--distractors", type=int, default=8, help="squad: paragraphs besides the one asked about")
    p.add_argument("--unanswerable", type=float, default=0.25, help="squad: share of questions the documents "
                   "do not answer")
    p.add_argument("--target", default="smollm2-135m", help="the model that answers (gemma3-270m, a path, ...)")
    p.add_argument("--compressor", default="smollm2-135m", help="the model the compressors score with")
    sweep_options(p)
    p.add_argument("--compare", type=csv_list(str), default=[],
                   help="peers run on the same samples in the same process: llmlingua (the llmlingua package's "
                        "PromptCompressor: LLMLingua and LongLLMLingua, with the compressor model)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    json_option(p, "write the rows and every sample's reply here")
    p.set_defaults(func=cmd_bench_prompt)

    p = bench.add_parser("lossless", help="tokens lossless prompt compression saves on code, logs and JSON")
    p.add_argument("files", nargs="*", help="texts to measure (default: popular packages' sources, a log, JSON)")
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer counts the tokens")
    p.add_argument("--min-tokens", type=int, default=8, help="shortest repeat replaced by a reference")
    json_option(p, "write the rows here")
    p.set_defaults(func=cmd_bench_lossless)

    p = sub.add_parser("train-keep-classifier", help="train the distilled prompt compressor's head (CPU, minutes)")
    p.add_argument("-o", "--output", default=None, help="head path (default: the one shipped in the package)")
    p.add_argument("--passages", type=int, default=600, help="passages of public text labelled by SmolLM2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder holding the training texts (default: ../shared/data)")
    p.set_defaults(func=cmd_train_keep_classifier)
