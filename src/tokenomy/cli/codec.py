"""`tokenomy zip` / `unzip` and `tokenomy bench codec`: lossless compression with a language model."""

from __future__ import annotations

import sys

from tokenomy._validation import TokenomyError
from tokenomy.cli._common import (csv_list, json_option, read_input, refuse_existing, sample_sweep, sweep_options,
                                   write_output)


def cmd_zip(args) -> int:
    from tokenomy.codec import compress
    from tokenomy.codec.core import check_options

    check_options(args.level, args.window_bits, args.segment_tokens, args.batch)
    output = args.output or ("-" if args.input == "-" else args.input + ".tkz")
    refuse_existing(output, args.force)
    data = read_input(args.input)
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
    write_output(output, blob)
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
    refuse_existing(output, args.force)
    blob = read_input(args.input)
    archive = read_archive(blob)
    selected = archive.units if args.window is None else 1
    counts = archive.token_counts if args.window is None else archive.token_counts[args.window : args.window + 1]
    bar = _progress(sum(counts), "unzip")
    try:
        data = decompress(args.model, blob, window=args.window, batch=args.batch, progress=bar.update)
    finally:
        bar.close()
    write_output(output, data)
    if output != "-":
        print(f"{args.input}: {len(archive.blocks)} block(s), {selected} model unit(s), {len(data)} bytes -> "
              f"{output}", file=sys.stderr)
    return 0


def _progress(total: int, desc: str):
    from tokenomy._progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="tok", leave=False)


def cmd_bench_codec(args) -> int:
    from tokenomy._progress import progress_bar

    import hashlib

    from tokenomy.bench import sweep
    from tokenomy.bench.codec import (COLUMNS, Result, classic, codec_for, default_files, read_inputs, run_cell,
                                      run_classic, summarize)
    from tokenomy.bench.sweep import Cell
    from tokenomy.bench.report import result_header, table, write_json
    from tokenomy.codec.blocks import split
    from tokenomy.codec.core import check_options

    from tokenomy._validation import check_int

    check_int("--max-bytes", args.max_bytes, minimum=0)
    check_int("--repeats", args.repeats, minimum=1)
    paths = args.files or default_files()
    settings = [(level, 0) for level in args.levels] + [(0, bits) for bits in args.window_bits if bits]
    for level, bits in settings:
        check_options(level, bits, args.segment_tokens, args.batch)
    inputs = read_inputs(paths, args.max_bytes)
    if args.ray:
        sweep.connect(args.ray)  # an unreachable cluster or a missing ray fails before the model loads
    codec = codec_for(args.model)  # loaded here too: the progress bar counts its tokens
    texts = [b"".join(data[a:b] for is_text, a, b in split(data) if is_text) for _, data in inputs]
    steps = [len(codec.bytes.encode(text)) * 2 for text in texts]  # the model's steps, encoding and decoding
    names = [path.rsplit("/", 1)[-1] for path, _ in inputs]
    cells = [Cell(f"input{i}-level{level}-window{bits}",
                  (args.model, names[i], data, level, bits, args.segment_tokens, args.batch),
                  f"{args.model}|{hashlib.sha256(data).hexdigest()}|{level}|{bits}|{args.segment_tokens}|{args.batch}")
             for i, (_, data) in enumerate(inputs) for level, bits in settings]
    with progress_bar(total=sum(steps) * len(settings), desc="bench codec", unit="tok") as bar:
        def here(payload) -> list[dict]:  # in this process, progress token by token
            return run_cell(payload, bar.update)

        per_cell, folder = sample_sweep(args, "codec", cells, here, run_cell, bar,
                                        size=lambda records: 2 * records[0]["extra"]["tokens"])
        coded = iter(per_cell)
        results = []
        for name, (_, data) in zip(names, inputs):
            results += [run_classic(method, name, data, args.repeats) for method in classic()]
            results += [Result(**next(coded)[0]) for _ in settings]
    rows = summarize(results)
    print(table(rows, COLUMNS))
    bad = [r for r in results if not r.round_trip]
    if args.json:
        payload = {**result_header("codec", args), "model": args.model, "results": rows}
        print(f"wrote {write_json(args.json, payload)}")
    sweep.clear(folder, cells)  # complete and written: nothing left to resume
    if bad:
        raise TokenomyError(f"round trip failed for {[(r.file, r.method, r.window_bits) for r in bad]}")
    return 0


def add_commands(sub, bench) -> None:
    """Register 'tokenomy zip', 'tokenomy unzip', 'tokenomy bench codec'."""
    from tokenomy.codec.defaults import BATCH, DEFAULT_LEVEL, LEVELS, MIN_WINDOW_BITS

    levels = "; ".join(f"{i} {level.name}: {level.summary}, {level.segment_tokens}-token segments"
                       for i, level in enumerate(LEVELS))

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

    p = bench.add_parser("codec", help="LM + arithmetic coding vs gzip, bzip2, xz, zstd, brotli")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--files", type=csv_list(str), help="comma list of files or gen:NAME inputs (default: the packaged "
                   "Alice and gen:server.log)")
    p.add_argument("--levels", type=csv_list(int), default=[1], help=f"comma list of levels to measure ({levels}; default 1)")
    p.add_argument("--window-bits", type=csv_list(int), default=[0],
                   help="Equal-Info Window sizes to measure too, at level 0 (e.g. 32,64,128,512; 0: none)")
    p.add_argument("--max-bytes", type=int, default=4096,
                   help="measure the first N bytes of each file (0: whole files); reported in the output")
    p.add_argument("--segment-tokens", type=int, help="tokens per segment (default: each level's)")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--repeats", type=int, default=3, help="timing repeats for the classic compressors (median)")
    json_option(p, "write all results to this JSON file")
    sweep_options(p)
    p.set_defaults(func=cmd_bench_codec)
