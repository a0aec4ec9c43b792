"""The benchmark harness: report files parse and hold the right numbers, --compare ratios,
FLOP counting, and clear errors for bad input. No wall-clock thresholds: numbers are checked for
internal consistency, never for speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from bench_helpers import Bar

from bench import (
    breakdown,
    compare,
    epoch,
    epoch_memory,
    first_run,
    inference,
    layers,
    memory,
    mnist,
    peers,
)
from bench.cases import LEGACY_CASE_NAMES, TOO_SLOW, Case, get_case, resolve_backends
from bench.comparison import compare_results, load_results
from bench.context import Context, Options
from bench.report import render_markdown
from bench.scaling import loglog_exponent
from bench.sections import OPT_IN_SECTIONS, SECTIONS
from bench.suite import resolve_options
from bench.timing import measure, summarize

REPO = Path(__file__).resolve().parent.parent
# A committed report from before the case renames: --compare must still pair its cases.
LEGACY_REPORT = REPO / "reports" / "2026-11-30_012626" / "results.json"

TINY = [
    "--cases",
    "lab_fit",
    "small_pool",
    "--backends",
    "naive",
    "im2col",
    "--no-peers",
    "--repeat",
    "2",
    "--quick",
    "--epoch-samples",
    "128",
    "--name",
    "tiny",
    "--sections",
    "all",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    assert compare.main(TINY + ["--out", str(out)]) == 0
    return out, json.loads((out / "tiny" / "results.json").read_text())


def test_results_json_is_well_formed(tiny_run):
    _, res = tiny_run
    assert res["name"] == "tiny" and res["machine"]["cores"] >= 1
    assert res["machine"]["peak_gflops"]["float32"] > 0
    rows = {(r["case"], r["backend"], r["pass"]): r for r in res["layers"]}
    for case in ("lab_fit", "small_pool"):
        for backend in ("naive", "im2col"):
            for p in ("forward", "backward"):
                r = rows[(case, backend, p)]
                assert r["status"] == "ok"
                assert r["rounds"] == [0, 0, 1, 1]  # --quick: 2 rounds of --repeat 2
                assert len(r["samples"]) == 4 and r["median"] == pytest.approx(
                    np.median(r["samples"])
                )
                assert r["speedup_vs_naive"] == pytest.approx(
                    rows[(case, "naive", p)]["median"] / r["median"]
                )
        for p in ("forward", "backward"):
            assert rows[(case, "torch", p)]["status"] == "disabled (--no-peers)"
    fit = rows[("lab_fit", "im2col", "backward")]
    assert fit["gflops"] == pytest.approx(2 * get_case("lab_fit").flops / fit["median"] / 1e9)
    assert fit["peak_fraction"] == pytest.approx(
        fit["gflops"] / res["machine"]["peak_gflops"]["float32"]
    )
    assert rows[("small_pool", "im2col", "forward")].get("gflops") is None  # pools: no FLOPs
    assert {r["backend"] for r in res["memory"]["rows"]} == {"naive", "im2col"}
    for r in res["memory"]["rows"]:  # memory.REPEATS rounds, each figure their median
        assert r["peak_bytes"] > 0 and r["peak_bytes"] == pytest.approx(np.median(r["samples"]))
        assert r["rounds"] == list(range(memory.REPEATS)) == list(range(len(r["samples"])))
    curve = res["scaling"]["batch"]["im2col"]
    assert curve["exponent"] is not None
    for median, samples, rounds in zip(curve["seconds"], curve["samples"], curve["rounds"]):
        assert rounds == [0, 0, 1, 1]  # --quick: 2 rounds of --repeat 2
        assert median == pytest.approx(np.median(samples))
    assert res["epoch"]["samples"] == 128
    assert [run["arch"] for run in res["epoch"]["archs"]] == ["small", "deep"]
    for run in res["epoch"]["archs"]:
        assert len(run["rows"]) == 2 + len(peers.PEERS)
    assert all(len(r["samples"]) == 1 for r in res["fitconv"]["rows"] if r["status"] == "ok")
    # our backends' workloads ran; peers are disabled
    for rows in [run["rows"] for run in res["epoch"]["archs"]] + [res["fitconv"]["rows"]]:
        assert {r["name"]: r["status"] for r in rows if not r["peer"]} == {
            "naive": "ok",
            "im2col": "ok",
        }
    assert res["numba_compile"]["status"].startswith("skipped")
    # every section of the table ran but the opt-in ones (`--sections all` leaves them out)
    assert {s.key for s in SECTIONS if s.name not in OPT_IN_SECTIONS} <= set(res)
    assert not {s.key for s in SECTIONS if s.name in OPT_IN_SECTIONS} & set(res)


def test_report_files_parse(tiny_run):
    out, res = tiny_run
    md = (out / "tiny" / "report.md").read_text()
    assert md.startswith("# convbench report `tiny`")
    assert res["machine"]["blas"] in md
    table_rows = [l for l in md.splitlines() if l.startswith("| lab_fit | forward |")]
    labels = [l.split("|")[3].strip() for l in table_rows]
    # im2col carries the BLAS thread count it was fastest with; the others use a fixed setting
    im2col = next(r for r in res["layers"] if r["backend"] == "im2col" and r["pass"] == "forward")
    assert im2col["blas_threads"] in (1, 2)
    assert labels == [
        "naive",
        f"im2col ({im2col['blas_threads']})",
        "PyTorch",
        "PyTorch (channels_last)",
        "TensorFlow/Keras",
        "TensorFlow/Keras (oneDNN)",
    ]
    for png in ("speedup.png", "roofline.png", "epoch.png", "scaling.png", "breakdown.png"):
        img = matplotlib.image.imread(out / "tiny" / png)
        assert img.ndim == 3 and img.shape[0] > 100
        assert f"]({png})" in md
        assert f"](tiny/{png})" in (out / "latest.md").read_text()


def test_epoch_records_accuracy_beside_each_time(tiny_run):
    _, res = tiny_run
    optimizers = {run["arch"]: run["optimizer"] for run in res["epoch"]["archs"]}
    assert optimizers == {"small": "momentum 0.9", "deep": "adam"}
    for run in res["epoch"]["archs"]:
        for r in run["rows"]:
            if r["status"] == "ok":
                assert r["seconds_per_60k"] == pytest.approx(r["seconds"] * 60_000 / 128)
                assert 0 <= r["test_acc"] <= 1  # 2 batches of 64: every backend ran them all
    assert res["epoch"]["test_images"] == epoch.QUICK_TEST


def test_breakdown_names_every_layer_pass_and_the_step(tiny_run):
    from model.network import build_network

    out, res = tiny_run
    bd = res["breakdown"]
    assert bd["backend"] == "im2col"  # auto and numba are not in this run
    assert [a["arch"] for a in bd["archs"]] == list(breakdown.ARCHS)
    for a in bd["archs"]:
        assert a["status"] == "ok" and a["steps"] == breakdown.QUICK_STEPS
        net = build_network(a["arch"], backend="im2col")
        names = [p["name"] for p in a["parts"]]
        order = breakdown.part_order(net, a["augment"])
        assert names == [n for n in order if n in names]  # the parts that ran, in step order
        assert f"{len(net.layers) - 1} Dense forward" in names and "0 Conv2D backward" in names
        for i, layer in enumerate(net.layers):  # every layer in its own part or a fused pair's
            for pass_ in ("forward", "backward"):
                own = breakdown.part_name(i, layer, pass_)
                assert own in names or any(
                    n.endswith(pass_) and f"{i} {type(layer).__name__}" in n for n in names
                ), own
        assert all(p["ms"] >= 0 for p in a["parts"])  # "other" is the step less its parts
        for p in a["parts"]:
            assert p["percent"] == pytest.approx(100 * p["ms"] / a["step_ms"])
        # the parts are timed inside the step, so their medians cannot add up to much more
        assert sum(p["ms"] for p in a["parts"]) < 2 * a["step_ms"]
        assert a["step_ms"] == pytest.approx(np.median(a["step_samples_ms"]))
    md = (out / "tiny" / "report.md").read_text()
    assert "## Where a training step goes (backend `im2col`" in md
    assert "| 1 BatchNorm + 2 MaxPool2D backward |" in md  # fused on every backend


def test_step_clock_times_layers_from_outside():
    from model.network import build_network

    net = build_network("small", backend="im2col")
    clock = breakdown.StepClock()
    breakdown.instrument(net, clock)
    net.forward(np.zeros((2, 28, 28, 1), np.float32), training=True)
    net.backward(np.full((2, 10), 0.5, np.float32))
    assert set(clock.parts) == {
        breakdown.part_name(i, layer, p)
        for i, layer in enumerate(net.layers)
        for p in ("forward", "backward")
    }
    assert all(seconds >= 0 for seconds in clock.parts.values())


def test_inference_rows(tiny_run):
    out, res = tiny_run
    inf = res["inference"]
    assert inf["images"] == inference.QUICK_IMAGES and inf["batch_size"] == 1000
    for arch in inf["archs"]:
        rows = {r["name"]: r for r in arch["rows"]}
        assert set(rows) == {"naive", "im2col", "torch", "torch_cl"}
        assert rows["naive"]["status"].startswith("skipped")
        assert rows["torch"]["status"] == "disabled (--no-peers)"
        r = rows["im2col"]
        assert r["images_per_second"] == pytest.approx(inf["images"] / r["seconds"])
        assert r["seconds"] == pytest.approx(np.median(r["samples"]))
        assert len(r["samples"]) == inf["repeat"]
    assert "## Inference (1000 images" in (out / "tiny" / "report.md").read_text()


def test_epoch_memory_rows(tiny_run):
    out, res = tiny_run
    em = res["epoch_memory"]
    assert [a["arch"] for a in em["archs"]] == ["small"] and "deep" in em["skipped"]
    rows = {r["name"]: r for r in em["archs"][0]["rows"]}
    for name in ("naive", "im2col"):
        r = rows[name]
        assert r["status"] == "ok"
        assert r["peak_mb"] >= r["before_training_mb"] > 0
        assert r["rounds"] == list(range(epoch_memory.QUICK_ROUNDS))  # one child per round
        assert r["peak_mb"] == pytest.approx(np.median(r["peak_mb_samples"]))
        assert len(r["before_training_mb_samples"]) == epoch_memory.QUICK_ROUNDS
        assert "ratio_torch" not in rows[name]  # no PyTorch figure to compare with
    assert rows["torch"]["status"] == "disabled (--no-peers)"
    assert (
        "## Memory: peak resident set of one training epoch"
        in (out / "tiny" / "report.md").read_text()
    )


def test_memory_ratio_and_target_by_hand():
    rows = [
        {"name": "torch", "peer": True, "status": "ok", "peak_mb": 400.0},
        {"name": "torch_cl", "peer": True, "status": "ok", "peak_mb": 300.0},
        {"name": "im2col", "peer": False, "status": "ok", "peak_mb": 600.0},
        {"name": "numba", "peer": False, "status": "ok", "peak_mb": 601.0},
        {"name": "naive", "peer": False, "status": "error: boom"},
    ]
    epoch_memory.add_ratios(rows)
    got = {r["name"]: (r.get("ratio_torch"), r.get("target")) for r in rows}
    assert got["im2col"] == (pytest.approx(2.0), "pass")  # against the lower PyTorch peak
    assert got["numba"][1] == "FAIL"
    assert got["torch"] == (pytest.approx(4 / 3), None) and got["naive"] == (None, None)


def test_first_run_reads_the_trainers_lines(tmp_path):
    line = "compiling numba kernels (first run only) ... 12.3 s"
    assert first_run.COMPILE_LINE.search(line).group(1) == "12.3"
    data = first_run.synthetic_mnist(tmp_path)
    r = first_run.time_to_first_batch("im2col", data_dir=data)
    assert r["status"] == "ok" and r["compile_seconds"] is None  # im2col compiles nothing
    assert r["first_batch_seconds"] >= r["load_seconds"] + r["batch_seconds"]


def test_first_run_skips_without_numba(tiny_run):
    _, res = tiny_run
    assert res["first_run"]["status"] == "skipped: numba backend not in this run"


def _fake(name, layer_times, epoch_times=None):
    return {
        "name": name,
        "layers": [
            {"case": c, "pass": p, "backend": b, "status": "ok", "median": t}
            for (c, p, b), t in layer_times.items()
        ],
        "epoch": {
            "rows": [
                {"name": n, "status": "ok", "seconds_per_60k": t}
                for n, t in (epoch_times or {}).items()
            ]
        },
    }


def test_compare_two_files_computes_ratios(tmp_path, capsys):
    old = _fake(
        "old",
        {
            ("c", "forward", "im2col"): 2.0,
            ("c", "forward", "naive"): 10.0,
            ("c", "backward", "im2col"): 1.0,
        },
        {"im2col": 30.0},
    )
    new = _fake(
        "new",
        {
            ("c", "forward", "im2col"): 4.0,
            ("c", "forward", "naive"): 5.0,
            ("d", "forward", "im2col"): 1.0,
        },
        {"im2col": 33.0},
    )
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "results.json").write_text(json.dumps(new))
    argv = ["--compare", str(tmp_path / "old.json"), str(tmp_path / "new" / "results.json")]
    assert compare.main(argv) == 0
    written = json.loads((tmp_path / "new" / "compare-old.json").read_text())
    got = {r["key"]: (r["ratio"], r["change"]) for r in written["rows"]}
    assert got == {  # one sample per figure: ratios, but no test
        "c forward im2col": (2.0, "untested"),
        "c forward naive": (0.5, "untested"),
        "epoch im2col": (pytest.approx(1.1), "untested"),
    }
    out = capsys.readouterr().out
    assert "3 common figures" in out
    assert f"comparison written to {tmp_path / 'new' / 'compare-old.md'}" in out


def test_compare_pairs_deep_epochs_inference_and_steps():
    def run(scale):
        return {
            "name": "r",
            "epoch": {
                "archs": [
                    {"arch": a, "rows": [{"name": "im2col", "status": "ok", "seconds_per_60k": t}]}
                    for a, t in (("small", 10 * scale), ("deep", 90 * scale))
                ]
            },
            "inference": {
                "archs": [
                    {"arch": "deep", "rows": [{"name": "auto", "status": "ok", "seconds": 2}]}
                ]
            },
            "breakdown": {
                "backend": "auto",
                "archs": [{"arch": "deep", "status": "ok", "step_ms": 100 * scale}],
            },
        }

    rows = {r["key"]: r["ratio"] for r in compare_results(run(1), run(2))}
    assert rows == {
        "epoch im2col": pytest.approx(2.0),  # the small model keeps its earlier key
        "epoch deep im2col": pytest.approx(2.0),
        "inference deep auto": pytest.approx(1.0),
        "step deep auto": pytest.approx(2.0),
    }


def test_flops_hand_computed():
    # out 3x3 per image: 2 images * 9 positions * 4 out-channels * (3*3 taps * 3 in-channels) MACs
    assert Case("t", "conv", 2, 5, 5, 3, 4, k=3).flops == 2 * (2 * 9 * 4 * 27)
    # stride 2, pad 1 on 6x6: out (6 + 2 - 3) // 2 + 1 = 3
    assert Case("s", "conv", 1, 6, 6, 2, 3, k=3, stride=2, padding=1).flops == 2 * (9 * 3 * 9 * 2)
    assert Case("p", "pool", 1, 4, 4, 1, k=2).flops is None


def test_derive_ratios_by_hand():
    rows = [
        {"case": "c", "pass": "backward", "backend": b, "status": "ok", "median": t, "flops": 10**9}
        for b, t in (("naive", 8.0), ("im2col", 2.0), ("numba", 1.0), ("torch", 0.5))
    ]
    got = {r["backend"]: r for r in layers.derive_ratios(rows, peak_gflops=4.0)}
    assert got["im2col"]["gflops"] == pytest.approx(1.0)  # 2 GFLOP backward / 2 s
    assert got["im2col"]["peak_fraction"] == pytest.approx(0.25)
    assert got["numba"]["speedup_vs_naive"] == pytest.approx(8.0)
    assert got["numba"]["speedup_vs_best_numpy"] == pytest.approx(2.0)  # best numpy = im2col
    assert got["numba"]["ratio_torch"] == pytest.approx(2.0)
    assert got["numba"]["ratio_tensorflow"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cases", "nope"], "unknown case(s) 'nope'; known cases: small_conv"),
        (["--cases", "seed_conv"], "unknown case(s) 'seed_conv'"),
        (["--backends", "cuda"], "unknown backend(s) 'cuda'; known backends: naive"),
        (["--compare", "/no/such/results.json"], "cannot read results file /no/such/results.json"),
    ],
)
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.compare: error: {message}") and err.count("\n") == 1
    assert "Traceback" not in err


def test_compare_file_that_is_not_results(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert compare.main(["--compare", str(bad), str(bad)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    bad.write_text("[1, 2]")
    assert compare.main(["--compare", str(bad)]) == 2
    assert "is not a bench.compare results.json" in capsys.readouterr().err


def _context(opts: Options) -> Context:
    return Context(opts, list(opts.backends), peers=peers.peer_status(opts.peers), bar=Bar())


def test_missing_peer_reports_not_installed(monkeypatch):
    real = peers.importlib.util.find_spec
    monkeypatch.setattr(
        peers.importlib.util,
        "find_spec",
        lambda name, *a: None if name in peers.PEERS else real(name, *a),
    )
    monkeypatch.setattr(layers, "COOLDOWN_SECONDS", 0)
    ctx = _context(resolve_options(Options(cases=["lab_fit"], backends=["im2col"], repeat=1)))
    rows = layers.run(ctx)
    status = {(r["backend"], r["pass"]): r["status"] for r in rows}
    assert status[("im2col", "forward")] == "ok"
    assert status[("torch", "forward")] == status[("tensorflow", "backward")] == "not installed"
    with pytest.raises(peers.PeerUnavailable, match="not installed"):
        peers.layer_ops("torch", get_case("lab_fit"))


def test_unknown_peer_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown peer 'jax'; known: torch, torch_cl, tensorflow"):
        peers.epoch_run("jax", "small", None, None, None, None)


def test_rounds_pool_their_samples_and_blas_threads_are_chosen(monkeypatch):
    monkeypatch.setattr(layers, "COOLDOWN_SECONDS", 0)
    opts = resolve_options(
        Options(cases=["lab_fit"], backends=["im2col", "numba"], repeat=2, rounds=3, peers=False)
    )
    ctx = _context(opts)
    rows = layers.run(ctx)
    assert ctx.bar.steps == 3 * 1 * (2 + len(peers.PEERS))  # rounds x cases x (backends + peers)
    assert ctx.bar.steps == layers.steps(opts, opts.backends)
    ok = {(r["backend"], r["pass"]): r for r in rows if r["status"] == "ok"}
    assert {len(r["samples"]) for r in ok.values()} == {6}  # 3 rounds x 2 samples, pooled
    assert ok[("im2col", "forward")]["blas_threads"] == ok[("im2col", "backward")]["blas_threads"]
    assert ok[("numba", "forward")]["blas_threads"] == 1  # as model.train runs it (SELF_THREADED)
    with pytest.raises(ValueError, match="--rounds"):
        resolve_options(Options(rounds=0))
    with pytest.raises(ValueError, match="unknown section"):
        resolve_options(Options(sections=("layers", "nope")))


def test_each_round_starts_at_another_backend(monkeypatch):
    monkeypatch.setattr(layers, "COOLDOWN_SECONDS", 0)
    built = []
    real = layers.layer_ops
    monkeypatch.setattr(
        layers, "layer_ops", lambda name, case: built.append(name) or real(name, case)
    )
    opts = resolve_options(
        Options(
            cases=["lab_fit"],
            backends=["naive", "im2col", "numba"],
            repeat=1,
            rounds=3,
            peers=False,
        )
    )
    layers.run(_context(opts))
    assert built == [
        "naive",
        "im2col",
        "numba",
        "im2col",
        "numba",
        "naive",
        "numba",
        "naive",
        "im2col",
    ]
    assert layers.rotated([], 2) == []


def test_slow_backend_is_reported_not_dropped():
    big = get_case("small_conv").with_size(112)
    run, skipped = big.backends(["naive", "im2col"])
    assert run == ["im2col"] and skipped == {"naive": TOO_SLOW}
    rows = [
        {"case": big.name, "backend": "naive", "pass": "forward", "status": f"skipped: {TOO_SLOW}"}
    ]
    md = render_markdown(
        {
            "name": "x",
            "created": "t",
            "machine": {
                "cpu": "c",
                "cores": 1,
                "python": "3",
                "numpy": "2",
                "blas": "b",
                "numba": "-",
                "torch": "-",
                "tensorflow": "-",
            },
            "layers": rows,
        }
    )
    assert f"- {big.name}: naive skipped: {TOO_SLOW}" in md


def test_unavailable_backend_names_raise():
    with pytest.raises(ValueError, match="known backends"):
        resolve_backends(["im2col", "gpu"])


def test_summarize_median_iqr_and_measure():
    t = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median, t.iqr) == (3.0, 2.0) and t.noisy  # 2 >= 0.10 * 3
    calls = []
    m = measure(lambda: calls.append(1), repeat=3, warmup=2, min_sample=0)
    assert len(m.samples) == 3 and len(calls) == 2 + 3 * m.number
    with pytest.raises(ValueError):
        measure(lambda: None, repeat=0)


def test_measure_warms_up_for_warm_seconds(monkeypatch):
    """Untimed calls go on until warm_seconds have passed (a fake clock: each call takes 10 ms),
    then the samples are timed as usual."""
    from bench import timing

    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls = []

    def call():
        calls.append(1)
        now[0] += 0.01

    m = timing.measure(call, repeat=2, warmup=1, min_sample=0.0, warm_seconds=0.1)
    assert len(calls) - 2 * m.number >= 10  # 0.1 s of 10 ms calls before the samples
    assert m.median == pytest.approx(0.01)


def test_loglog_exponent():
    sizes = [8, 16, 32, 64]
    assert loglog_exponent(sizes, [3e-3 * s**2 for s in sizes]) == pytest.approx(2.0)
    assert loglog_exponent([8], [1.0]) is None


def test_compare_results_ignores_unshared_and_failed_rows():
    old = _fake("a", {("c", "forward", "x"): 1.0})
    new = _fake("b", {("c", "forward", "y"): 1.0})
    new["layers"].append({"case": "c", "pass": "forward", "backend": "x", "status": "error: boom"})
    assert compare_results(old, new) == []


def test_legacy_case_names_still_pair():
    old = load_results(LEGACY_REPORT)
    cases = {r["case"] for r in old["layers"]}
    assert set(LEGACY_CASE_NAMES.values()) <= cases and not cases & set(LEGACY_CASE_NAMES)
    assert old["options"]["scaling_case"] == "small_conv"
    median = next(
        r["median"]
        for r in old["layers"]
        if (r["case"], r["pass"], r["backend"]) == ("small_conv", "forward", "numba")
    )
    samples = next(
        r["samples"]
        for r in old["layers"]
        if (r["case"], r["pass"], r["backend"]) == ("small_conv", "forward", "numba")
    )
    new = _fake("new", {("small_conv", "forward", "numba"): 2 * median})
    new["layers"][0]["samples"] = [2 * t for t in samples]
    rows = compare_results(old, new)
    assert [(r["key"], r["change"]) for r in rows] == [("small_conv forward numba", "slower")]
    assert rows[0]["ratio"] == pytest.approx(2.0)


def test_epoch_data_from_the_user_cache(mnist_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    for f in mnist_dir.iterdir():
        (cache / f.name).symlink_to(f)
    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.setenv("CONVBENCH_CACHE", str(cache))
    x, y, source = mnist.load_training_data(None, 100)
    assert source.startswith("real MNIST") and str(cache) in source
    assert x.shape == (100, 28, 28, 1) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.shape == (100, 10) and (y.sum(axis=1) == 1).all()


def test_epoch_data_says_why_it_is_random(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("CONVBENCH_CACHE", str(tmp_path / "empty"))
    x, y, source = mnist.load_training_data(None, 10)
    assert x.shape == (10, 28, 28, 1) and y.shape == (10, 10)
    assert source.startswith("random data of MNIST's shape (10 images) because no --data-dir")
    assert str(tmp_path / "empty") in source
    # a directory named on the command line must hold the data: one clear line, before any timing
    argv = ["--backends", "im2col", "--no-peers", "--data-dir", str(tmp_path)]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(
            f"python -m bench.compare: error: MNIST directory {tmp_path} (data_dir) lacks"
        )
        and err.count("\n") == 1
    )


def test_every_peer_configuration_finds_its_package():
    import importlib.util

    for name, peer in peers.PEERS.items():
        package = peer.package or peer.name
        assert peer.installed() == (importlib.util.find_spec(package) is not None), name


def test_pytorch_counts_at_its_faster_configuration():
    times = {"numba": 1.0, "torch": 3.0, "torch_cl": 2.0, "tensorflow": 0.5}
    assert peers.best_configuration(times) == ("torch_cl", 2.0)
    assert peers.best_configuration({"torch": 3.0}) == ("torch", 3.0)
    assert peers.best_configuration({"numba": 1.0}) == (None, None)


def _onednn_setting():
    peers.get_peer("tf_onednn").lib()  # imports TensorFlow in the worker
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS")


def test_tensorflow_is_timed_with_onednn_on_in_a_worker_and_off_here():
    pytest.importorskip("tensorflow", reason="TensorFlow is an optional peer")
    remote = peers.get_peer("tf_onednn")
    assert remote.remote and remote.call(_onednn_setting) == "1"
    imported_before = "tensorflow" in sys.modules  # by another test: its setting stands
    peers.get_peer("tensorflow").lib()
    if not imported_before:
        assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert peers.best_configuration({"tensorflow": 2.0, "tf_onednn": 1.5}, "tensorflow") == (
        "tf_onednn",
        1.5,
    )
    got = remote.call(layers.time_peer, "tf_onednn", "small_pool", 1)
    assert set(got) == {(None, p) for p in layers.PASSES}
    assert all(not isinstance(v, str) and len(v[0]) == 1 for v in got.values()), got


def test_dataparallel_model_and_skip():
    from bench import dataparallel

    # one rank: no communication; many ranks on a slow network: the Allreduce dominates
    assert dataparallel.modelled_speedup(0.1, 1_000_000, 1) == 1.0
    two = dataparallel.modelled_speedup(0.1, 1_000_000, 2)
    assert 1.0 < two < 2.0
    speedups = [dataparallel.modelled_speedup(0.1, 1_000_000, p) for p in (2, 4, 8, 64)]
    assert speedups == sorted(speedups) and speedups[-1] < 64
    assert dataparallel.modelled_speedup(0.001, 100_000_000, 8) < 1  # communication-bound


@pytest.mark.skipif(
    __import__("bench.dataparallel").dataparallel.mpi_status() is not None,
    reason='needs mpi4py and mpiexec (pip install -e ".[mpi]")',
)
def test_dataparallel_worker_measures_one_and_two_ranks():
    from bench import dataparallel

    one = dataparallel._worker("small", 2, 1, 1)
    two = dataparallel._worker("small", 2, 2, 1)
    assert one["images_per_s"] > 0 and one["allreduce_seconds"] is None
    assert two["grad_bytes"] == one["grad_bytes"] and two["allreduce_seconds"] > 0


def _worker_state():
    """pid, and whether torch came into the worker before numba's OpenMP layer and with
    libgomp's defaults (no GOMP_SPINCOUNT from kernels/threads.py)."""
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
    return os.getpid(), "torch" in sys.modules, "omppool" in maps, os.environ.get("GOMP_SPINCOUNT")


