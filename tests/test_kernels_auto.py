"""The auto backend: it times candidates once per shape, caches the choice per machine and thread
settings on disk, scopes its configuration (auto.using), and returns naive's numbers whatever it
picks. The cache file's robustness: test_kernels_auto_cache.py; the timing policy:
test_kernels_auto_policy.py."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from kernels import auto, naive, tuning, tuning_policy
from kernels.geometry import ConvGeometry, conv_geometry


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """auto in mode "cached" with an empty cache directory of its own, for this test only."""
    monkeypatch.delenv("CONVBENCH_AUTOTUNE", raising=False)
    with auto.using(mode="cached", cache_dir=tmp_path):
        yield auto


def _conv_args(c_in=8, dtype=np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, c_in)).astype(dtype)
    w = rng.standard_normal((3, 3, c_in, 4)).astype(dtype)
    return x, w, rng.standard_normal(4).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_times_once_caches_and_matches_naive(cached, dtype):
    x, w, b = _conv_args(dtype=dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    y, ctx = cached.conv2d_forward(x, w, b, 1, 1)
    assert y.dtype == dtype
    (record,) = cached.choices().values()
    assert record["source"] == "timed"
    assert (ctx.forward or ctx.backend, ctx.backend) == (record["backend"], record["backward"])
    assert record["backend"] in record["seconds"] and len(record["seconds"]) >= 2
    y_ref, ctx_ref = naive.conv2d_forward(x, w, b, 1, 1)
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    dy = np.ones_like(y)
    for got, ref in zip(cached.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    saved = json.loads(cached.cache_path().read_text())
    assert saved["machine"] == cached.machine_fingerprint()
    assert list(saved["choices"].values())[0]["backend"] == record["backend"]


def test_a_later_run_reads_the_cache_without_timing(cached, monkeypatch):
    x, w, b = _conv_args()
    _, first = cached.conv2d_forward(x, w, b, 1, 1)

    def no_timing(runs, key):
        raise AssertionError("cached mode timed a shape the cache knows")

    with auto.using():  # a new run: nothing chosen in memory, the same cache directory
        monkeypatch.setattr(tuning_policy, "time_candidates", no_timing)
        _, again = auto.conv2d_forward(x, w, b, 1, 1)
        assert (again.forward, again.backend) == (first.forward, first.backend)
        assert list(auto.choices().values())[0]["source"] == "cache"
    assert list(auto.choices().values())[0]["source"] == "timed"  # the outer scope's, back


def test_fresh_times_again_and_off_times_nothing(cached, monkeypatch):
    x, w, b = _conv_args()
    cached.conv2d_forward(x, w, b, 1, 1)
    calls = []
    monkeypatch.setattr(
        tuning_policy,
        "time_candidates",
        lambda runs, key: calls.append(key) or dict.fromkeys(runs, 1.0),
    )
    with auto.using(mode="fresh"):
        auto.conv2d_forward(x, w, b, 1, 1)
    assert calls, "fresh mode must time again"
    calls.clear()
    with auto.using(mode="off"):
        _, ctx = auto.conv2d_forward(x, w, b, 1, 1)
        assert not calls and list(auto.choices().values())[0]["source"] == "rule"
    assert ctx.backend in ("winograd", "numba", "im2col")


def test_using_scopes_and_configure_stays_in_its_scope(tmp_path):
    outer = auto.tuner()
    with auto.using(mode="fresh", cache_dir=tmp_path) as inner:
        assert auto.tuner() is inner and auto.mode() == "fresh" and auto.cache_dir() == tmp_path
        auto.configure(mode="cached")  # as model.train's --autotune does
        assert auto.mode() == "cached" and auto.cache_dir() == tmp_path
        with auto.using(mode="off"):
            assert auto.mode() == "off" and auto.cache_dir() == tmp_path
        assert auto.mode() == "cached"
    assert auto.tuner() is outer


def test_pooling_is_tuned_too(cached):
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 3))
    y, ctx = cached.maxpool2d_forward(x, 2)
    y_ref, ctx_ref = naive.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(
        cached.maxpool2d_backward(np.ones_like(y), ctx),
        naive.maxpool2d_backward(np.ones_like(y), ctx_ref),
    )
    y, ctx = cached.avgpool2d_forward(x, 2)
    np.testing.assert_allclose(y, naive.avgpool2d_forward(x, 2)[0], rtol=1e-12)
    assert {key.split()[0] for key in cached.choices()} == {"maxpool2d", "avgpool2d"}


def test_bad_mode_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="autotune mode must be one of off, cached, fresh"):
        auto.using(mode="sometimes").__enter__()
    with pytest.raises(ValueError, match="autotune mode must be one of off, cached, fresh"):
        auto.configure(mode="sometimes")
    monkeypatch.setenv("CONVBENCH_AUTOTUNE", "always")
    with pytest.raises(ValueError, match="CONVBENCH_AUTOTUNE must be one of"):
        _ = tuning.Tuner().mode


def test_the_key_ends_with_the_thread_settings_in_force(cached, monkeypatch):
    """A choice timed under two BLAS threads is not the one run under the trainer's one."""
    calls = []
    monkeypatch.setattr(
        tuning_policy, "time_candidates", lambda r, k: calls.append(k) or dict.fromkeys(r, 1.0)
    )
    x, w, b = _conv_args()
    for limit in (1, 2):
        with threadpool_limits(limits=limit, user_api="blas"):
            cached.conv2d_forward(x, w, b, 1, 1)
    keys = list(cached.choices())
    if len(keys) == 1:
        pytest.skip("numpy's BLAS here runs one thread whatever the limit: one setting to key")
    assert [k.split()[-2] for k in keys] == ["blas=1", "blas=2"]
    assert keys[0].split()[:-2] == keys[1].split()[:-2]


