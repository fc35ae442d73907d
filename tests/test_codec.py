"""The LM codec on small random-weight models: exact round trips, windows, container safety, determinism."""

import math
import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenomy import TokenomyError
from tokenomy.codec import blocks, container
from tokenomy.codec.arithmetic import Decoder, Encoder, pack_bits, unpack_bits
from tokenomy.codec.core import MIN_WINDOW_BITS, Codec, compress, decompress
from tokenomy.codec.engine import _OneDNNLinear, exact
from tokenomy.codec.frequencies import TOTAL, cumulative, frequencies, interval, symbol_at
from tokenomy.codec.online import Learner
from tokenomy.codec.tokens import ByteTokenizer


def tiny_lm(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from tokenomy.models.loader import converted_dir

    return AutoTokenizer.from_pretrained(converted_dir("smollm2-135m"))


@pytest.fixture(scope="module")
def codec(tokenizer):
    return Codec(tiny_lm(49152), tokenizer, "tiny-random")


# -- arithmetic coder and frequency tables (plain integers) -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), max_size=300), st.lists(st.integers(1, 1000), min_size=10, max_size=10))
def test_arithmetic_coder_round_trips_any_symbols(symbols, freqs):
    cum = [0]
    for f in freqs:
        cum.append(cum[-1] + f)
    encoder = Encoder()
    for s in symbols:
        encoder.encode(cum[s], cum[s + 1], cum[-1])
    expected = encoder.bits_if_finished()
    bits = encoder.finish()
    assert len(bits) == expected
    decoder = Decoder(unpack_bits(pack_bits(bits)))  # byte padding must not matter
    out = []
    for _ in symbols:
        target = decoder.target(cum[-1])
        s = max(i for i in range(10) if cum[i] <= target)
        decoder.consume(cum[s], cum[s + 1], cum[-1])
        out.append(s)
    assert out == symbols


def cumulative_frequencies(logits, extra=0):
    return cumulative(frequencies(logits, extra)[0])


def test_coder_size_is_close_to_the_ideal_code_length():
    torch.manual_seed(0)
    logits = torch.randn(2000, 50) * 3
    cums = cumulative_frequencies(logits)
    symbols = torch.distributions.Categorical(logits=logits).sample()
    encoder = Encoder()
    ideal = 0.0
    for cum, s in zip(cums, symbols.tolist()):
        encoder.encode(int(cum[s]), int(cum[s + 1]), TOTAL)
        ideal -= torch.log2((cum[s + 1] - cum[s]).double() / TOTAL).item()
    assert len(encoder.finish()) <= ideal + 4


def test_frequency_tables_are_exact_and_total():
    logits = torch.tensor([[0.0, -1e9, 5.0, float("-inf")], [1.0, 1.0, 1.0, 1.0]])
    cum = cumulative_frequencies(logits, extra=2)
    assert cum.shape == (2, 7) and (cum[:, -1] == TOTAL).all() and (cum[:, 0] == 0).all()
    assert (cum.diff(dim=-1) >= 1).all()  # every symbol, escapes included, stays codable
    assert torch.equal(cum, cumulative_frequencies(logits.clone(), extra=2))
    assert symbol_at(cum[1], int(cum[1, 2])) == 2


def test_frequency_tables_follow_the_documented_formula():
    """Archives depend on these exact integers: freq = 1 + floor(raw * (TOTAL - V) / sum raw), raw =
    floor(exp(logit - max) * 2^30), the remainder to symbol 0 (checked against plain Python integers)."""
    logits = [3.0, 0.5, -2.25, 1.0, -40.0]
    raw = [math.floor(math.exp(v - max(logits)) * 2**30) for v in logits] + [0, 0]  # two escapes
    expected = [1 + r * (TOTAL - len(raw)) // sum(raw) for r in raw]
    expected[0] += TOTAL - sum(expected)
    freq, log_normalizer = frequencies(torch.tensor([logits]), extra=2)
    assert freq[0].tolist() == expected
    assert log_normalizer.item() == pytest.approx(math.log(sum(math.exp(v) for v in logits)), abs=1e-12)


def test_an_interval_is_the_cumulative_table_at_that_symbol():
    torch.manual_seed(0)
    freq, _ = frequencies(torch.randn(3, 40) * 4, extra=3)
    cum = torch.cat([freq.new_zeros(3, 1), freq.cumsum(-1)], dim=-1).tolist()
    assert all(interval(freq[r], s) == (cum[r][s], cum[r][s + 1]) for r in range(3) for s in range(43))


# -- bytes <-> symbols ---------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_round_trip_through_symbols(tokenizer, data):
    byte_tokenizer = ByteTokenizer(tokenizer, 49152)
    assert byte_tokenizer.decode(byte_tokenizer.encode(data)) == data


@pytest.mark.parametrize("data", [
    "plain English prose, with punctuation.".encode(),
    "Grüße 😀 日本語\r\n\ttabs  and  spaces <|im_end|> <|endoftext|>".encode(),
    b"\x00\x01\xff\xfe\xc0\xc1 invalid utf-8 \xe2\x82",
    b"x" * 200_000,  # a huge line
])
def test_special_cases_round_trip(tokenizer, data):
    byte_tokenizer = ByteTokenizer(tokenizer, 49152)
    symbols = byte_tokenizer.encode(data)
    assert byte_tokenizer.decode(symbols) == data
    if data.startswith(b"plain"):
        assert len(symbols) < len(data) / 3 and not any(byte_tokenizer.is_escape(s) for s in symbols)


# -- the engine -------------------------------------------------------------------------------------------


def test_engine_logits_do_not_depend_on_batch_companions():
    model = tiny_lm(300)
    sequence = [5, 9, 33, 7, 100, 3, 44, 250] * 9  # 72 tokens: past one padded key block

    def run(companions, opened_before=0):
        with exact(model) as engine:
            early = [engine.open() for _ in range(opened_before)]  # the row lands in another slot block
            row, others = engine.open(), early + [engine.open() for _ in companions]
            companions = [[7]] * opened_before + companions
            out = []
            for t, token in enumerate(sequence):
                feeds = {row: token} | {o: c[t % len(c)] for o, c in zip(others, companions)}
                out.append(engine.step(feeds)[row])
                if companions and t == 3:
                    engine.reset(others[0])  # another row restarting its context must not matter either
                if opened_before and t == 5:
                    engine.close(others.pop(1))  # nor one leaving the batch
                    companions.pop(1)
        return torch.stack(out)

    alone = run([])
    assert torch.equal(alone, run([[1, 2, 3]] * 9)) and torch.equal(alone, run([[4]] * 2))
    assert torch.equal(alone, run([[4, 5]] * 3, opened_before=21))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(alone, run([[8]] * 5, opened_before=3))
    finally:
        torch.set_num_threads(threads)
    reference = model(torch.tensor([sequence])).logits[0]
    assert torch.allclose(alone, reference, atol=1e-5)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("features", [(64, 128), (576, 1536), (1536, 576), (576, 4096)])
def test_engine_linear_has_torchs_mkldnn_linear_bits_whatever_the_rows(features):
    """The packed oneDNN linear gives torch's MkldnnLinear's bits (the arithmetic archives were written with)
    row by row, for any batch of rows and either thread count, and what nn.Linear computes up to rounding."""
    from torch.utils.mkldnn import MkldnnLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(*features)
    x = torch.randn(64, 1, features[0])
    reference, packed = MkldnnLinear(linear, torch.float32)(x), _OneDNNLinear(linear)
    threads = torch.get_num_threads()
    try:
        for count in {1, threads}:
            torch.set_num_threads(count)
            for rows in (4, 8, 44, 64):
                assert torch.equal(packed(x[:rows]), reference[:rows])
    finally:
        torch.set_num_threads(threads)
    assert torch.allclose(packed(x), linear(x), atol=1e-5)


def test_row_cache_grows_only_the_dimension_that_is_short():
    from tokenomy.codec.engine import _Layer

    layer, kv = _Layer(), torch.ones(1, 2, 8)
    layer.write(torch.tensor([0]), torch.tensor([0]), kv, kv, 16, 64)
    assert layer.keys.shape == (16, 2, 64, 8)
    layer.write(torch.tensor([20]), torch.tensor([3]), 2 * kv, 2 * kv, 32, 64)  # a new row: more slots, same length
    assert layer.keys.shape == (32, 2, 64, 8)
    layer.write(torch.tensor([0]), torch.tensor([100]), 3 * kv, 3 * kv, 16, 128)  # a longer context: more length
    assert layer.keys.shape == (32, 2, 128, 8)
    assert layer.keys[0, :, 0].eq(1).all() and layer.keys[20, :, 3].eq(2).all() and layer.values[0, :, 100].eq(3).all()


def test_engine_puts_the_models_own_layers_back():
    model = tiny_lm(300)
    before = [type(m) for m in model.modules()]
    tokens = torch.tensor([[5, 9, 33]])
    reference = model(tokens).logits
    with exact(model) as engine:
        engine.step({engine.open(): 5})
    assert [type(m) for m in model.modules()] == before
    assert torch.equal(model(tokens).logits, reference)


# -- the codec end to end ------------------------------------------------------------------------------------


SAMPLES = [b"", b"a", b"hello world", "Grüße 😀\n\tend".encode() + b"\xff\xfe\x00 bin", os.urandom(200),
           b"the cat sat on the mat. " * 40]


@pytest.mark.parametrize("level, window_bits", [(0, 0), (0, 32), (0, 64), (1, 0), (2, 0)])
@pytest.mark.parametrize("data", SAMPLES + [b"text, then binary: " * 80 + bytes(range(256)) * 12 + b" and text " * 90],
                         ids=lambda d: f"{len(d)}B")
def test_round_trip_is_exact(codec, data, level, window_bits):
    blob = compress(codec, data, level=level, window_bits=window_bits, segment_tokens=50, batch=4)
    assert decompress(codec, blob, batch=3) == data


def test_round_trip_survives_a_library_that_wraps_every_attention_function(codec, monkeypatch):
    """kvpress, once imported, replaces every HF attention function with a wrapper that reads ``key.shape``;
    the codec's own attention (whose key is a cache layer) is set again at each use."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def wrap(func):
        def wrapped(module, query, key, *args, **kwargs):
            key.shape  # what kvpress's wrapper reads first
            return func(module, query, key, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", dict(ALL_ATTENTION_FUNCTIONS._local_mapping))
    for name in list(ALL_ATTENTION_FUNCTIONS):  # as kvpress's patch_attention_functions does on import
        ALL_ATTENTION_FUNCTIONS[name] = wrap(ALL_ATTENTION_FUNCTIONS[name])
    data = b"a text to code after another library patched attention"
    assert decompress(codec, compress(codec, data, level=1)) == data


def test_equal_info_windows_are_exactly_that_many_bits_and_decode_alone(codec):
    data = b"the cat sat on the mat. " * 30
    blob = compress(codec, data, level=0, window_bits=64, segment_tokens=1000, batch=4)
    archive = container.loads(blob)
    assert archive.units > 3 and set(archive.stream_bits) == {64}
    pieces = [decompress(codec, blob, window=k) for k in range(archive.units)]
    assert b"".join(pieces) == data


def test_window_bits_below_one_token_are_refused(codec):
    with pytest.raises(TokenomyError, match=f">= {MIN_WINDOW_BITS}"):
        compress(codec, b"abc", level=0, window_bits=16)


@pytest.mark.parametrize("options, message", [
    ({"level": 3}, r"--level 3 does not exist; valid levels: 0 \(model\), 1 \(fast\), 2 \(best\)"),
    ({"level": -1}, "--level -1 does not exist"),
    ({"level": 1, "window_bits": 64}, "--window-bits needs --level 0"),
    ({"segment_tokens": 0}, "segment tokens and batch must be >= 1"),
])
def test_bad_options_are_refused_before_loading_a_model(options, message):
    with pytest.raises(TokenomyError, match=message):
        compress("no-such-model", b"text that would need the model", **options)


def test_learning_levels_code_repetitive_text_smaller_than_the_model_alone(codec):
    data = b"Twinkle, twinkle, little bat! How I wonder what you're at! " * 12
    sizes = [len(compress(codec, data, level=level, segment_tokens=60, batch=4)) for level in (0, 1)]
    assert sizes[1] < 0.7 * sizes[0], sizes


def test_a_learning_levels_units_do_not_decode_alone(codec):
    blob = compress(codec, b"some text " * 20, level=1, segment_tokens=30, batch=4)
    with pytest.raises(TokenomyError, match="units depend on each other"):
        decompress(codec, blob, window=0)


def test_binary_input_is_stored_without_loading_the_model():
    data = os.urandom(50_000)
    blob = compress("no-such-model", data)  # a model name that would fail to load
    archive = container.loads(blob)
    assert [b.coder for b in archive.blocks] == [blocks.STORED] and archive.units == 0
    assert len(blob) - len(data) < 150
    assert decompress(None, blob) == data


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 255), st.booleans())
def test_fuzzed_archives_are_refused_with_no_output(position, flip, truncate):
    blob = bytearray(_BINARY_ARCHIVE)
    position %= len(blob)
    if truncate:
        blob = blob[:position]
    else:
        blob[position] ^= flip
    with pytest.raises(TokenomyError):
        decompress("no-such-model", bytes(blob))


_BINARY_ARCHIVE = compress("no-such-model", bytes(range(256)) * 30 + os.urandom(3000))


def test_text_and_binary_go_each_to_their_coder(codec):
    text = b"It was the best of times, it was the worst of times. " * 60
    binary = bytes(range(256)) * 40  # compressible binary: a classical coder, not the model
    data = text + binary + text
    archive = container.loads(compress(codec, data, segment_tokens=200, batch=4))
    coders = [b.coder for b in archive.blocks]
    assert coders[0] == coders[-1] == blocks.MODEL and blocks.STORED not in coders[1:-1] and len(coders) == 3
    assert sum(b.length for b in archive.blocks) == len(data)


@pytest.mark.parametrize("chunk, expected", [
    ("plain words\n".encode(), True), ("Grüße 😀".encode()[3:], True), ("Grüße 😀".encode()[:-2], True),
    (bytes(range(256)), False), (b"\x00\x01" * 100, False), (b"words " * 100 + b"\x00", True),
    (b"words " * 100 + b"\x00\xff", True), (b"words " * 10 + b"\xff\xfe", False),
])
def test_text_is_utf8_with_few_control_characters(chunk, expected):
    assert blocks.is_text(chunk) is expected


def _version_2(archive: container.Archive) -> bytes:
    """The previous format's layout, written independently of the reader (container docstring, version 2)."""
    v = container._varint
    name = archive.model.encode()
    table = zlib.compress(b"".join(v(c) + v(b) for c, b in zip(archive.token_counts, archive.stream_bits)))
    body = b"".join([b"TKZ", bytes([2]), v(len(name)), name, archive.model_fingerprint,
                     archive.arithmetic_fingerprint, v(archive.window_bits), v(archive.segment_tokens),
                     v(archive.original_size), archive.sha256, v(archive.units), v(len(table)), table,
                     v(len(archive.payload)), archive.payload])
    return body + zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize("window_bits", [0, 64])
def test_archives_of_the_previous_format_still_decode(codec, window_bits):
    data = b"An archive written by the previous release. " * 8
    archive = container.loads(compress(codec, data, level=0, window_bits=window_bits, segment_tokens=40, batch=4))
    assert decompress(codec, _version_2(archive)) == data


def test_unknown_versions_are_refused_naming_the_readable_ones(codec):
    blob = bytearray(compress(codec, b"abc", level=0, batch=4))
    blob[3] = 9
    with pytest.raises(TokenomyError, match="version 9 is not supported .* versions 2, 3"):
        decompress(codec, bytes(blob))


def test_learner_tables_are_exact_totals_and_learning_raises_the_coded_symbol():
    learner = Learner(1000)
    logits = torch.randn(3, 1000, dtype=torch.float64)
    weights = torch.exp(logits - logits.amax(dim=-1, keepdim=True))
    before = learner.tables(weights.clone(), [[1, 2], [], [5]])
    assert torch.equal(before.sum(dim=-1), torch.full((3,), TOTAL)) and int(before.min()) >= 1
    learner.learn([7, 7, 7])
    after = learner.tables(weights.clone(), [[1, 2], [], [5]])
    assert (after[:, 7] > before[:, 7]).all()


def _coded_probability(learner, history, symbol, alphabet=1000):
    """The probability ``learner``'s table gives ``symbol`` after ``history`` (flat model weights), learned."""
    tables = learner.tables(torch.ones(1, alphabet, dtype=torch.float64), [history])
    learner.learn([symbol])
    return int(tables[0, symbol]) / TOTAL


def test_shape_model_reads_every_number_as_one_symbol():
    """Lines ``A d d d B`` with random digits: the shape context ``A <number> <number> <number>`` is always
    followed by ``B``; the token contexts of the last digits are followed by a digit as often, and the
    whole line's context is seldom seen twice."""
    digits, a, b = list(range(10)), 100, 101
    lines = torch.randint(0, 10, (300, 3), generator=torch.Generator().manual_seed(0)).tolist()
    end_of_line = {}
    for name, learner in {"numbers": Learner(1000, numbers=digits), "tokens only": Learner(1000)}.items():
        history, p_b = [], []
        for number in lines:
            for symbol in (a, *number, b):
                p = _coded_probability(learner, history, symbol)
                history.append(symbol)
            p_b.append(p)
        end_of_line[name] = sum(p_b[-100:]) / 100
    assert end_of_line["numbers"] > 0.9 > 0.7 > end_of_line["tokens only"]


def test_mixer_moves_to_the_ngram_where_it_is_right_and_stays_with_the_model_where_it_is_not():
    learner = Learner(1000)
    repeated = [_coded_probability(learner, [1, 2, 3], 4) for _ in range(200)]
    assert repeated[-1] > 0.9 > repeated[0]
    learner = Learner(1000)
    novel = [_coded_probability(learner, [1, 2, 3], 100 + k) for k in range(200)]  # never the same twice
    assert novel[-1] > 0.9 / 1000  # the flat model's 1/1000 keeps nearly all its weight


def test_segments_longer_than_the_model_context_are_refused(codec):
    context = codec.model.config.max_position_embeddings
    assert decompress(codec, compress(codec, b"abc", segment_tokens=context, batch=4)) == b"abc"  # the limit itself
    with pytest.raises(TokenomyError, match=f"tiny-random's context of {context} tokens"):
        compress(codec, b"abc", segment_tokens=context + 1)


def test_wrong_model_is_refused(codec, tokenizer):
    blob = compress(codec, b"some text", batch=4)
    other = Codec(tiny_lm(49152, seed=1), tokenizer, "other")
    with pytest.raises(TokenomyError, match="made with model 'tiny-random'"):
        decompress(other, blob)


@pytest.mark.parametrize("data, batch", [(b"some text to code", 4), (b"some text to code", 1)])
def test_arithmetic_fingerprint_computed_beside_coding_equals_the_one_computed_alone(codec, data, batch):
    riding = Codec(codec.model, codec.tokenizer, codec.name)
    blob = compress(riding, data, batch=batch)
    alone = Codec(codec.model, codec.tokenizer, codec.name).arithmetic_fingerprint()
    assert container.loads(blob).arithmetic_fingerprint == riding.arithmetic_fingerprint() == alone
    assert decompress(Codec(codec.model, codec.tokenizer, codec.name), blob, batch=batch) == data


@pytest.mark.parametrize("data", [b"", bytes(range(256)) * 8])
def test_archive_without_text_needs_no_model(codec, data):
    archive = container.loads(compress(codec, data))
    assert archive.model_fingerprint == archive.arithmetic_fingerprint == bytes(8)
    assert decompress("a-model-never-loaded", container.dumps(archive)) == data


@pytest.mark.parametrize("known", [False, True], ids=["probed-while-decoding", "already-known"])
def test_another_machines_arithmetic_is_refused(codec, known):
    archive = container.loads(compress(codec, b"some text from elsewhere", batch=4))
    archive.arithmetic_fingerprint = bytes(8)
    decoder = codec if known else Codec(codec.model, codec.tokenizer, codec.name)
    with pytest.raises(TokenomyError, match="floating-point results differ"):
        decompress(decoder, container.dumps(archive))


def test_window_out_of_range_is_refused(codec):
    blob = compress(codec, b"some text", level=0, batch=4)
    with pytest.raises(TokenomyError, match="window 5 is out of range: this archive has 1"):
        decompress(codec, blob, window=5)


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "empty"])
def test_damaged_archives_fail_clearly(codec, damage):
    blob = bytearray(compress(codec, b"some text to protect" + bytes(range(256)) * 8, segment_tokens=8, batch=4))
    if damage == "truncate":
        blob = blob[:-7]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0x10
    elif damage == "magic":
        blob[:3] = b"ZIP"
    else:
        blob = bytearray()
    with pytest.raises(TokenomyError, match="archive"):
        decompress(codec, bytes(blob))