def test_pytorch_is_timed_in_a_worker_of_its_own():
    pytest.importorskip("torch", reason="PyTorch is an optional peer")
    for name in peers.PEER_GROUPS["torch"]:
        peer = peers.get_peer(name)
        pid, has_torch, numba_threads, spin = peer.call(_worker_state)
        assert peer.remote and pid != os.getpid()
        assert has_torch and not numba_threads and spin is None
    got = peers.get_peer("torch_cl").call(layers.time_peer, "torch_cl", "small_pool", 1)
    assert all(not isinstance(v, str) and len(v[0]) == 1 for v in got.values()), got


def test_winograd_paths_are_marked_effective_gflops():
    """Both Winograd paths do fewer multiplies than the direct count the GFLOP/s column uses;
    its fallback does not."""
    from bench.markdown import _fewer_multiplies

    assert _fewer_multiplies("winograd F(4x4,3x3)")
    assert _fewer_multiplies("winograd fused F(2x2,3x3)")
    assert _fewer_multiplies("auto -> winograd (winograd fused F(2x2,3x3))")
    assert not _fewer_multiplies("fallback:numba")
    assert not _fewer_multiplies("auto -> numba")


def test_step_clock_times_a_fused_pair_as_one_part_each_way():
    pytest.importorskip("numba")
    from model.network import build_network

    net = build_network("small", backend="numba")
    clock = breakdown.StepClock()
    breakdown.instrument(net, clock)
    net.forward(np.zeros((2, 28, 28, 1), np.float32), training=True)
    fused = breakdown.fused_name(0, net.layers)
    assert fused == "0 Conv2D + 1 MaxPool2D forward"
    assert fused in clock.parts and "0 Conv2D forward" not in clock.parts
    order = breakdown.part_order(net, augment=False)
    assert order.index(fused) < order.index("0 Conv2D forward") < order.index("2 ReLU forward")
    net.backward(np.ones((2, 10), np.float32))
    fused_back = breakdown.fused_name(0, net.layers, "backward")
    assert fused_back == "0 Conv2D + 1 MaxPool2D backward"
    assert fused_back in clock.parts
    assert "0 Conv2D backward" not in clock.parts and "1 MaxPool2D backward" not in clock.parts
    assert (
        order.index("2 ReLU backward")
        < order.index(fused_back)
        < order.index("1 MaxPool2D backward")
        < order.index("0 Conv2D backward")
    )


@pytest.mark.parametrize("peer", ["tensorflow", "tf_onednn"])
def test_the_tensorflow_peers_import_without_tensorflows_start_up_lines(peer):
    pytest.importorskip("tensorflow", reason="TensorFlow is an optional peer")
    # tf_onednn imports in its worker process, whose stderr is this child's
    code = f"from bench import peers; peers.get_peer({peer!r}).lib()"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "absl::InitializeLog" not in done.stderr and "oneDNN" not in done.stderr, done.stderr