# ---------------------------------------------------------------- keys and new arguments


def test_the_key_holds_every_geometry_field_and_the_options():
    """Fields a later geometry adds (dilation, groups, four-sided padding) key the cache
    without a change here; so do non-default options."""
    x, w, b = _conv_args()
    g = conv_geometry(x, w, b, 1, 1)
    key = tuning.conv_key(g)
    assert key.startswith("conv2d x=2x6x6x8 w=3x3x8x4 stride=1,1 ")
    assert "ph=1" in key and "has_bias=True" in key and "dtype=float64" in key

    @dataclasses.dataclass(frozen=True)
    class Grown(ConvGeometry):
        spare: int = 1

    grown = Grown(**dataclasses.asdict(g), spare=2)
    assert tuning.conv_key(grown) == key + " spare=2"
    assert tuning.conv_key(g, {"dilation": 2}) == key + " dilation=2"


def test_default_options_are_not_passed_on():
    assert tuning.non_default(dilation=(1, 1), groups=(1, 1)) == {}
    assert tuning.non_default(dilation=((1, 1), 1), padding=((0, 0), 0)) == {}
    assert tuning.non_default(groups=(1.0, 1), ceil_mode=(0, False)) == {
        "groups": 1.0,
        "ceil_mode": 0,
    }
    assert tuning.non_default(dilation=((2, 1), 1), ceil_mode=(True, False)) == {
        "dilation": (2, 1),
        "ceil_mode": True,
    }


@pytest.mark.parametrize("option", [{"dilation": 2}, {"groups": 2}])
def test_a_dilated_or_grouped_conv_runs_on_the_backends_that_take_it(cached, option):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 9, 9, 4))
    w = rng.standard_normal((3, 3, 4 // option.get("groups", 1), 4))
    try:
        y_ref, ctx_ref = naive.conv2d_forward(x, w, None, 1, 1, **option)
    except TypeError:
        pytest.skip(f"the backends do not take {option} yet")
    y, ctx = cached.conv2d_forward(x, w, None, 1, 1, **option)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    for got, ref in zip(cached.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref)):
        if ref is not None:
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
    (key,) = cached.choices()
    assert f"{next(iter(option))}={next(iter(option.values()))}" in key


@pytest.mark.parametrize(
    "op, option",
    [
        ("maxpool2d", {"ceil_mode": True}),
        ("avgpool2d", {"padding": 1}),
        ("avgpool2d", {"padding": 1, "count_include_pad": False}),
    ],
)
def test_pool_options_run_on_the_backends_that_take_them(cached, op, option):
    x = np.random.default_rng(7).standard_normal((2, 7, 7, 3))
    try:
        y_ref, _ = getattr(naive, f"{op}_forward")(x, 2, None, **option)
    except TypeError:
        pytest.skip(f"the backends do not take {option} yet")
    y, _ = getattr(cached, f"{op}_forward")(x, 2, None, **option)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    (key,) = cached.choices()
    assert all(f"{name}={value}" in key for name, value in option.items())


@pytest.mark.parametrize("option", [{"dilation": 2}, {"groups": 2}])
def test_the_pair_declines_a_dilated_or_grouped_conv(cached, option):
    x, w, b = _pair_args()
    assert cached.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None, **option) is None
    assert not cached.choices()  # declined before anything was timed


# ---------------------------------------------------------------- conv + max-pool pair


def _pair_args(c_in=1, c_out=16):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 12, 12, c_in)).astype(np.float32)
    w = rng.standard_normal((3, 3, c_in, c_out)).astype(np.float32)
    return x, w, rng.standard_normal(c_out).astype(np.float32)


