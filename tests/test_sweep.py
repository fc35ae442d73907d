"""Sweeps: cells cached on disk (an interrupted sweep resumes), results in cell order, the same on Ray."""

import json

import pytest

from tokenomy.bench import sweep
from tokenomy.bench.sweep import Cell
from tokenomy.cli import main


def square(payload):
    return [{"x": payload, "y": payload * payload}]


CELLS = [Cell(f"c{i}", i, f"square {i}") for i in range(5)]


def test_cells_are_cached_and_a_rerun_only_runs_what_is_missing(tmp_path):
    ran = []

    def work(payload):
        ran.append(payload)
        if payload == 3 and len(ran) < 5:
            raise KeyboardInterrupt  # the sweep is interrupted at its fourth cell
        return square(payload)

    with pytest.raises(KeyboardInterrupt):
        sweep.run(CELLS, work, tmp_path)
    assert ran == [0, 1, 2, 3] and len(list(tmp_path.glob("*.json"))) == 3
    results = sweep.run(CELLS, work, tmp_path)
    assert ran == [0, 1, 2, 3, 3, 4]  # resumed: only the missing cells ran
    assert results == [square(i) for i in range(5)]


def test_a_changed_identity_is_not_served_from_the_cache(tmp_path):
    sweep.run(CELLS[:1], square, tmp_path)
    seen = []
    sweep.run([Cell("c0", 7, "square 7")], lambda p: seen.append(p) or square(p), tmp_path)
    assert seen == [7]


@pytest.fixture(scope="module")
def ray_two_cpus():
    ray = pytest.importorskip("ray")
    import sys

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test file
    sweep.connect("local", num_cpus=2)
    yield ray
    ray.shutdown()


def test_ray_returns_what_one_process_returns_in_cell_order(tmp_path, ray_two_cpus):
    here = sweep.run(CELLS, square, tmp_path / "here")
    there = sweep.run(CELLS, square, tmp_path / "there", ray_address="local")
    assert there == here


TIMING = {"prefill_seconds", "scoring_seconds", "decode_seconds", "peak_memory_bytes"}


def one_process_and_ray(tmp_path, argv: list[str], field: str) -> tuple[list[dict], list[dict]]:
    """The ``field`` records of ``argv`` run in this process and on the local Ray; the Ray run's cell folder is
    gone once it completes (nothing left to resume)."""
    assert main([*argv, "--json", str(tmp_path / "one.json")]) == 0
    cells = tmp_path / "cells"
    assert main([*argv, "--json", str(tmp_path / "ray.json"), "--ray", "local", "--cells", str(cells)]) == 0
    assert not cells.exists()
    return tuple(json.loads((tmp_path / f"{name}.json").read_text())[field] for name in ("one", "ray"))


@pytest.mark.integration
def test_bench_kv_on_ray_equals_one_process_row_for_row(tmp_path, ray_two_cpus):
    argv = ["bench", "kv", "--limit", "2", "--length", "200", "--methods", "snapkv,streamingllm", "--keep", "0.5"]
    one, ray = one_process_and_ray(tmp_path, argv, "rows")
    assert len(one) == len(ray) == 2 * 3
    for a, b in zip(one, ray):
        assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}


@pytest.mark.integration
def test_bench_prompt_on_ray_equals_one_process_record_for_record(tmp_path, ray_two_cpus):
    argv = ["bench", "prompt", "--task", "niah", "--length", "300", "--limit", "2", "--methods", "ehpc,lossless",
            "--rate", "0.5"]
    one, ray = one_process_and_ray(tmp_path, argv, "samples")
    assert len(one) == len(ray) == 2 * 3 and [r["sample"] for r in ray] == [0, 0, 0, 1, 1, 1]
    timing = {"compress_s", "answer_s"}
    for a, b in zip(one, ray):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}


@pytest.mark.integration
def test_bench_vision_on_ray_equals_one_process_record_for_record(tmp_path, ray_two_cpus):
    argv = ["bench", "vision", "--limit", "2", "--methods", "divprune,fastv", "--keep", "0.33", "--timing", "0"]
    one, ray = one_process_and_ray(tmp_path, argv, "samples")
    assert len(one) == 2 * 4 and one == ray  # full, blank image, two methods; nothing timed


@pytest.mark.integration
def test_bench_codec_on_ray_equals_one_process_row_for_row(tmp_path, ray_two_cpus):
    argv = ["bench", "codec", "--files", "gen:server.log", "--max-bytes", "300", "--levels", "0,1", "--repeats", "1"]
    one, ray = one_process_and_ray(tmp_path, argv, "results")
    assert [r["method"] for r in one] == [r["method"] for r in ray] and len(one) == len(ray) >= 5
    speed = {"encode_bytes_per_second", "decode_bytes_per_second", "encode_kbps", "decode_kbps"}
    for a, b in zip(one, ray):  # the classic coders too: same sizes; the archives the same bits
        assert {k: v for k, v in a.items() if k not in speed} == {k: v for k, v in b.items() if k not in speed}
    assert [r["round_trip"] for r in ray] == [True] * len(ray)


@pytest.mark.integration
def test_bench_ensemble_on_ray_equals_one_process_record_for_record(tmp_path, ray_two_cpus):
    argv = ["bench", "ensemble", "--models", "smollm2-135m,smollm2-135m", "--limit", "2", "--alignments", "bytes",
            "--strategies", "average", "--core", "off"]
    one, ray = one_process_and_ray(tmp_path, argv, "samples")
    assert len(one) == len(ray) == 2 * 5 and [r["sample"] for r in ray] == [0] * 5 + [1] * 5
    timing = {"seconds", "prompt_seconds"}
    for a, b in zip(one, ray):  # Ray's workers run one thread: float sums may differ in the last digits
        assert {k: v for k, v in a.items() if k not in timing | {"pruned_mass"}} == \
            {k: v for k, v in b.items() if k not in timing | {"pruned_mass"}}
        assert b["pruned_mass"] == pytest.approx(a["pruned_mass"], rel=1e-4, abs=1e-9)