_CHILD = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(int(sys.argv[1]))
    sys.path.insert(0, sys.argv[4])
    from test_codec import tiny_lm
    from transformers import AutoTokenizer
    from tokenomy.models.loader import converted_dir
    from tokenomy.codec.core import Codec, compress, decompress
    codec = Codec(tiny_lm(49152), AutoTokenizer.from_pretrained(converted_dir("smollm2-135m")), "tiny-random")
    if sys.argv[2].startswith("zip"):
        data, level = open(sys.argv[3], "rb").read(), int(sys.argv[2][3:])
        windows = 0 if level else 64
        sys.stdout.buffer.write(compress(codec, data, level=level, window_bits=windows, segment_tokens=40, batch=2))
    else:
        sys.stdout.buffer.write(decompress(codec, open(sys.argv[3], "rb").read(), batch=int(sys.argv[2])))
""")


@pytest.mark.parametrize("level", [0, 1])
def test_decoding_is_bit_exact_across_processes_threads_and_batch_sizes(tmp_path, level):
    """Floating-point results move with thread counts and batch shapes; the codec must not (a learning
    level's decoder replays the encoder's lanes whatever batch it is given)."""
    source = tmp_path / "in.txt"
    source.write_bytes(("Alice was beginning to get very tired of sitting by her sister on the bank. " * 6).encode())
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    here = os.path.dirname(__file__)
    env = os.environ | {"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    blob = subprocess.run([sys.executable, str(child), "1", f"zip{level}", str(source), here], capture_output=True,
                          check=True, env=env).stdout
    archive = tmp_path / "in.tkz"
    archive.write_bytes(blob)
    for threads, batch in [(2, 1), (2, 7), (1, 16)]:
        out = subprocess.run([sys.executable, str(child), str(threads), str(batch), str(archive), here],
                             capture_output=True, check=True, env=env).stdout
        assert out == source.read_bytes(), (threads, batch)


@pytest.mark.parametrize("argv, message", [(["--max-bytes", "-1"], "--max-bytes must be >= 0"),
                                           (["--repeats", "0"], "--repeats must be >= 1")])
def test_bench_codec_refuses_bad_numbers(argv, message, capsys):
    from tokenomy.cli import main

    assert main(["bench", "codec", "--model", "no-such-model", *argv]) == 2
    assert message in capsys.readouterr().err
