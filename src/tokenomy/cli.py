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

    from tokenomy import catalog, load
    from tokenomy.registry import method_spec
    from tokenomy.bench.kv import KVBench, KVBenchConfig, aggregate, by_length, columns, notes
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.bench.tasks import TASKS, read_jsonl
    from tokenomy._validation import check_choice, check_int
    from tokenomy.sites.kv_cache import SITE

    if args.methods == ["all"]:
        method_names = [m.name for m in catalog.methods(SITE)]
    else:
        method_names = args.methods
    kv_methods = [m.name for m in catalog.methods(SITE)]
    for spec in method_names:
        name = method_spec(spec)[0]
        if catalog.get(name).site != SITE:
            raise TokenomyError(f"{name!r} is not a KV-cache method; choose from: {', '.join(kv_methods)}")
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
    for index, sample in enumerate(tqdm(samples, desc=f"bench kv {task}", unit="sample")):
        rows.extend(bench.run_sample(index, sample))
    summary = aggregate(rows)
    print(table(summary, columns(samples[0].continuation is not None)))
    for line in notes(summary):
        print(line)
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


def cmd_report(args) -> int:
    import json

    from tokenomy.bench import codec, ensemble, kv, prompt, vision, vision_speed

    try:
        payload = json.loads(open(args.json).read())
    except (OSError, ValueError) as err:
        raise TokenomyError(f"cannot read benchmark JSON {args.json}: {err}") from err
    suite = payload.get("suite") or ("kv" if "aggregate" in payload else "codec")
    render = {"kv": kv.render, "codec": codec.render, "ensemble": ensemble.render,
              "vision": vision.render, "vision-speed": vision_speed.render, "prompt": prompt.render,
              "lossless": prompt.render}[suite]
    print(render(payload, markdown=args.markdown))
    print(f"\n`{payload['command']}`")
    return 0


def cmd_bench_codec(args) -> int:
    from tqdm.auto import tqdm

    from tokenomy.bench.codec import COLUMNS, classic, default_files, read_inputs, run_classic, run_tokenomy, summarize
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.codec import load_codec
    from tokenomy.codec.blocks import split
    from tokenomy.codec.core import check_options

    paths = args.files or [str(p) for p in default_files()]
    if not paths:
        from importlib import resources

        paths = [str(resources.files("tokenomy").joinpath("data/alice29.txt.gz"))]
    settings = [(level, 0) for level in args.levels] + [(0, bits) for bits in args.window_bits if bits]
    for level, bits in settings:
        check_options(level, bits, args.segment_tokens, args.batch)
    inputs = read_inputs(paths, args.max_bytes)
    codec = load_codec(args.model)
    results = []
    texts = [b"".join(data[a:b] for is_text, a, b in split(data) if is_text) for _, data in inputs]
    total = sum(len(codec.bytes.encode(text)) for text in texts) * len(settings) * 2  # the model's steps
    with tqdm(total=total, desc="bench codec", unit="tok", file=sys.stderr) as bar:
        for path, data in inputs:
            name = path.rsplit("/", 1)[-1]
            for method in classic():
                results.append(run_classic(method, name, data, args.repeats))
            for level, bits in settings:
                results.append(run_tokenomy(codec, name, data, level, bits, args.segment_tokens, args.batch,
                                            bar.update))
    rows = summarize(results)
    print(table(rows, COLUMNS))
    bad = [r for r in results if not r.round_trip]
    if args.json:
        payload = {"command": command_line(), "model": args.model, "config": vars(args) | {"func": None},
                   "environment": environment(), "results": rows}
        print(f"wrote {write_json(args.json, payload)}")
    if bad:
        raise TokenomyError(f"round trip failed for {[(r.file, r.method, r.window_bits) for r in bad]}")
    return 0


def _members(names: list[str]):
    from tokenomy import load
    from tokenomy.ensemble.vocab import Vocabulary

    members = []
    for name in names:
        model, tokenizer = load(name)
        members.append((model, tokenizer, Vocabulary(tokenizer, model.config.vocab_size)))
    return members


