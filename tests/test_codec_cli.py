"""`tokenomy zip` / `unzip` on the real packaged SmolLM2: files, pipes, windows and every bad input."""

import io
import sys

import pytest

from tokenomy.cli import main

pytestmark = pytest.mark.integration

TEXT = (
    "Alice was beginning to get very tired of sitting by her sister on the bank, and of having nothing to do: "
    "once or twice she had peeped into the book her sister was reading, but it had no pictures or conversations "
    "in it, 'and what is the use of a book,' thought Alice 'without pictures or conversations?'\n"
).encode() + b"\x00\xff end"  # long enough that the archive (about 90 bytes of header) is smaller


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def test_zip_then_unzip_a_file(tmp_path, capsys):
    source = tmp_path / "a.txt"
    source.write_bytes(TEXT)
    assert run(["zip", str(source)], capsys)[0] == 0
    archive = tmp_path / "a.txt.tkz"
    assert archive.exists() and archive.stat().st_size < len(TEXT)
    source.unlink()
    code, err = run(["unzip", str(archive)], capsys)
    assert code == 0 and source.read_bytes() == TEXT and "bytes" in err


def test_windows_decode_one_at_a_time(tmp_path, capsys):
    source = tmp_path / "b.txt"
    source.write_bytes(TEXT)
    archive = tmp_path / "b.tkz"
    assert run(["zip", str(source), "-o", str(archive), "--window-bits", "64", "--level", "0"], capsys)[0] == 0
    pieces = []
    k = 0
    while True:
        out = tmp_path / f"w{k}"
        code, err = run(["unzip", str(archive), "-o", str(out), "--window", str(k)], capsys)
        if code:
            assert "out of range" in err
            break
        pieces.append(out.read_bytes())
        k += 1
    assert k > 2 and b"".join(pieces) == TEXT


def test_pipes(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TEXT)))
    stdout = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout))
    assert main(["zip", "-", "-o", "-"]) == 0
    sys.stdout.flush()
    blob = stdout.getvalue()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(blob)))
    stdout2 = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout2))
    assert main(["unzip", "-", "-o", "-"]) == 0
    sys.stdout.flush()
    assert stdout2.getvalue() == TEXT


def test_refuses_to_overwrite_without_force(tmp_path, capsys):
    source, target = tmp_path / "c.txt", tmp_path / "c.tkz"
    source.write_bytes(TEXT)
    target.write_bytes(b"precious")
    code, err = run(["zip", str(source), "-o", str(target)], capsys)
    assert code == 2 and "exists; pass --force" in err and target.read_bytes() == b"precious"
    assert run(["zip", str(source), "-o", str(target), "--force"], capsys)[0] == 0
    assert target.read_bytes() != b"precious"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["zip", "/no/such/file"], "cannot read /no/such/file"),
        (["zip", "{src}", "--window-bits", "16"], "--window-bits must be 0 (no windows) or >= 32"),
        (["zip", "{src}", "--level", "5"], "--level 5 does not exist; valid levels: 0 (model)"),
        (["unzip", "{src}", "-o", "{out}"], "not a tokenomy archive"),
        (["unzip", "{bad}", "-o", "{out}"], "corrupted or truncated archive"),
        (["unzip", "{src}"], "give -o OUTPUT"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path, capsys, argv, message):
    source = tmp_path / "d.txt"
    source.write_bytes(TEXT)
    good = tmp_path / "d.tkz"
    assert main(["zip", str(source), "-o", str(good)]) == 0
    bad = tmp_path / "bad.tkz"
    bad.write_bytes(good.read_bytes()[:-5])
    out = tmp_path / "out.bin"
    capsys.readouterr()
    argv = [a.format(src=source, out=out, bad=bad) for a in argv]
    code, err = run(argv, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".tokenomy-*"))
