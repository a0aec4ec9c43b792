"""The auto backend: it times candidates once per shape, caches the choice per machine on disk,
never crashes on a bad cache file, and returns naive's numbers whatever it picks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from kernels import auto, naive


@pytest.fixture
def tuner(tmp_path, monkeypatch):
    """auto with an empty cache directory of its own, reset afterwards."""
    monkeypatch.delenv("CONVBENCH_AUTOTUNE", raising=False)
    before = dict(auto._state)  # tests/conftest.py's: autotuning off, a temporary cache
    auto.configure(mode="cached", cache_dir=tmp_path)
    yield auto
    auto._state.update(before, table=None, path=None)
    auto._chosen.clear()


def _conv_args(c_in=8, dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, c_in)).astype(dtype)
    w = rng.standard_normal((3, 3, c_in, 4)).astype(dtype)
    return x, w, rng.standard_normal(4).astype(dtype)


def test_times_once_caches_and_matches_naive(tuner):
    x, w, b = _conv_args()
    y, ctx = tuner.conv2d_forward(x, w, b, 1, 1)
    (record,) = tuner.choices().values()
    assert record["source"] == "timed" and record["backend"] == ctx.backend
    assert record["backend"] in record["seconds"] and len(record["seconds"]) >= 2
    y_ref, ctx_ref = naive.conv2d_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = np.ones_like(y)
    for got, ref in zip(tuner.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    saved = json.loads(tuner.cache_path().read_text())
    assert saved["machine"] == tuner.machine_fingerprint()
    assert list(saved["choices"].values())[0]["backend"] == ctx.backend


def test_a_later_run_reads_the_cache_without_timing(tuner, monkeypatch):
    x, w, b = _conv_args()
    _, first = tuner.conv2d_forward(x, w, b, 1, 1)
    auto.configure(mode="cached")  # a new run: the in-process memory is gone

    def no_timing(runs, key):
        raise AssertionError("cached mode timed a shape the cache knows")

    monkeypatch.setattr(auto, "_time_candidates", no_timing)
    _, again = tuner.conv2d_forward(x, w, b, 1, 1)
    assert again.backend == first.backend
    assert list(tuner.choices().values())[0]["source"] == "cache"


def test_fresh_times_again_and_off_times_nothing(tuner, monkeypatch):
    x, w, b = _conv_args()
    tuner.conv2d_forward(x, w, b, 1, 1)
    calls = []
    monkeypatch.setattr(
        auto, "_time_candidates", lambda runs, key: calls.append(key) or dict.fromkeys(runs, 1.0)
    )
    auto.configure(mode="fresh")
    tuner.conv2d_forward(x, w, b, 1, 1)
    assert calls, "fresh mode must time again"
    calls.clear()
    auto.configure(mode="off")
    _, ctx = tuner.conv2d_forward(x, w, b, 1, 1)
    assert not calls and list(tuner.choices().values())[0]["source"] == "rule"
    assert ctx.backend in ("winograd", "numba", "im2col")


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"version": 1, "machine": {"cpu": "another"}, "choices": {}})],
    ids=["corrupt", "stale"],
)
def test_a_bad_cache_file_warns_and_is_rewritten(tuner, content):
    path = tuner.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    x, w, b = _conv_args()
    with pytest.warns(RuntimeWarning, match="ignoring the autotune cache"):
        tuner.conv2d_forward(x, w, b, 1, 1)
    assert json.loads(path.read_text())["machine"] == tuner.machine_fingerprint()


def test_pooling_is_tuned_too(tuner):
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 3))
    y, ctx = tuner.maxpool2d_forward(x, 2)
    y_ref, ctx_ref = naive.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(
        tuner.maxpool2d_backward(np.ones_like(y), ctx),
        naive.maxpool2d_backward(np.ones_like(y), ctx_ref),
    )
    assert any(key.startswith("maxpool2d") for key in tuner.choices())


def test_bad_mode_is_a_clear_error(tuner, monkeypatch):
    with pytest.raises(ValueError, match="autotune mode must be one of off, cached, fresh"):
        auto.configure(mode="sometimes")
    monkeypatch.setenv("CONVBENCH_AUTOTUNE", "always")
    auto.configure()
    auto._state["mode"] = None
    with pytest.raises(ValueError, match="CONVBENCH_AUTOTUNE must be one of"):
        auto.mode()


def test_candidates_are_timed_in_rounds_and_a_failing_one_is_dropped():
    order = []

    def make(name, fails=False):
        def run():
            order.append(name)
            if fails:
                raise ValueError("cannot")

        return run

    with pytest.warns(RuntimeWarning, match="autotune: b failed"):
        seconds = auto._time_candidates({"a": make("a"), "b": make("b", True), "c": make("c")}, "k")
    assert seconds["b"] is None and seconds["a"] >= 0 and seconds["c"] >= 0
    # one warm-up call each, then rounds of a, c: never all of one candidate's samples in a row
    assert order[:3] == ["a", "b", "c"]
    assert order[3:] == ["a", "c"] * auto.TIMING_REPEATS


def test_the_cache_key_follows_the_kernels_source(monkeypatch):
    before = auto.machine_fingerprint()["kernels"]
    monkeypatch.setattr(auto, "_kernels_digest", lambda: "changed")
    assert auto.machine_fingerprint()["kernels"] == "changed" != before


def test_the_machine_fingerprint_starts_numba_threads_sleeping():
    """The fingerprint reads numba's thread count, and whoever first asks starts numba's
    workers: it must go through kernels/threads.py, which starts them with GOMP_SPINCOUNT=0
    (started by numba.get_num_threads() they spin between kernels and take a core from the
    GEMMs). Run in a fresh process, where nothing has started them yet."""
    code = (
        "from kernels import auto, threads\n"
        "assert not threads._launched\n"
        "auto.machine_fingerprint()\n"
        "assert threads._launched\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_a_close_call_is_timed_again_and_keeps_each_best(monkeypatch):
    """The two best within CLOSE_CALL are timed again (CLOSE_CALL_ROUNDS sets of rounds) and
    keep their best; a clear winner, or a lone candidate, is not re-timed."""
    rounds = []
    later = {"a": 5.0, "b": 1.0}  # b is faster in the later rounds

    def fake(runs, key):
        rounds.append(sorted(runs))
        return {name: later[name] for name in runs}

    monkeypatch.setattr(auto, "_time_candidates", fake)
    runs = {"a": None, "b": None, "c": None}
    first = {"a": 2.0, "b": 2.2, "c": 9.0, "d": None}  # d failed: not a choice
    settled = auto._settle_close_call(runs, first, "k")
    assert rounds == [["a", "b"]] * auto.CLOSE_CALL_ROUNDS
    assert settled == {"a": 2.0, "b": 1.0, "c": 9.0, "d": None}
    rounds.clear()
    clear = {"a": 1.0, "b": 1.0 * auto.CLOSE_CALL * 1.01, "c": 9.0}
    assert auto._settle_close_call(runs, clear, "k") == clear and not rounds
    assert auto._settle_close_call(runs, {"a": 1.0, "b": None}, "k") == {"a": 1.0, "b": None}
    assert not rounds


def _pair_args(c_in=1, c_out=16):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 12, 12, c_in)).astype(np.float32)
    w = rng.standard_normal((3, 3, c_in, c_out)).astype(np.float32)
    return x, w, rng.standard_normal(c_out).astype(np.float32)


def test_a_conv_and_its_pool_are_timed_as_a_pair(tuner):
    """numba's fused conv + max-pool is timed against the two layers on their own choices; the
    fused result, when chosen, is the two calls' result."""
    x, w, b = _pair_args()
    fused = tuner.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    (key,) = [k for k in tuner.choices() if k.startswith("conv2d+maxpool2d")]
    record = tuner.choices()[key]
    assert record["source"] == "timed" and set(record["seconds"]) == {auto.FUSED, auto.SEPARATE}
    assert (fused is not None) == (record["backend"] == auto.FUSED)
    assert key in json.loads(tuner.cache_path().read_text())["choices"]
    y_conv, _ = naive.conv2d_forward(x, w, b, 1, 1)
    y_ref, _ = naive.maxpool2d_forward(y_conv, 2)
    if fused is not None:
        np.testing.assert_allclose(fused[0], y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("faster", [auto.FUSED, auto.SEPARATE])
def test_the_pair_runs_as_its_timing_says(tuner, monkeypatch, faster):
    def fake(runs, key):
        for run in runs.values():
            run()  # every candidate still runs: it must work
        return {name: 1.0 if name in (faster, "numba") else 2.0 for name in runs}

    monkeypatch.setattr(auto, "_time_candidates", fake)
    x, w, b = _pair_args()
    fused = tuner.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    assert (fused is not None) == (faster == auto.FUSED)
    if fused is not None:
        assert (fused[1].backend, fused[2].backend) == ("numba", "numba")


def test_a_pair_numba_does_not_fuse_is_not_timed(tuner, monkeypatch):
    calls = []
    real = auto._time_candidates
    monkeypatch.setattr(auto, "_time_candidates", lambda r, k: calls.append(k) or real(r, k))
    x, w, b = _pair_args()
    assert tuner.conv2d_maxpool2d_forward(x, w, b, 1, 1, 3, None) is None  # a 3x3 pool
    (record,) = [v for k, v in tuner.choices().items() if k.startswith("conv2d+maxpool2d")]
    assert record == {"backend": auto.SEPARATE, "seconds": {}, "source": "only choice"}
    assert not [k for k in calls if k.startswith("conv2d+maxpool2d")]


SPLIT_SHAPES = [  # x shape, w shape, stride, padding
    ((2, 10, 10, 16), (3, 3, 16, 16), 1, 1),  # winograd's fused path; numba's tiles
    ((2, 9, 8, 1), (3, 3, 1, 4), 1, 1),  # numba's plane kernels; winograd's batched path
    ((2, 9, 9, 3), (2, 2, 3, 16), 2, 0),  # winograd's fallback (stride 2, 2x2)
]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", SPLIT_SHAPES)
@pytest.mark.parametrize("name", ["numba", "winograd"])
def test_a_backward_ctx_built_from_the_inputs_gives_the_same_gradients(
    name, x_shape, w_shape, stride, padding
):
    from kernels import get_backend

    be = get_backend(name)
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[3])
    y, own = be.conv2d_forward(x, w, b, stride, padding)
    rebuilt = be.conv2d_backward_ctx(x, w, b, stride, padding)
    if rebuilt is None:  # winograd's batched path keeps the forward's transformed tiles
        assert name == "winograd" and own.path.startswith("winograd F(")
        return
    dy = rng.standard_normal(y.shape)
    for got, want in zip(be.conv2d_backward(dy, rebuilt), be.conv2d_backward(dy, own)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", SPLIT_SHAPES)
@pytest.mark.parametrize(
    "forward, backward", [("winograd", "numba"), ("im2col", "numba"), ("numba", "winograd")]
)
def test_passes_on_two_backends_match_naive(
    tuner, monkeypatch, forward, backward, x_shape, w_shape, stride, padding
):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[3])
    rebuilt = auto._backend(backward).conv2d_backward_ctx(x, w, b, stride, padding)
    if rebuilt is None:  # winograd's batched path: never chosen for a backward alone
        assert backward == "winograd" and x_shape[3] < 16
        return
    monkeypatch.setattr(auto, "_conv_choice", lambda *args: (forward, backward))
    y, ctx = tuner.conv2d_forward(x, w, b, stride, padding)
    assert (ctx.forward, ctx.backend) == (forward, backward)
    y_ref, ctx_ref = naive.conv2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(tuner.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_each_pass_is_timed_and_the_backward_may_run_elsewhere(tuner, monkeypatch):
    """The pair of least summed time, where the backward's backend can rebuild its ctx:
    im2col cannot, so a faster im2col backward does not split the passes onto it."""
    passes = []
    fake = {
        "forward": {"winograd": 1.0, "numba": 2.0, "im2col": 3.0, "einsum": 9.0},
        "backward": {"winograd": 5.0, "numba": 2.0, "im2col": 0.5, "einsum": 9.0},
    }

    def timed(runs, key):
        kind = (
            "forward"
            if all(r.func.__name__ == "conv2d_forward" for r in runs.values())
            else "backward"
        )
        passes.append(kind)
        return {name: fake[kind][name] for name in runs}

    monkeypatch.setattr(auto, "_time_candidates", timed)
    x, w, b = _conv_args(c_in=16)
    w = np.concatenate([w] * 4, axis=3)  # 16 output channels: winograd's fused path
    y, ctx = tuner.conv2d_forward(x, w, np.concatenate([b] * 4), 1, 1)
    assert passes == ["forward", "backward"]
    (record,) = tuner.choices().values()
    assert (record["backend"], record["backward"]) == ("winograd", "numba")  # 1 + 2
    assert auto.describe(record) == "winograd forward, numba backward"
    assert (ctx.forward, ctx.backend) == ("winograd", "numba")
    assert record["seconds"]["im2col"] == 3.5 and record["forward_seconds"]["numba"] == 2.0