def cmd_ensemble(args) -> int:
    from tqdm.auto import tqdm

    from tokenomy.ensemble import Ensemble

    prompts = list(args.prompt or [])
    if args.prompts_file:
        text = _read_input(args.prompts_file).decode("utf-8", errors="strict")
        prompts += [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise TokenomyError("give a prompt (or --prompts-file FILE, one prompt per line)")
    if len(args.models) < 2:
        raise TokenomyError("an ensemble needs at least two models: --models a,b[,c...]")
    ensemble = Ensemble([(m, t) for m, t, _ in _members(args.models)], alignment=args.alignment,
                        strategy=args.strategy, weights=args.weights, core=args.core, core_beta=args.core_beta,
                        max_hypotheses=args.max_hypotheses or None, prune=args.prune, backoff=args.backoff)
    with tqdm(total=len(prompts) * args.max_new_bytes, desc="ensemble", unit="B", file=sys.stderr, leave=False) as bar:
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
    from tqdm.auto import tqdm

    from tokenomy.bench import ensemble as bench
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.ensemble import ALIGNMENTS, STRATEGIES
    from tokenomy._validation import check_choice, check_int

    check_int("--limit", args.limit, minimum=1)
    for name in args.alignments:
        check_choice("alignment", name, ALIGNMENTS)
    for name in args.strategies:
        check_choice("strategy", name, STRATEGIES)
    if "weighted" in args.strategies and not args.weights:
        raise TokenomyError("strategy weighted needs --weights (one number per model)")
    if len(args.models) < 2:
        raise TokenomyError("an ensemble needs at least two models: --models a,b[,c...]")
    if args.data:
        items = bench.read_jsonl(args.data, args.limit, args.seed)
    else:
        loaders = {"lambada": bench.lambada, "squad": bench.squad}
        items = []
        for task in args.tasks:
            check_choice("task", task, bench.TASKS)
            items += loaders[task](args.limit, args.seed)
    members = _members(args.models)
    core = {"both": [False, True], "on": [True], "off": [False]}[args.core]
    systems = 2 * len(members) + len(args.alignments) * len(args.strategies) * len(core)
    with tqdm(total=len(items) * systems, desc="bench ensemble", unit="run", file=sys.stderr) as bar:
        rows = bench.run(members, args.models, items, alignments=args.alignments, strategies=args.strategies,
                         weights=args.weights, core=core, progress=bar.update,
                         byte_options={"max_hypotheses": args.max_hypotheses or None, "prune": args.prune,
                                       "backoff": args.backoff})
    results = bench.summarize(rows, args.models)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {"suite": "ensemble", "command": command_line(), "config": vars(args) | {"func": None},
                   "environment": environment(), "results": results, "samples": rows}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def cmd_bench_vision(args) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    import tokenomy
    from tokenomy.adapters.lm import decoder
    from tokenomy.bench import vision as bench
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.models.reference_vlm import variant
    from tokenomy._validation import check_fraction, check_int

    check_int("--limit", args.limit, minimum=1)
    check_int("--repeats", args.repeats, minimum=1)
    check_int("--timing", args.timing, minimum=0)
    targets = [check_fraction("keep", k) for k in args.keep]
    adaptive = [check_fraction("adaptive", v) for v in args.adaptive]
    every = [m.name for m in tokenomy.methods() if m.site in bench.VISUAL_SITES]
    specs = list(dict.fromkeys(name for spec in args.methods for name in (every if spec == "all" else [spec])))
    bench.check_specs(specs)
    chosen = variant(args.model)
    vlm, processor = tokenomy.load(chosen.name)
    rows = bench.rows_for(specs, targets, adaptive, len(decoder(vlm).layers))
    oracle = targets if args.oracle else []
    timing = min(args.timing, args.limit)
    total = args.limit * (2 + len(rows) + len(oracle)) + args.repeats * timing * (1 + len(rows))
    with tqdm(total=total, desc="bench vision", unit="run", file=sys.stderr) as bar:
        records, timings = bench.run(vlm, processor, rows, args.limit, args.seed, args.repeats, timing,
                                     progress=bar.update, split=args.split, oracle=oracle, style=chosen.style)
    results = bench.summarize(vlm, processor, records, timings)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {"suite": "vision", "command": command_line(), "config": vars(args) | {"func": None},
                   "environment": environment(), "results": results, "samples": records, "timings": timings}
        path = write_json(args.json, payload)
        figure = bench.plot(results, records, Path(path).with_suffix(".png"), args.split, chosen.name)
        print(f"wrote {path} and {figure}")
    return 0


def cmd_bench_vision_speed(args) -> int:
    from tqdm.auto import tqdm

    from tokenomy.bench import vision_speed as bench
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy._validation import check_fraction, check_int

    check_int("--repeats", args.repeats, minimum=1)
    keep = check_fraction("keep", args.keep)
    visual = bench.check_visual(args.visual)
    for layers in (args.llm_layers, args.vit_layers):
        if layers is not None:
            check_int("--llm-layers/--vit-layers", layers, minimum=1)
    with tqdm(total=len(args.shapes) * len(visual) * args.repeats * (1 + len(args.methods)), desc="bench vision-speed",
              unit="forward", file=sys.stderr) as bar:
        records = bench.run(args.shapes, visual, args.methods, keep, args.repeats, args.llm_layers, args.vit_layers,
                            progress=bar.update)
    results = bench.summarize(records)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {"suite": "vision-speed", "command": command_line(), "config": vars(args) | {"func": None},
                   "environment": environment(), "results": results, "timings": records}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def cmd_compress(args) -> int:
    import tokenomy

    text = _read_input(args.file).decode("utf-8")
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
    from tqdm.auto import tqdm

    import tokenomy
    from tokenomy._validation import check_choice, check_fraction, check_int
    from tokenomy.bench import prompt as bench
    from tokenomy.bench.report import command_line, environment, table, write_json
    from tokenomy.bench.tasks import read_jsonl
    from tokenomy.registry import method_spec

    check_int("--limit", args.limit, minimum=1)
    rates = [check_fraction("rate", r) for r in args.rate]
    for peer in args.compare:
        check_choice("--compare peer", peer, ["llmlingua"])
    every = [m.name for m in tokenomy.methods("prompt")]
    specs = list(dict.fromkeys(s for spec in args.methods for s in (every if spec == "all" else [spec])))
    for spec in specs:
        tokenomy.get(method_spec(spec)[0])
    if not 0 <= args.unanswerable <= 1:
        raise tokenomy.TokenomyError(f"--unanswerable must be in [0, 1], got {args.unanswerable}")
    compressor, tokenizer = tokenomy._prompt_model(args.compressor)
    target, target_tokenizer = tokenomy._prompt_model(args.target)
    samples = read_jsonl(args.data) if args.data else bench.samples_for(
        args.task, target_tokenizer, args.limit, args.seed, args.length, args.distractors, args.unanswerable)
    samples = samples[: args.limit]
    rows = bench.rows_for(specs, rates, compressor, tokenizer, target_tokenizer)
    if "llmlingua" in args.compare:
        from tokenomy.models.loader import PACKAGED, converted_dir

        if args.compressor not in PACKAGED:
            raise tokenomy.TokenomyError("--compare llmlingua runs the peer on a packaged compressor model")
        rows += bench.llmlingua_rows(rates, converted_dir(args.compressor))
    with tqdm(total=len(samples) * (1 + len(rows)), desc="bench prompt", unit="answer", file=sys.stderr) as bar:
        records = bench.run(target, target_tokenizer, samples, rows, args.max_new_tokens, progress=bar.update)
    results = bench.summarize(records)
    print(table(results, bench.COLUMNS))
    print(f"task {args.data or args.task}, {len(samples)} samples, seed {args.seed}; target {args.target}, "
          f"compressor {args.compressor}")
    if args.json:
        payload = {"suite": "prompt", "command": command_line(), "config": vars(args) | {"func": None},
                   "environment": environment(), "results": results, "samples": records}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def cmd_bench_lossless(args) -> int:
    from pathlib import Path

    import tokenomy
    from tokenomy.bench import prompt as bench
    from tokenomy.bench.report import command_line, environment, table, write_json

    inputs = {str(f): _read_input(f).decode("utf-8") for f in args.files} if args.files else bench.lossless_inputs()
    tokenizer = tokenomy._prompt_model(args.model)[1]
    rows = bench.lossless_savings(inputs, tokenizer, args.min_tokens)
    print(table(rows, bench.LOSSLESS_COLUMNS))
    print(f"tokens of {args.model}'s tokenizer; references replace repeats of >= {args.min_tokens} tokens")
    if args.json:
        payload = {"suite": "lossless", "command": command_line(), "config": vars(args) | {"func": None},
                   "environment": environment(), "results": rows}
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


def cmd_train_vlm(args) -> int:
    from tokenomy.models.reference_vlm.train import train

    out = train(args.model, args.output, encoder_steps=args.encoder_steps, align_steps=args.align_steps,
                batch=args.batch, seed=args.seed, device=args.device, workers=args.workers,
                checkpoint=args.checkpoint, max_minutes=args.max_minutes, check=args.check)
    if out is not None:
        print(f"wrote {out}")
    return 0


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise TokenomyError(f"cannot read {path}: {err.strerror or err}") from err


def _refuse_existing(path: str, force: bool) -> None:
    """Checked before any work, so a refusal costs nothing."""
    import os

    if path != "-" and not force and os.path.exists(path):
        raise TokenomyError(f"{path} exists; pass --force to overwrite it")


def _write_output(path: str, data: bytes) -> None:
    """Write atomically (temp file + rename): a failure leaves no partial output behind."""
    import os
    import tempfile

    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, temporary = tempfile.mkstemp(prefix=".tokenomy-", dir=directory)
    except OSError as err:
        raise TokenomyError(f"cannot write {path}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tok", file=sys.stderr, leave=False)


def cmd_zip(args) -> int:
    from tokenomy.codec import compress
    from tokenomy.codec.core import check_options

    check_options(args.level, args.window_bits, args.segment_tokens, args.batch)
    output = args.output or ("-" if args.input == "-" else args.input + ".tkz")
    _refuse_existing(output, args.force)
    data = _read_input(args.input)
    bar = None

    def on_tokens(n: int) -> None:
        nonlocal bar
        bar = _progress(n, "zip")

    try:
        blob = compress(args.model, data, level=args.level, window_bits=args.window_bits,
                        segment_tokens=args.segment_tokens, batch=args.batch, progress=lambda k: bar.update(k),
                        on_tokens=on_tokens)
    finally:
        if bar is not None:
            bar.close()
    _write_output(output, blob)
    if output != "-":
        ratio = len(data) / len(blob) if blob else 0
        print(f"{args.input}: {len(data)} -> {len(blob)} bytes ({8 * len(blob) / max(1, len(data)):.3f} bits/byte, "
              f"{ratio:.2f}x) -> {output}", file=sys.stderr)
    return 0


def cmd_unzip(args) -> int:
    from tokenomy.codec import decompress, read_archive

    if args.output is None:
        if args.input == "-" or not args.input.endswith(".tkz"):
            raise TokenomyError("give -o OUTPUT (the input does not end with .tkz)")
        output = args.input[: -len(".tkz")]
    else:
        output = args.output
    _refuse_existing(output, args.force)
    blob = _read_input(args.input)
    archive = read_archive(blob)
    selected = archive.units if args.window is None else 1
    counts = archive.token_counts if args.window is None else archive.token_counts[args.window : args.window + 1]
    bar = _progress(sum(counts), "unzip")
    try:
        data = decompress(args.model, blob, window=args.window, batch=args.batch, progress=bar.update)
    finally:
        bar.close()
    _write_output(output, data)
    if output != "-":
        print(f"{args.input}: {len(archive.blocks)} block(s), {selected} model unit(s), {len(data)} bytes -> "
              f"{output}", file=sys.stderr)
    return 0


def _byte_level_options(p: argparse.ArgumentParser) -> None:
    """The byte-level alignment's cost bound (defaults: the library's, `tokenomy.ensemble.bytelevel`; a test
    keeps them equal without importing it here, which would load transformers for ``--help``)."""
    p.add_argument("--max-hypotheses", type=int, default=4,
                   help="byte level: cap on tokenizations kept per byte, i.e. on per-step cost (0: no cap)")
    p.add_argument("--prune", type=float, default=3e-3,
                   help="byte level: drop tokenizations below this share of the best (0: none)")


def build_parser() -> argparse.ArgumentParser:
    from tokenomy.codec.defaults import BATCH, DEFAULT_LEVEL, LEVELS, MIN_WINDOW_BITS

    levels = "; ".join(f"{i} {level.name}: {level.summary}, {level.segment_tokens}-token segments"
                       for i, level in enumerate(LEVELS))

    parser = argparse.ArgumentParser(prog="tokenomy", description="Make transformer models spend fewer tokens.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list every registered method")
    p.add_argument("--site", help="only methods of this site (e.g. kv-cache)")
    p.add_argument("--papers", action="store_true", help="also print each method's paper")
    p.set_defaults(func=cmd_methods)

    bench = sub.add_parser("bench", help="run a benchmark").add_subparsers(dest="suite", required=True)
    p = bench.add_parser("kv", help="KV-cache compression on long-context tasks")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--methods", type=_csv(str), default=["all"],
                   help="comma list of KV methods, or all; options as name:option=value (keydiff-pool:recent=32)")
    p.add_argument("--keep", type=_csv(float), default=[0.5, 0.25], help="comma list of kept fractions")
    p.add_argument("--task", default="niah", help="niah, multikey, vartrack or ppl (ignored with --data)")
    p.add_argument("--data", help="JSONL with context, question, answers (list) [, answer_prefix]")
    p.add_argument("--length", type=_csv(int), default=[1000], help="comma list of context lengths (tokens)")
    p.add_argument("--limit", type=int, default=8, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--setting", type=_csv(str), default=["aware", "agnostic"],
                   help="aware (question inside the compressed prompt), agnostic (question after)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--continuation", type=int, default=64, help="ppl: tokens of continuation scored after the context")
    p.add_argument("--compare", type=_csv(str), help="peer libraries to run side by side: kvpress")
    p.add_argument("--json", help="write per-sample rows and aggregates to this JSON file")
    p.set_defaults(func=cmd_bench_kv)

    p = bench.add_parser("codec", help="LM + arithmetic coding vs gzip, bzip2, xz, zstd, brotli")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--files", type=_csv(str), help="comma list of files (default: the texts in ../shared/data/text)")
    p.add_argument("--levels", type=_csv(int), default=list(range(len(LEVELS))),
                   help=f"comma list of levels to measure ({levels})")
    p.add_argument("--window-bits", type=_csv(int), default=[0],
                   help="Equal-Info Window sizes to measure too, at level 0 (e.g. 32,64,128,512; 0: none)")
    p.add_argument("--max-bytes", type=int, default=32768,
                   help="measure the first N bytes of each file (0: whole files); reported in the output")
    p.add_argument("--segment-tokens", type=int, help="tokens per segment (default: each level's)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats for the classic compressors (median)")
    p.add_argument("--json", help="write all results to this JSON file")
    p.set_defaults(func=cmd_bench_codec)

    p = bench.add_parser("ensemble", help="single models vs byte-level / union ensembles, with and without CoRE")
    p.add_argument("--models", type=_csv(str), default=["gemma3-270m", "smollm2-135m"],
                   help="comma list; the first is CoRE's main model (default: the larger first)")
    p.add_argument("--tasks", type=_csv(str), default=["lambada", "squad"], help="lambada, squad")
    p.add_argument("--data", help="JSONL with prompt and answers (list); replaces --tasks")
    p.add_argument("--alignments", type=_csv(str), default=["bytes", "union"])
    p.add_argument("--strategies", type=_csv(str), default=["average", "max-confidence"],
                   help="average, weighted (needs --weights), max-confidence")
    p.add_argument("--weights", type=_csv(float), help="per-model weights for the weighted strategy")
    p.add_argument("--core", choices=["both", "on", "off"], default="both", help="rows without and/or with CoRE")
    p.add_argument("--limit", type=int, default=40, help="samples per task")
    p.add_argument("--seed", type=int, default=0)
    _byte_level_options(p)
    p.add_argument("--backoff", type=int, default=0,
                   help="byte level: prompt tokens re-read as bytes (0: every row conditions on the same canonical "
                        "prompt tokens; the tasks' prompts end at word boundaries)")
    p.add_argument("--json", help="write per-sample rows and aggregates to this JSON file")
    p.set_defaults(func=cmd_bench_ensemble)

    p = bench.add_parser("vision", help="visual-token methods on the reference VLM (accuracy, tokens, prefill)")
    p.add_argument("--model", default="reference-vlm",
                   help="reference-vlm (= v1), reference-vlm-v1, reference-vlm-v2 (576 tokens) or reference-vlm-v2-anyres")
    p.add_argument("--methods", type=_csv(str), default=["all"],
                   help="comma list of visual methods, each optionally with options (divprune:per_crop=True) or "
                        "stacked before+inside (divprune+fastv:K=2); 'all' stands for every visual method")
    p.add_argument("--keep", type=_csv(float), default=[0.11, 0.33],
                   help="comma list of targets: the average fraction of visual tokens per decoder layer")
    p.add_argument("--adaptive", type=_csv(float), default=[0.5, 0.7, 0.9],
                   help="comma list of values for methods whose budget adapts to each image (ATP's mass tau)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test (reporting) or val (developing methods: the test split is never tuned on)")
    p.add_argument("--limit", type=int, default=60, help="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing", type=int, default=8, help="samples whose prefill is timed (0: no timing)")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (medians reported)")
    p.add_argument("--oracle", action="store_true",
                   help="add a 'label oracle' row per --keep: the tokens the generator's labels say show an object "
                        "or the word (no method can know this; it separates the selection's loss from the model's)")
    p.add_argument("--json", help="write per-sample rows and aggregates here; the plot goes next to it (.png)")
    p.set_defaults(func=cmd_bench_vision)

    p = bench.add_parser("vision-speed", help="prefill time of visual methods on random-weight models of real VLM shapes")
    p.add_argument("--shapes", type=_csv(str), default=["smolvlm-256m", "qwen2-vl-2b"],
                   help="comma list of model shapes: smolvlm-256m, qwen2-vl-2b")
    p.add_argument("--visual", type=_csv(int), default=[576, 1200], help="comma list of visual tokens per image")
    p.add_argument("--methods", type=_csv(str), default=["divprune", "vtc-cls", "todre:threshold=0", "fastv"],
                   help="comma list of visual methods (with options, method:option=value)")
    p.add_argument("--keep", type=float, default=0.11, help="fraction of visual tokens kept (after layer K for fastv)")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds, rows alternating (medians reported)")
    p.add_argument("--llm-layers", type=int, default=None, help="cut the language model to this many layers")
    p.add_argument("--vit-layers", type=int, default=None, help="cut the vision tower to this many layers")
    p.add_argument("--json", help="write the rows and every timing here")
    p.set_defaults(func=cmd_bench_vision_speed)

    p = bench.add_parser("prompt", help="prompt compressors, judged by the model that reads their output")
    p.add_argument("--methods", type=_csv(str), default=["all"],
                   help="comma list of prompt methods (with options, method:option=value); 'all': every one")
    p.add_argument("--rate", type=_csv(float), default=[0.33], help="comma list of asked rates (kept share)")
    p.add_argument("--task", choices=("squad", "niah", "boolq", "logs"), default="squad")
    p.add_argument("--data", help="JSONL with context, question, answers (and answer_prefix): instead of --task")
    p.add_argument("--limit", type=int, default=40, help="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--length", type=int, default=2000, help="niah: context tokens")
    p.add_argument("--distractors", type=int, default=8, help="squad: paragraphs besides the one asked about")
    p.add_argument("--unanswerable", type=float, default=0.25, help="squad: share of questions the documents "
                   "do not answer")
    p.add_argument("--target", default="smollm2-135m", help="the model that answers (gemma3-270m, a path, ...)")
    p.add_argument("--compressor", default="smollm2-135m", help="the model the compressors score with")
    p.add_argument("--compare", type=_csv(str), default=[],
                   help="peers run on the same samples in the same process: llmlingua (the llmlingua package's "
                        "PromptCompressor: LLMLingua and LongLLMLingua, with the compressor model)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--json", help="write the rows and every sample's reply here")
    p.set_defaults(func=cmd_bench_prompt)

    p = bench.add_parser("lossless", help="tokens lossless prompt compression saves on code, logs and JSON")
    p.add_argument("files", nargs="*", help="texts to measure (default: popular packages' sources, a log, JSON)")
    p.add_argument("--model", default="smollm2-135m", help="whose tokenizer counts the tokens")
    p.add_argument("--min-tokens", type=int, default=8, help="shortest repeat replaced by a reference")
    p.add_argument("--json", help="write the rows here")
    p.set_defaults(func=cmd_bench_lossless)

    p = sub.add_parser("compress", help="compress a prompt (text in, text out)")
    p.add_argument("file", help="the context to compress (- for stdin)")
    p.add_argument("--method", default="llmlingua", help="a prompt method (tokenomy methods --site prompt)")
    p.add_argument("--rate", type=float, default=0.33, help="share of the prompt's tokens kept (question included)")
    p.add_argument("--question", default="", help="the question asked after the context (never compressed)")
    p.add_argument("--model", default="smollm2-135m", help="the compressor model")
    p.add_argument("--force", type=_csv(str), default=[], help="comma list of strings whose words are always kept")
    p.add_argument("--restore", action="store_true", help="undo --method lossless (exact)")
    p.add_argument("--json", help="also write the record (kept mask, token counts) here")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("train-keep-classifier", help="train the distilled prompt compressor's head (CPU, minutes)")
    p.add_argument("-o", "--output", default=None, help="head path (default: the one shipped in the package)")
    p.add_argument("--passages", type=int, default=600, help="passages of public text labelled by SmolLM2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder holding the training texts (default: ../shared/data)")
    p.set_defaults(func=cmd_train_keep_classifier)

    p = sub.add_parser("train-vlm", help="train a reference VLM (projector + LoRA on SmolLM2; v1: its ViT too)")
    p.add_argument("--model", default="reference-vlm-v1",
                   help="reference-vlm-v1 (ViT from scratch) or reference-vlm-v2 (DINOv2; trains v2-anyres with it)")
    p.add_argument("-o", "--output", default=None, help="weights path (default: the one shipped in the package)")
    p.add_argument("--encoder-steps", type=int, default=800,
                   help="stage-1 steps of 4 x batch images (the shipped checkpoint: 1000)")
    p.add_argument("--align-steps", type=int, default=300,
                   help="alignment steps of batch questions (the shipped checkpoint: 2000)")
    p.add_argument("--batch", type=int, default=16, help="questions per alignment step (the shipped checkpoint: 64; "
                   "the defaults fit 40 min on 2 CPU cores, too little to learn more than counting)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (auto: a GPU when there is one)")
    p.add_argument("--workers", type=int, default=0, help="processes rendering batches in parallel")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this many minutes and save a checkpoint; the same command resumes it")
    p.add_argument("--checkpoint", default=None, help="where to save and resume (default: OUTPUT.checkpoint)")
    p.add_argument("--check", type=int, default=50, help="validation questions answered after each stage (0: none)")
    p.set_defaults(func=cmd_train_vlm)

    p = sub.add_parser("ensemble", help="generate with two or more models that have different tokenizers")
    p.add_argument("prompt", nargs="*", help="prompt(s); each is continued separately")
    p.add_argument("--prompts-file", help="one prompt per line (- for stdin)")
    p.add_argument("--models", type=_csv(str), default=["gemma3-270m", "smollm2-135m"],
                   help="comma list; the first is CoRE's main model (default: the larger first)")
    p.add_argument("--alignment", default="bytes", help="bytes (exact next-byte probabilities) or union")
    p.add_argument("--strategy", default="average", help="average, weighted, max-confidence")
    p.add_argument("--weights", type=_csv(float), help="per-model weights (strategy weighted)")
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

    p = sub.add_parser("report", help="print the tables of a benchmark JSON")
    p.add_argument("json", help="a file written by `tokenomy bench ... --json`")
    p.add_argument("--markdown", action="store_true", help="Markdown tables (for README)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("zip", help="compress a file losslessly with a language model")
    p.add_argument("input", help="file to compress, or - for stdin")
    p.add_argument("-o", "--output", help="archive to write (default INPUT.tkz; - for stdout)")
    p.add_argument("--model", default="smollm2-135m", help="packaged name, local folder or hub id")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL, help=f"speed / ratio preset ({levels})")
    p.add_argument("--window-bits", type=int, default=0,
                   help=f"Equal-Info Window size in bits (0: no windows; else >= {MIN_WINDOW_BITS}, level 0 only)")
    p.add_argument("--segment-tokens", type=int,
                   help="tokens per segment, one model context each (default: the level's; at most the model's "
                        "context): longer ones compress better, shorter ones code more contexts side by side")
    p.add_argument("--batch", type=int, default=BATCH,
                   help="contexts run through the model at once (a learning level's decoder replays this)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=cmd_zip)

    p = sub.add_parser("unzip", help="decompress a tokenomy archive")
    p.add_argument("input", help="archive, or - for stdin")
    p.add_argument("-o", "--output", help="file to write (default: INPUT without .tkz; - for stdout)")
    p.add_argument("--window", type=int, help="decode only this window (or segment) of the archive")
    p.add_argument("--model", help="load this model instead of the one the archive names (must be identical)")
    p.add_argument("--batch", type=int, default=BATCH,
                   help="windows decoded at once (level 0; a learning level replays the encoder's)")
    p.add_argument("--force", action="store_true", help="overwrite the output")
    p.set_defaults(func=cmd_unzip)
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
    except BrokenPipeError:  # e.g. `tokenomy report x.json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
