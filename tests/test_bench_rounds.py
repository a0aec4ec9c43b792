"""Interleaved rounds: the epoch section trains every backend and peer per round in a rotated
order, figures keep their raw samples and rounds, and ratios to PyTorch are the median of the
per-round ratios with an interval. Timings are stand-ins: no wall clock is judged."""

from __future__ import annotations

import itertools

import pytest
from bench_helpers import Bar

from bench import epoch, layers, markdown, peers
from bench import results as results_module
from bench.context import Context, Options
from bench.status import OK
from bench.suite import resolve_options


def _got(seconds):
    return {"seconds": seconds, "extrapolated": False, "batches_timed": 10, "test_acc": 0.5}


def test_epoch_rows_take_each_rounds_ratio_to_that_rounds_faster_pytorch():
    rounds = [
        {"numba": _got(1.0), "torch": _got(2.0), "torch_cl": _got(4.0)},
        {"numba": _got(3.0), "torch": _got(6.0), "torch_cl": _got(1.5)},
        {"numba": _got(2.0), "torch": _got(2.0), "torch_cl": _got(8.0)},
    ]
    rows = {r["name"]: r for r in epoch.summarize_rows(["numba", "torch", "torch_cl"], rounds, 10)}
    numba = rows["numba"]
    assert numba["status"] == OK
    assert numba["samples_per_60k"] == [10.0, 30.0, 20.0] and numba["rounds"] == [0, 1, 2]
    assert numba["seconds_per_60k"] == 20.0 and numba["iqr"] == pytest.approx(10.0)
    assert numba["ratios_torch"] == [0.5, 2.0, 1.0] and numba["ratio_torch"] == 1.0
    low, high = numba["ratio_torch_interval"]
    assert 0.5 <= low <= 1.0 <= high <= 2.0
    assert numba["test_acc"] is None  # several partial rounds: no accuracy of a whole epoch


def test_a_backend_that_fails_in_a_round_reports_the_error():
    rounds = [{"numba": ValueError("boom"), "torch": _got(1.0)}, {"numba": _got(1.0)}]
    rows = {r["name"]: r for r in epoch.summarize_rows(["numba", "torch"], rounds, 1.0)}
    assert rows["numba"]["status"] == "error: ValueError: boom"
    assert rows["torch"]["status"] == OK and "ratio_torch" in rows["torch"]


def test_epoch_rounds_rotate_and_cover_every_participant(monkeypatch, mnist_dir):
    calls = []
    seconds = itertools.count(1.0)

    def ours(name, arch, x, *rest):
        calls.append((arch, name, len(x)))
        return _got(next(seconds))

    def peer(name, arch, x, *rest):
        calls.append((arch, name, len(x)))
        return _got(next(seconds))

    monkeypatch.setattr(epoch, "epoch_run", ours)
    monkeypatch.setattr(epoch, "peer_epoch_run", peer)
    opts = resolve_options(
        Options(quick=True, backends=["numba", "im2col"], data_dir=str(mnist_dir))
    )
    status = {p: OK for p in peers.PEERS}
    ctx = Context(opts, ["numba", "im2col"], peers=status, bar=Bar())
    res = epoch.run(ctx)
    assert ctx.bar.steps == epoch.steps(opts, ctx.backends)
    names = ["numba", "im2col", *peers.PEERS]
    small = [name for arch, name, _ in calls if arch == "small"]
    assert small[: len(names)] == names and small[len(names) :] == names[1:] + names[:1]
    n_small = epoch.QUICK_ROUND_BATCHES["small"] * epoch.BATCH_SIZE
    assert {n for arch, _, n in calls if arch == "small"} == {n_small}
    for run in res["archs"]:
        assert run["rounds"] == epoch.QUICK_ROUNDS
        for row in run["rows"]:
            assert row["status"] == OK and len(row["samples_per_60k"]) == epoch.QUICK_ROUNDS
    text = markdown.epoch_section({"epoch": res})
    assert f"the median (IQR) of {epoch.QUICK_ROUNDS} rounds" in text


