"""The sections measured in rounds of their own (memory, epoch memory, scaling, data-parallel):
every figure keeps its samples and rounds, is their median with a spread and the noise mark in
the report, and bench.comparison tests it. Measurements are stand-ins here: no wall clock is
judged."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from bench_helpers import Bar

from bench import dataparallel, epoch_memory, markdown, memory, scaling
from bench.comparison import compare_results, render_comparison, result_figures
from bench.context import Context, Options
from bench.status import OK
from bench.suite import resolve_options
from bench.timing import in_rounds, pooled


def _ctx(backends, quick=True, peer_status=None, **options):
    opts = resolve_options(Options(quick=quick, backends=backends, peers=False, **options))
    return Context(opts, list(backends), peers=peer_status or {}, bar=Bar())


def test_in_rounds_rotates_the_order_and_stops_measuring_a_name_that_failed():
    calls, bar = [], Bar()

    def measure_one(name, rnd):
        calls.append((rnd, name))
        if name == "b" and rnd == 1:
            raise RuntimeError("boom")
        return 10 * rnd + len(calls)

    got = in_rounds(["a", "b", "c"], 3, measure_one, bar, "x")
    assert [n for r, n in calls if r == 0] == ["a", "b", "c"]
    assert [n for r, n in calls if r == 1] == ["b", "c", "a"]
    assert [n for r, n in calls if r == 2] == ["c", "a"]  # b is not measured after it failed
    assert isinstance(got["b"], RuntimeError)
    assert [r for r, _ in got["a"]] == [0, 1, 2] and [r for r, _ in got["c"]] == [0, 1, 2]
    assert bar.steps == 9  # every name and round advances the bar, failed or not


def test_pooled_keeps_samples_and_rounds_and_names_bad_input():
    got = pooled([3.0, 1.0, 2.0, 10.0], [0, 1, 2, 3])
    assert got["median"] == 2.5 and got["samples"] == [3.0, 1.0, 2.0, 10.0]
    assert got["rounds"] == [0, 1, 2, 3] and got["noisy"]
    assert not pooled([1.0, 1.0], [0, 1])["noisy"]
    with pytest.raises(ValueError, match="samples and rounds"):
        pooled([1.0], [0, 1])
    with pytest.raises(ValueError, match="samples and rounds"):
        pooled([], [])


def test_fmt_spread_shows_the_range_below_range_below_and_the_iqr_from_it():
    few = [1.0, 1.05, 1.3]
    text = markdown.fmt_spread(np.median(few), few, range_below=markdown.RANGE_BELOW)
    assert text == "1.05 s (1.00 s – 1.30 s) ⚠"  # IQR 0.15 s >= 10% of 1.05 s
    many = [1.0, 1.01, 1.02, 1.03, 1.04]
    text = markdown.fmt_spread(np.median(many), many, range_below=markdown.RANGE_BELOW)
    assert text == "1.02 s (20.00 ms)"
    assert markdown.fmt_spread(1.0, [1.0]) == "1.00 s"  # one sample: no spread
    assert "range (min – max)" in markdown.spread_note(3)
    assert "IQR in brackets" in markdown.spread_note(5)


def test_memory_rows_are_medians_of_rotated_rounds(monkeypatch):
    values = itertools.count(1000, 100)
    monkeypatch.setattr(memory, "peak_bytes", lambda name, case: next(values))
    ctx = _ctx(["naive", "im2col"])
    res = memory.run(ctx)
    assert ctx.bar.steps == memory.steps(ctx.opts, ctx.backends) == 2 * memory.REPEATS
    for r in res["rows"]:
        assert r["status"] == OK and len(r["samples"]) == memory.REPEATS
        assert r["rounds"] == list(range(memory.REPEATS))
        assert r["peak_bytes"] == np.median(r["samples"])
    text = markdown.memory_section({"memory": res})
    assert f"median of {memory.REPEATS} samples" in text and "MiB (" in text


def test_memory_row_of_a_failing_backend_says_why(monkeypatch):
    def peak_bytes(name, case):
        if name == "naive":
            raise MemoryError("no room")
        return 5

    monkeypatch.setattr(memory, "peak_bytes", peak_bytes)
    res = memory.run(_ctx(["naive", "im2col"]))
    rows = {r["backend"]: r for r in res["rows"]}
    assert rows["naive"]["status"] == "error: MemoryError: no room"
    assert rows["im2col"]["peak_bytes"] == 5.0 and not rows["im2col"]["noisy"]


def test_epoch_memory_rows_are_medians_of_one_child_per_round(monkeypatch):
    peaks = itertools.count(100.0, 10.0)

    def peak_of_epoch(name, arch, samples, data_dir):
        peak = next(peaks) + (200.0 if name == "torch" else 0.0)
        return {"peak_mb": peak, "before_training_mb": 50.0}

    monkeypatch.setattr(epoch_memory, "peak_of_epoch", peak_of_epoch)
    ctx = _ctx(["im2col"], peer_status={"torch": OK, "torch_cl": "not installed"})
    res = epoch_memory.run(ctx)
    assert ctx.bar.steps == epoch_memory.steps(ctx.opts, ctx.backends)
    rows = {r["name"]: r for r in res["archs"][0]["rows"]}
    assert rows["torch_cl"]["status"] == "not installed"
    ours, torch = rows["im2col"], rows["torch"]
    assert ours["rounds"] == list(range(epoch_memory.QUICK_ROUNDS))
    assert ours["peak_mb"] == np.median(ours["peak_mb_samples"])
    assert ours["before_training_mb"] == 50.0
    assert ours["ratio_torch"] == pytest.approx(ours["peak_mb"] / torch["peak_mb"])
    text = markdown.epoch_memory_section({"epoch_memory": res})
    n = epoch_memory.QUICK_ROUNDS
    assert f"Each row runs {n} such processes" in text and "range (min – max)" in text
    assert f"{ours['peak_mb']:.0f} MB (" in text


def test_scaling_points_pool_every_rounds_samples(monkeypatch):
    calls = []

    def time_fb(name, case, repeat):
        calls.append(name)
        return [case.n * 1e-3 * (1 + 0.01 * i) for i in range(repeat)]

    monkeypatch.setattr(scaling, "time_forward_backward", time_fb)
    ctx = _ctx(["im2col", "numba"], repeat=2, rounds=2)
    res = scaling.run(ctx)
    assert ctx.bar.steps == scaling.steps(ctx.opts, ctx.backends)
    sizes = len(scaling.QUICK_BATCH_SIZES) + len(scaling.QUICK_IMAGE_SIZES)
    assert sorted(calls) == sorted(["im2col", "numba"] * 2 * sizes)  # every point, every round
    curve = res["batch"]["im2col"]
    assert curve["status"] == OK and curve["sizes"] == list(scaling.QUICK_BATCH_SIZES)
    assert all(r == [0, 0, 1, 1] for r in curve["rounds"])  # 2 rounds of --repeat 2
    assert curve["seconds"] == [pytest.approx(np.median(s)) for s in curve["samples"]]
    assert curve["exponent"] == pytest.approx(1.0, abs=1e-6)  # the stand-in is linear in N
    text = markdown.scaling_section({"scaling": res})
    assert "2 rounds" in text and "median of 4 samples, the range (min – max)" in text


def test_dataparallel_rows_pool_the_steps_of_every_round(monkeypatch):
    monkeypatch.setattr(dataparallel, "mpi_status", lambda: None)
    step = itertools.count(1)

    def worker(arch, steps_, processes, threads):
        k = next(step)
        return {
            "step_samples": [0.1 * k] * steps_,
            "grad_bytes": 400,
            "allreduce_seconds": 0.01 if processes > 1 else None,
        }

    monkeypatch.setattr(dataparallel, "_worker", worker)
    ctx = _ctx(["numba"])
    res = dataparallel.run(ctx)
    assert ctx.bar.steps == dataparallel.steps(ctx.opts, ctx.backends)
    assert res["rounds"] == dataparallel.QUICK_ROUNDS
    for result in res["archs"].values():
        for r in result["rows"]:
            n = dataparallel.QUICK_ROUNDS * dataparallel.QUICK_STEPS
            assert r["status"] == OK and len(r["step_samples"]) == len(r["rounds"]) == n
            assert r["step_seconds"] == pytest.approx(np.median(r["step_samples"]))
            assert r["images_per_s"] == pytest.approx(dataparallel.BATCH / r["step_seconds"])
            assert r["noisy"]  # each round's steps here differ by whole tenths of a second
    text = markdown.dataparallel_section({"dataparallel": res})
    assert f"{dataparallel.QUICK_ROUNDS} rounds of a fresh process" in text and "⚠" in text


def _sampled_results(name, scale):
    """A results dict holding one figure of each section measured in rounds of its own, every
    sample times `scale`."""

    def s(values):
        return [v * scale for v in values]

    five = [1.0, 1.01, 1.02, 1.03, 1.04]
    return {
        "name": name,
        "epoch": {"archs": []},
        "memory": {
            "case": "deep_conv2",
            "rows": [
                {"backend": "im2col", "status": OK, "peak_bytes": 2**20 * 1.02 * scale,
                 "samples": s([2**20 * v for v in five])}
            ],
        },
        "epoch_memory": {
            "archs": [
                {"arch": "small", "samples": 640, "rows": [
                    {"name": "im2col", "status": OK, "peak_mb": 301.0 * scale,
                     "peak_mb_samples": s([300.0, 301.0, 302.0])}
                ]}
            ]
        },
        "scaling": {
            "case": "small_conv",
            "batch": {"im2col": {"status": OK, "sizes": [8], "seconds": [1.02 * scale],
                                 "samples": [s(five)]}},
        },
        "dataparallel": {
            "status": OK,
            "archs": {"small": {"rows": [
                {"config": "1 process x 1 thread", "status": OK, "step_seconds": 1.02 * scale,
                 "step_samples": s(five)}
            ]}},
        },
        "paired": {
            "ours": "auto",
            "single": None,
            "archs": [{"arch": "small", "status": OK, "ours": s(five),
                       "peer": {"torch": s(five), "torch_cl": s(five)}}],
        },
    }  # fmt: skip


def test_comparison_tests_the_sampled_sections():
    old, new = _sampled_results("old", 1.0), _sampled_results("new", 1.5)
    figures = result_figures(old)
    assert figures["memory deep_conv2 im2col"]["unit"] == "B"
    assert figures["epoch memory small 640 im2col"]["samples"] == [300.0, 301.0, 302.0]
    assert len(figures["scaling small_conv batch 8 im2col"]["samples"]) == 5
    assert "data-parallel small step 1 process x 1 thread" in figures
    assert {"paired small auto", "paired small torch", "paired small torch_cl"} <= set(figures)
    rows = {r["key"]: r for r in compare_results(old, new)}
    assert rows["memory deep_conv2 im2col"]["change"] == "slower"  # 5 + 5 samples: testable
    assert rows["scaling small_conv batch 8 im2col"]["change"] == "slower"
    assert rows["data-parallel small step 1 process x 1 thread"]["change"] == "slower"
    # 3 + 3 samples cannot reach p < 0.01 (the smallest two-sided p is 0.1)
    assert rows["epoch memory small 640 im2col"]["change"] == "unchanged"
    text = render_comparison(list(rows.values()), "old", "new")
    assert "| memory deep_conv2 im2col | 1.0 MiB | 1.5 MiB |" in text
    assert "| epoch memory small 640 im2col | 301 MB | 452 MB |" in text


@pytest.mark.slow  # a fresh process that warms up numba's kernels: about a minute on 2 cores
def test_the_dataparallel_worker_prints_every_timed_step():
    pytest.importorskip("threadpoolctl")
    got = dataparallel._worker("small", 2, 1, 1)  # one process: no MPI needed
    assert len(got["step_samples"]) == 2
    assert got["step_seconds"] == pytest.approx(np.median(got["step_samples"]))
    assert got["allreduce_seconds"] is None and got["grad_bytes"] > 0
