"""`tokenomy bench vision`, `bench vision-speed` and `train-vlm`: visual tokens."""

from __future__ import annotations


from tokenomy.cli._common import csv_list, json_option, sample_sweep, sweep_options


def cmd_bench_vision(args) -> int:
    from pathlib import Path

    from tokenomy._progress import progress_bar

    import tokenomy
    from tokenomy.adapters.lm import decoder
    from tokenomy.bench import sweep
    from tokenomy.bench import vision as bench
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.bench.sweep import Cell
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
    if args.ray:
        sweep.connect(args.ray)  # an unreachable cluster or a missing ray fails before the model loads
    vlm, processor = tokenomy.load(chosen.name)
    rows = bench.rows_for(specs, targets, adaptive, len(decoder(vlm).layers))
    configs = bench.configurations(rows, targets if args.oracle else [])
    samples = [bench.draw(args.split, args.seed, i, chosen.style) for i in range(args.limit)]
    timing = min(args.timing, args.limit)
    timed = len(configs) - 1 - (len(targets) if args.oracle else 0)  # not the blank image's, nor the oracle's
    cells = [Cell(f"sample-{i}", (chosen.name, configs, args.split, args.seed, i),
                  f"{chosen.name}|{configs!r}|{args.split}|{args.seed}|{i}") for i in range(args.limit)]
    with progress_bar(total=args.limit * len(configs) + args.repeats * timing * timed, desc="bench vision",
                      unit="run") as bar:
        def here(payload) -> list[dict]:  # in this process: the loaded model, progress run by run
            return bench.answer_sample(vlm, processor, configs, payload[-1], samples[payload[-1]], progress=bar.update)

        per_cell, folder = sample_sweep(args, "vision", cells, here, bench.run_cell, bar)
        timings = bench.time_prefills(vlm, processor, configs, samples[:timing], args.repeats, progress=bar.update)
    records = [record for cell in per_cell for record in cell]
    results = bench.summarize(vlm, processor, records, timings)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {**result_header("vision", args), "results": results, "samples": records, "timings": timings}
        path = write_json(args.json, payload)
        figure = bench.plot(results, records, Path(path).with_suffix(".png"), args.split, chosen.name)
        print(f"wrote {path} and {figure}")
    sweep.clear(folder, cells)  # complete and written: nothing left to resume
    return 0


def cmd_bench_vision_speed(args) -> int:
    from tokenomy._progress import progress_bar

    from tokenomy.bench import vision_speed as bench
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy._validation import check_fraction, check_int

    check_int("--repeats", args.repeats, minimum=1)
    keep = check_fraction("keep", args.keep)
    visual = bench.check_visual(args.visual)
    for layers in (args.llm_layers, args.vit_layers):
        if layers is not None:
            check_int("--llm-layers/--vit-layers", layers, minimum=1)
    forwards = len(args.shapes) * len(visual) * args.repeats * (1 + len(args.methods))
    with progress_bar(total=forwards, desc="bench vision-speed", unit="forward") as bar:
        records = bench.run(args.shapes, visual, args.methods, keep, args.repeats, args.llm_layers, args.vit_layers,
                            progress=bar.update)
    results = bench.summarize(records)
    print(table(results, bench.COLUMNS))
    if args.json:
        payload = {**result_header("vision-speed", args), "results": results, "timings": records}
        print(f"wrote {write_json(args.json, payload)}")
    return 0


def cmd_train_vlm(args) -> int:
    from tokenomy.models.reference_vlm.train import train

    out = train(args.model, args.output, encoder_steps=args.encoder_steps, align_steps=args.align_steps,
                batch=args.batch, seed=args.seed, device=args.device, workers=args.workers,
                checkpoint=args.checkpoint, max_minutes=args.max_minutes, check=args.check)
    if out is not None:
        print(f"wrote {out}")
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy bench vision', 'tokenomy bench vision-speed', 'tokenomy train-vlm'."""
    p = bench.add_parser("vision", help="visual-token methods on the reference VLM (accuracy, tokens, prefill)")
    p.add_argument("--model", default="reference-vlm",
                   help="reference-vlm (= v1), reference-vlm-v1, reference-vlm-v2 (576 tokens) or reference-vlm-v2-anyres")
    p.add_argument("--methods", type=csv_list(str), default=["all"],
                   help="comma list of visual methods, each optionally with options (divprune:per_crop=True) or "
                        "stacked before+inside (divprune+fastv:K=2); 'all' stands for every visual method")
    p.add_argument("--keep", type=csv_list(float), default=[0.11, 0.33],
                   help="comma list of targets: the average fraction of visual tokens per decoder layer")
    p.add_argument("--adaptive", type=csv_list(float), default=[0.5, 0.7, 0.9],
                   help="comma list of values for methods whose budget adapts to each image (ATP's mass tau)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test (reporting) or val (developing methods: the test split is never tuned on)")
    p.add_argument("--limit", type=int, default=20, help="samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timing", type=int, default=8, help="samples whose prefill is timed (0: no timing)")
    p.add_argument("--repeats", type=int, default=3, help="timing rounds (medians reported)")
    p.add_argument("--oracle", action="store_true",
                   help="add a 'label oracle' row per --keep: the tokens the generator's labels say show an object "
                        "or the word (no method can know this; it separates the selection's loss from the model's)")
    sweep_options(p)
    json_option(p, "write per-sample rows and aggregates here; the plot goes next to it (.png)")
    p.set_defaults(func=cmd_bench_vision)

    p = bench.add_parser("vision-speed", help="prefill time of visual methods on random-weight models of real VLM shapes")
    p.add_argument("--shapes", type=csv_list(str), default=["smolvlm-256m", "qwen2-vl-2b"],
                   help="comma list of model shapes: smolvlm-256m, qwen2-vl-2b")
    p.add_argument("--visual", type=csv_list(int), default=[576, 1200], help="comma list of visual tokens per image")
    p.add_argument("--methods", type=csv_list(str), default=["divprune", "vtc-cls", "todre:threshold=0", "fastv"],
                   help="comma list of visual methods (with options, method:option=value)")
    p.add_argument("--keep", type=float, default=0.11, help="fraction of visual tokens kept (after layer K for fastv)")
    p.add_argument("--repeats", type=int, default=5, help="timing rounds, rows alternating (medians reported)")
    p.add_argument("--llm-layers", type=int, default=None, help="cut the language model to this many layers")
    p.add_argument("--vit-layers", type=int, default=None, help="cut the vision tower to this many layers")
    json_option(p, "write the rows and every timing here")
    p.set_defaults(func=cmd_bench_vision_speed)

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