def test_a_conv_and_its_pool_are_timed_as_a_pair(cached):
    """numba's fused conv + max-pool is timed against the two layers on their own choices; the
    fused result, when chosen, is the two calls' result."""
    x, w, b = _pair_args()
    fused = cached.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    (key,) = [k for k in cached.choices() if k.startswith("conv2d+maxpool2d")]
    record = cached.choices()[key]
    assert record["source"] == "timed" and set(record["seconds"]) == {auto.FUSED, auto.SEPARATE}
    assert (fused is not None) == (record["backend"] == auto.FUSED)
    assert key in json.loads(cached.cache_path().read_text())["choices"]
    y_conv, _ = naive.conv2d_forward(x, w, b, 1, 1)
    y_ref, _ = naive.maxpool2d_forward(y_conv, 2)
    if fused is not None:
        np.testing.assert_allclose(fused[0], y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("faster", [auto.FUSED, auto.SEPARATE])
def test_the_pair_runs_as_its_timing_says(cached, monkeypatch, faster):
    def fake(runs, key):
        for run in runs.values():
            run()  # every candidate still runs: it must work
        return {name: 1.0 if name in (faster, "numba") else 2.0 for name in runs}

    monkeypatch.setattr(tuning_policy, "time_candidates", fake)
    x, w, b = _pair_args()
    fused = cached.conv2d_maxpool2d_forward(x, w, b, 1, 1, 2, None)
    assert (fused is not None) == (faster == auto.FUSED)
    if fused is not None:
        assert (fused[1].backend, fused[2].backend) == ("numba", "numba")


def test_a_pair_numba_does_not_fuse_is_not_timed(cached, monkeypatch):
    calls = []
    real = tuning_policy.time_candidates
    monkeypatch.setattr(
        tuning_policy, "time_candidates", lambda r, k: calls.append(k) or real(r, k)
    )
    x, w, b = _pair_args()
    assert cached.conv2d_maxpool2d_forward(x, w, b, 1, 1, 3, None) is None  # a 3x3 pool
    (record,) = [v for k, v in cached.choices().items() if k.startswith("conv2d+maxpool2d")]
    assert record == {"backend": auto.SEPARATE, "seconds": {}, "source": "only choice"}
    assert not [k for k in calls if k.startswith("conv2d+maxpool2d")]


# ---------------------------------------------------------------- passes on two backends

SPLIT_SHAPES = [  # x shape, w shape, stride, padding
    ((2, 10, 10, 16), (3, 3, 16, 16), 1, 1),  # winograd's fused path; numba's tiles
    ((2, 9, 8, 1), (3, 3, 1, 4), 1, 1),  # numba's plane kernels; winograd's batched path
    ((2, 9, 9, 3), (2, 2, 3, 16), 2, 0),  # winograd's fallback (stride 2, 2x2)
]
# winograd's batched path keeps the forward's transformed tiles: it has no ctx built from the
# inputs, so a backward on it never follows another backend's forward. Which layers take it
# depends on winograd's thresholds (channels, the L2 size): these are the candidates.
BATCHED_CANDIDATES = [
    ((2, 9, 8, 1), (3, 3, 1, 4), 1, 1),
    ((1, 6, 6, 256), (3, 3, 256, 256), 1, 1),
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
    if rebuilt is None:
        assert name == "winograd" and own.path.startswith("winograd F(")
        pytest.skip("winograd's batched path: no ctx from the inputs (the next test's subject)")
    dy = rng.standard_normal(y.shape)
    for got, want in zip(be.conv2d_backward(dy, rebuilt), be.conv2d_backward(dy, own)):
        np.testing.assert_array_equal(got, want)


def test_winograds_batched_path_has_no_ctx_from_the_inputs_and_is_never_split_onto(
    cached, monkeypatch
):
    from kernels import get_backend

    winograd = get_backend("winograd")
    rng = np.random.default_rng(4)
    for x_shape, w_shape, stride, padding in BATCHED_CANDIDATES:
        x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), None
        _, own = winograd.conv2d_forward(x, w, b, stride, padding)
        if own.path.startswith("winograd F("):
            break
    else:
        pytest.skip("no candidate layer takes winograd's batched path on this machine")
    assert winograd.conv2d_backward_ctx(x, w, b, stride, padding) is None
    # its backward timed fastest of all, its forward slowest: it is not chosen for the
    # backward after numba's forward, though that mix would be the fastest on paper

    def fake(runs, key):
        forward = {r.func.__name__ for r in runs.values()} == {"conv2d_forward"}
        fast, slow = (5.0, 1.0) if forward else (0.1, 1.0)
        return {n: fast if n == "winograd" else slow for n in runs}

    monkeypatch.setattr(tuning_policy, "time_candidates", fake)
    _, ctx = cached.conv2d_forward(x, w, b, stride, padding)
    assert ctx.backend != "winograd"


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", SPLIT_SHAPES)
@pytest.mark.parametrize(
    "forward, backward", [("winograd", "numba"), ("im2col", "numba"), ("numba", "winograd")]
)
def test_passes_on_two_backends_match_naive(
    cached, monkeypatch, forward, backward, x_shape, w_shape, stride, padding
):
    """Every mix auto can choose; a cached mix a shape cannot run (a backward on winograd's
    batched path) runs B's own forward for the ctx, and still matches."""
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[3])
    monkeypatch.setattr(auto, "_conv_choice", lambda *args: (forward, backward))
    y, ctx = cached.conv2d_forward(x, w, b, stride, padding)
    assert (ctx.forward, ctx.backend) == (forward, backward)
    y_ref, ctx_ref = naive.conv2d_forward(x, w, b, stride, padding)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(cached.conv2d_backward(dy, ctx), naive.conv2d_backward(dy, ctx_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


PASS_TIMES = {  # seconds per pass: a mix winograd forward + numba backward is predicted best
    "forward": {"winograd": 1.0, "numba": 2.0, "im2col": 3.0, "einsum": 9.0},
    "backward": {"winograd": 5.0, "numba": 2.0, "im2col": 0.5, "einsum": 9.0},
}
MIX = "winograd forward, numba backward"


def _fake_timer(passes, whole_times):
    """A time_candidates that tells the kinds of runs apart, records each, and runs the whole
    sequences once (they must work)."""

    def timed(runs, key):
        if any(" forward, " in name for name in runs):
            passes.append("whole")
            for run in runs.values():
                run()
            return {name: whole_times[name] for name in runs}
        names = {r.func.__name__ for r in runs.values()}
        kind = "forward" if names == {"conv2d_forward"} else "backward"
        passes.append(kind)
        return {name: PASS_TIMES[kind][name] for name in runs}

    return timed


def _mixable_args():
    x, w, b = _conv_args(c_in=16)
    return x, np.concatenate([w] * 4, axis=3), np.concatenate([b] * 4)  # winograd's fused path


@pytest.mark.parametrize("whole_winner", [MIX, "im2col"])
def test_a_mix_is_chosen_only_when_faster_timed_as_it_runs(cached, monkeypatch, whole_winner):
    """The passes timed apart propose winograd forward + numba backward (1 + 2; im2col's faster
    backward cannot follow another forward); timed as one call sequence against the best single
    backend, im2col (3 + 0.5), it is chosen only if it wins there too."""
    passes = []
    whole = {MIX: 1.0, "im2col": 2.0} if whole_winner == MIX else {MIX: 2.0, "im2col": 1.0}
    monkeypatch.setattr(tuning_policy, "time_candidates", _fake_timer(passes, whole))
    x, w, b = _mixable_args()
    _, ctx = cached.conv2d_forward(x, w, b, 1, 1)
    assert passes == ["forward", "backward", "whole"]
    (record,) = cached.choices().values()
    assert auto.describe(record) == whole_winner
    assert record["whole_seconds"] == whole
    assert record["seconds"]["im2col"] == 3.5 and record["forward_seconds"]["numba"] == 2.0
    assert (ctx.forward, ctx.backend) == (
        ("winograd", "numba") if whole_winner == MIX else ("", "im2col")
    )


def test_no_mix_predicted_faster_is_not_timed_whole(cached, monkeypatch):
    passes = []
    monkeypatch.setitem(PASS_TIMES, "backward", {**PASS_TIMES["backward"], "winograd": 1.5})
    monkeypatch.setattr(tuning_policy, "time_candidates", _fake_timer(passes, {}))
    x, w, b = _mixable_args()
    cached.conv2d_forward(x, w, b, 1, 1)
    assert passes == ["forward", "backward"]
    (record,) = cached.choices().values()
    assert auto.describe(record) == "winograd" and "whole_seconds" not in record


def test_a_candidate_is_not_charged_for_what_the_one_before_left_behind(monkeypatch):
    """A run that slows whatever runs next (OpenBLAS's spinning workers after an im2col call)
    must not make the candidate timed after it look slow: each timed call follows an untimed
    call of the same run."""
    clock = [0.0]
    monkeypatch.setattr(tuning_policy, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    last = [None]

    def run_of(name, cost):
        def run():
            slowed = last[0] == "blas" and name != "blas"
            clock[0] += cost + (10.0 if slowed else 0.0)
            last[0] = name

        return run

    seconds = tuning_policy.time_candidates(
        {"blas": run_of("blas", 2.0), "tiles": run_of("tiles", 1.0)}, "k"
    )
    assert seconds == {"blas": 2.0, "tiles": 1.0}
