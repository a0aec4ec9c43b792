"""bench.compare's output directory, comparison files and regression gate, and bench.stats; the
results dicts are built here (no timing)."""

import json

import numpy as np
import pytest

from bench import compare, stats
from bench.comparison import compare_results, regressions


def _results(name, scale=1.0, torch_scale=1.0, jitter=0.0, seed=0, n=7):
    """A results dict with our im2col and PyTorch on one layer case and the small epoch: n samples
    around fixed medians, ours times `scale`, PyTorch's times `torch_scale`, each sample times
    (1 + uniform(-jitter, jitter))."""
    rng = np.random.default_rng(seed)

    def samples(median, s):
        base = median * s * (1 + 0.02 * np.linspace(-1, 1, n))  # a small spread of its own
        return list(base * (1 + rng.uniform(-jitter, jitter, n)))

    layers = []
    for backend, t, s in (("im2col", 2e-3, scale), ("torch", 1e-3, torch_scale)):
        smp = samples(t, s)
        layers.append(
            {
                "case": "small_conv",
                "pass": "forward",
                "backend": backend,
                "status": "ok",
                "median": float(np.median(smp)),
                "samples": smp,
            }
        )
    epoch_rows = []
    for backend, t, s in (("im2col", 6.0, scale), ("torch", 3.0, torch_scale)):
        smp = samples(t, s)
        epoch_rows.append(
            {
                "name": backend,
                "status": "ok",
                "seconds_per_60k": float(np.median(smp)),
                "samples_per_60k": smp,
            }
        )
    return {
        "name": name,
        "layers": layers,
        "epoch": {"archs": [{"arch": "small", "rows": epoch_rows}]},
    }


def test_a_run_compared_with_itself_passes_the_gate():
    run = _results("a")
    rows = compare_results(run, run, fail_factor=1.10)
    assert {r["change"] for r in rows} == {"unchanged"}
    assert regressions(rows) == []


def test_our_times_doubled_fail_the_gate():
    rows = compare_results(_results("a"), _results("b", scale=2.0), fail_factor=1.10)
    bad = {r["key"] for r in regressions(rows)}
    assert bad == {"small_conv forward im2col", "epoch im2col"}
    ours = next(r for r in rows if r["key"] == "epoch im2col")
    assert ours["change"] == "slower" and ours["ratio"] == pytest.approx(2.0, rel=0.01)
    assert ours["low"] <= ours["ratio"] <= ours["high"]
    assert ours["vs_torch_old"] == pytest.approx(2.0, rel=0.05)
    assert ours["vs_torch_new"] == pytest.approx(4.0, rel=0.05)


def test_a_change_inside_the_noise_passes_the_gate():
    rows = compare_results(
        _results("a", jitter=0.03, seed=1), _results("b", scale=1.02, jitter=0.03, seed=2), 1.10
    )
    assert regressions(rows) == []


def test_a_slowdown_peytorch_shares_is_the_machine():
    rows = compare_results(_results("a"), _results("b", scale=2.0, torch_scale=2.0), 1.10)
    ours = next(r for r in rows if r["key"] == "small_conv forward im2col")
    assert ours["change"] == "slower" and ours["machine"]
    assert regressions(rows) == []
    text = compare.render_comparison(rows, "a", "b", 1.10)
    assert "the machine, not the code" in text and "Gate (--fail-on-regression 1.1): pass" in text


def _write(tmp_path, name, results):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return d / "results.json"


def test_gate_exit_codes(tmp_path, capsys):
    old = _write(tmp_path, "old", _results("old"))
    same = _write(tmp_path, "same", _results("same"))
    slow = _write(tmp_path, "slow", _results("slow", scale=2.0))
    gate = ["--fail-on-regression", "1.10"]
    assert compare.main(["--compare", str(old), str(same), *gate]) == 0
    assert compare.main(["--compare", str(old), str(slow), *gate]) == 1
    out = capsys.readouterr().out
    assert "Geometric mean of our 2 ratios: 2.0" in out and "FAIL, 2 of ours" in out


def test_each_pair_gets_its_own_comparison_files_and_says_where(tmp_path, capsys):
    a = _write(tmp_path, "a", _results("a"))
    b = _write(tmp_path, "b", _results("b"))
    new = _write(tmp_path, "new", _results("new"))
    assert compare.main(["--compare", str(a), str(new)]) == 0
    assert compare.main(["--compare", str(b), str(new)]) == 0
    written = sorted(p.name for p in new.parent.iterdir())
    assert written == [
        "compare-a.json",
        "compare-a.md",
        "compare-b.json",
        "compare-b.md",
        "results.json",
    ]
    out = capsys.readouterr().out
    assert f"comparison written to {new.parent / 'compare-b.md'}" in out
    assert compare.main(["--compare", str(a), str(new)]) == 0
    assert "replacing the earlier comparison of the same pair" in capsys.readouterr().out
    elsewhere = tmp_path / "elsewhere"
    assert compare.main(["--compare", str(a), str(new), "--out", str(elsewhere)]) == 0
    assert (elsewhere / "compare-a.md").exists()


def test_compare_names_a_file_that_is_not_text(tmp_path, capsys):
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(b"\x90\x00\xff binary")
    new = _write(tmp_path, "new", _results("new"))
    assert compare.main(["--compare", str(garbage), str(new)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.compare: error: {garbage} is not a results.json")
    assert err.count("\n") == 1


def test_an_unwritable_out_fails_before_anything_is_timed(tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("timed before --out was checked")

    monkeypatch.setattr(compare, "run_suite", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = blocker / "reports"  # a directory below a file can never be created, even by root
    assert compare.main(["--backends", "im2col", "--no-peers", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench.compare: error: --out {out}: cannot write there")
    assert err.count("\n") == 1


def test_measurements_survive_a_failed_report(tmp_path, monkeypatch, capsys):
    results = {"name": "kept", "layers": [{"case": "c", "median": 1.0}]}
    monkeypatch.setattr(compare, "run_suite", lambda opts, name=None: results)

    def full_disk(results, out_root):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare, "write_report", full_disk)
    argv = ["--backends", "im2col", "--no-peers", "--out", str(tmp_path), "--sections", "layers"]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    saved = err.strip().rsplit("saved in ", 1)[1]
    assert json.loads(open(saved).read()) == results


def test_median_and_ratio_intervals():
    samples = [1.0, 1.1, 0.9, 1.05, 0.95]
    low, high = stats.median_interval(samples)
    assert 0.9 <= low <= 1.0 <= high <= 1.1
    low, high = stats.ratio_interval([2 * s for s in samples], samples)
    assert low < 2.0 < high and low > 1.5 and high < 2.5
    assert stats.is_noisy(1.0, 0.1) and not stats.is_noisy(1.0, 0.09)
    assert stats.geometric_mean([2.0, 0.5]) == pytest.approx(1.0)