def test_full_mode_trains_whole_epochs_once():
    opts = resolve_options(Options(full=True, backends=["im2col"]))
    assert epoch.plan(opts) == (1, None) and epoch.images(opts) == epoch.FULL_EPOCH
    assert opts.sections[0] == "layers" and len(opts.sections) > 2
    default = resolve_options(Options(backends=["im2col"]))
    assert default.sections == ("layers", "epoch") and epoch.plan(default)[0] == epoch.ROUNDS
    with pytest.raises(ValueError, match="--quick and --full"):
        resolve_options(Options(quick=True, full=True))


def test_layer_ratios_to_pytorch_are_paired_by_round():
    def row(backend, samples, rounds):
        return {
            "case": "c",
            "pass": "forward",
            "backend": backend,
            "status": OK,
            "median": sorted(samples)[len(samples) // 2],
            "samples": samples,
            "rounds": rounds,
        }

    rows = [
        row("numba", [1.0, 1.0, 4.0, 4.0], [0, 0, 1, 1]),  # round 1 was slow for everyone
        row("torch", [2.0, 2.0, 8.0, 8.0], [0, 0, 1, 1]),
        row("torch_cl", [3.0, 3.0, 9.0, 9.0], [0, 0, 1, 1]),
    ]
    got = {r["backend"]: r for r in layers.derive_ratios(rows, peak_gflops=None)}
    assert got["numba"]["ratios_torch"] == [0.5, 0.5] and got["numba"]["ratio_torch"] == 0.5
    assert got["numba"]["ratio_torch_interval"] == (0.5, 0.5)
    assert markdown.fmt_ratio(got["numba"], "ratio_torch") == "0.50× [0.50, 0.50]"


def test_a_busy_machine_is_named_at_the_top_of_the_report():
    results = {
        "name": "r",
        "created": "t0",
        "machine": {
            "cpu": "x",
            "cores": 2,
            "python": "3",
            "numpy": "2",
            "blas": "b",
            "numba": "n",
            "torch": "t",
            "tensorflow": "tf",
            "before": {"busy": "load average 3.80 on 2 cores"},
        },
    }
    header = markdown.machine_header(results)
    assert header.splitlines()[2].startswith("> **⚠ The machine was busy** (before the run: load")
    del results["machine"]["before"]
    assert "busy" not in markdown.machine_header(results)


def test_summary_ratio_pairs_forward_plus_backward_by_round():
    def row(backend, p, samples):
        return {
            "case": "c",
            "pass": p,
            "backend": backend,
            "status": OK,
            "median": sorted(samples)[len(samples) // 2],
            "samples": samples,
            "rounds": [0, 1],
        }

    results = {
        "layers": [
            row("numba", "forward", [1.0, 3.0]),
            row("numba", "backward", [1.0, 3.0]),
            row("torch", "forward", [2.0, 6.0]),
            row("torch", "backward", [2.0, 6.0]),
        ]
    }
    got = results_module.paired_forward_backward_ratio(results, "c", "numba")
    assert got["ratios"] == [0.5, 0.5] and got["ratio"] == 0.5
    assert "| c | **" in markdown._summary(results) and "0.50× [0.50, 0.50]" in markdown._summary(
        results
    )
    del results["layers"][2:]
    assert results_module.paired_forward_backward_ratio(results, "c", "numba") is None


def test_single_figures_show_their_spread_when_they_have_samples():
    assert markdown.fmt_spread(1.0, [0.9, 1.0, 1.1]) == "1.00 s (100.00 ms) ⚠"
    assert markdown.fmt_spread(1.0, [1.0, 1.0, 1.01]).endswith("ms)")
    assert markdown.fmt_spread(1.0, [1.0]) == "1.00 s"
