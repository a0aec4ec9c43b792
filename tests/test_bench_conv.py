"""bench.problems (benchdnn descriptors, network sets), bench.conv_check (the float64 reference
and tolerances) and bench.conv (rows, summary, the correctness gate, the command line)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import conv, conv_ops
from bench.conv_check import algorithm, inputs, reference, relative_errors, tolerance
from bench.problems import DescriptorError, Problem, available_sets, load_set, parse
from kernels import naive


@st.composite
def problems(draw):
    """Problems of every field combination, small enough that the kernel always fits."""
    g = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    ih = draw(st.integers(max(1, (kh - 1) * (dh + 1) + 1 - 2 * ph), 30))
    iw = draw(st.integers(max(1, (kw - 1) * (dw + 1) + 1 - 2 * pw), 30))
    name = draw(st.sampled_from(["", "net:layer", "resnet50:res2a_branch2b", "a/b_c"]))
    return Problem(
        g=g,
        mb=draw(st.integers(1, 16)),
        ic=g * draw(st.integers(1, 8)),
        ih=ih,
        iw=iw,
        oc=g * draw(st.integers(1, 8)),
        kh=kh,
        kw=kw,
        sh=draw(st.integers(1, 3)),
        sw=draw(st.integers(1, 3)),
        ph=ph,
        pw=pw,
        dh=dh,
        dw=dw,
        name=name,
        count=draw(st.integers(1, 5)) if name else 1,
    )


@given(problems())
def test_descriptor_round_trip(problem):
    assert parse(problem.descriptor()) == problem
    assert parse(problem.descriptor()).descriptor() == problem.descriptor()


def test_benchdnn_defaults():
    p = parse('mb8ic64ih56oc64oh56kh3ph1n"resnet50:res2a_branch2b*3"')
    assert (p.iw, p.kw, p.sh, p.sw, p.pw, p.ow) == (56, 3, 1, 1, 1, 56)
    assert (p.name, p.count, p.label) == ("resnet50:res2a_branch2b", 3, "res2a_branch2b")
    assert p.dilation == (1, 1) and p.w_shape == (3, 3, 64, 64)
    assert p.flops == 2 * 8 * 56 * 56 * 64 * 9 * 64
    assert parse("ic3ih10oc4kh3").mb == 2  # benchdnn's default minibatch


def test_padding_derived_from_output_size():
    # benchdnn: oh given without ph fixes ph; here 'same' padding of a 7x7 stride-2 conv
    p = parse("mb1ic3ih224oc64oh112kh7sh2")
    assert p.ph == 3 and p.pw == 3 and p.ow == 112


def test_dilation_is_benchdnn_minus_one():
    p = parse("mb1ic1ih9oc1kh3dh1")
    assert p.dilation == (2, 2) and p.oh == 5  # taps 2 apart: a 5x5 window


def test_underscores_between_fields_are_ignored():
    assert parse("mb2_ic3_ih8_oc4_kh3") == parse("mb2ic3ih8oc4kh3")


@pytest.mark.parametrize(
    "descriptor, field",
    [
        ("mb2ih8oc4kh3", "ic"),
        ("mb2ic3ih8oc4kh3oh9ph1", "oh"),
        ("mb2ic3ih8oc4kh3xx1", "xx1"),
        ("g2mb2ic3ih8oc4kh3", "g=2"),
        ("mb2ic3ic4ih8oc4kh3", "ic given twice"),
        ("mb2ic3ih2oc4kh3", "oh would be 0"),
        ("mb0ic3ih8oc4kh3", "mb must be >= 1"),
    ],
)
def test_bad_descriptor_names_the_field(descriptor, field):
    with pytest.raises(DescriptorError, match=field):
        parse(descriptor)


def test_network_sets():
    assert {"resnet50", "vgg16", "mobilenetv2", "alexnet", "googlenet"} <= set(available_sets())
    layers = {name: sum(p.count for p in load_set(name)) for name in available_sets()}
    assert layers["resnet50"] == 53 and layers["vgg16"] == 13
    assert layers["mobilenetv2"] == 52 and layers["alexnet"] == 5
    for name in available_sets():
        problems = load_set(name, mb=1)
        assert all(p.name.startswith(f"{name}:") and p.mb == 1 for p in problems)
        assert len({p.descriptor(with_name=False) for p in problems}) == len(problems), name
    depthwise = [p for p in load_set("mobilenetv2") if p.g > 1]
    assert depthwise and all(p.g == p.ic == p.oc for p in depthwise)


def test_unknown_set():
    with pytest.raises(ValueError, match="unknown set 'nope'; available sets: alexnet"):
        load_set("nope")


@pytest.mark.parametrize(
    "descriptor", ["mb2ic3ih9oc4kh3ph1", "mb1ic2ih8iw7oc3kh3kw2sh2ph1pw0", "mb2ic3ih6oc5kh1"]
)
def test_reference_matches_naive(descriptor):
    p = parse(descriptor)
    data = inputs(p, np.float64)
    ref = reference(p, data)
    y, ctx = naive.conv2d_forward(data["x"], data["w"], data["b"], (p.sh, p.sw), (p.ph, p.pw))
    dx, dw, db = naive.conv2d_backward(data["dy"], ctx)
    got = {"y": y, "dx": dx, "dw": dw, "db": db}
    assert max(relative_errors(got, ref).values()) < 1e-12


def test_grouped_reference_is_one_conv_per_group():
    p = parse("g2mb2ic4ih7oc6kh3ph1")
    data = inputs(p, np.float64)
    ref = reference(p, data)
    for group in range(2):
        ci, co = slice(2 * group, 2 * group + 2), slice(3 * group, 3 * group + 3)
        y, ctx = naive.conv2d_forward(data["x"][..., ci], data["w"][..., co], data["b"][co], 1, 1)
        dx, dw, _ = naive.conv2d_backward(np.ascontiguousarray(data["dy"][..., co]), ctx)
        np.testing.assert_allclose(ref["y"][..., co], y, atol=1e-12)
        np.testing.assert_allclose(ref["dx"][..., ci], dx, atol=1e-12)
        np.testing.assert_allclose(ref["dw"][..., co], dw, atol=1e-12)


def test_inputs_are_the_same_in_every_process_and_dtype():
    p = parse("mb2ic3ih9oc4kh3")
    a, b = inputs(p, np.float32), inputs(p, np.float64)
    assert all(np.array_equal(a[k], b[k].astype(np.float32)) for k in a)
    assert a["x"].dtype == np.float32 and b["w"].dtype == np.float64


def test_tolerance_per_algorithm():
    class Ctx:
        path = "winograd F(4x4,3x3)"

    class Outer:
        backend, inner = "winograd", Ctx()

    assert algorithm(Outer()) == "winograd F(4x4)" and algorithm(object()) == "direct"
    assert tolerance("winograd F(4x4)", np.float32) > tolerance("direct", np.float32)
    assert tolerance("winograd F(4x4)", np.float64) == 1e-10


def _rows_in_process(impl, problems, dtype_name="float32", repeat=1):
    """What run() does for one implementation, in this process: setup, samples, timings."""
    rows = []
    for problem in problems:
        row = conv.worker_setup(impl, problem.descriptor(), dtype_name)
        if "algorithm" in row:
            conv._add_timings(row, [conv.worker_sample() for _ in range(repeat)])
        conv.worker_release()
        rows.append(row)
    return rows


def test_rows_check_and_skip():
    descriptors = ['mb2ic3ih8oc4kh3ph1n"t:plain*2"', 'g2mb2ic4ih8oc4kh3ph1n"t:grouped"']
    rows = _rows_in_process("numba", [parse(d) for d in descriptors], repeat=3)
    assert rows[0]["status"] == "ok" and set(rows[0]["seconds"]) >= {"fwd", "bwd_d", "fwd_bwd"}
    assert all(t > 0 for t in rows[0]["seconds"].values() if t) and rows[0]["iqr"]["fwd"] >= 0
    assert max(rows[0]["errors"].values()) <= rows[0]["tolerance"]
    # every backend of ours computes grouped convolutions; the grouped row is timed and checked
    assert rows[1]["status"] == "ok" and max(rows[1]["errors"].values()) <= rows[1]["tolerance"]
    # a backend whose conv2d_forward has no `groups` (a user's) is skipped with the reason
    grouped = parse(descriptors[1])

    def plain_forward(x, w, b=None, stride=1, padding=0):
        raise AssertionError("never called")

    with pytest.raises(conv_ops.Unsupported, match="mine has no grouped convolution"):
        conv_ops._conv_kwargs("mine", plain_forward, grouped)


def test_wrong_answer_fails_the_run(monkeypatch, capsys):
    forward = naive.conv2d_forward

    def off_by_one(x, w, b=None, stride=1, padding=0):
        y, ctx = forward(x, w, b, stride, padding)
        return y + 1, ctx

    monkeypatch.setattr(naive, "conv2d_forward", off_by_one)

    def in_process(problems, impls, dtype_name="float32", repeat=5, progress=True):
        rows = _rows_in_process("naive", problems, dtype_name)
        result = {"peak_gflops": 1.0, "dtype": dtype_name, "rows": rows}
        conv.annotate(result)
        return result

    monkeypatch.setattr(conv, "run", in_process)
    assert conv.main(["mb1ic2ih5oc2kh3", "--backends", "naive", "--peers", ""]) == 1
    out, err = capsys.readouterr()
    assert "| WRONG |" in out and "WRONG answers: naive on mb1ic2ih5oc2oh3kh3ph0" in err


def test_summary_weights_layers_by_count():
    a, b = 'mb1ic1ih5oc1kh3n"n:a*3"', 'mb1ic1ih5oc1kh1n"n:b"'
    result = {
        "peak_gflops": 1.0,
        "rows": [
            {"descriptor": a, "impl": "numba", "status": "ok", "seconds": _s(2.0)},
            {"descriptor": b, "impl": "numba", "status": "ok", "seconds": _s(1.0)},
            {"descriptor": a, "impl": "torch", "status": "ok", "seconds": _s(1.0)},
            {"descriptor": b, "impl": "torch", "status": "ok", "seconds": _s(4.0)},
        ],
    }
    conv.annotate(result)
    numba = conv.summarize(result)[0]
    assert numba["geomean_vs_torch"] == pytest.approx(
        math.exp((3 * math.log(2) + math.log(0.25)) / 4)
    )
    assert numba["max_vs_torch"] == 2.0 and numba["network_seconds"] == pytest.approx(7.0)


def _s(fwd_bwd):
    return {
        "fwd": fwd_bwd / 3,
        "bwd_w": fwd_bwd / 3,
        "bwd": fwd_bwd / 1.5,
        "bwd_d": 0.0,
        "fwd_bwd": fwd_bwd,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        (["mb1ic2ih5oc2kh3zz"], "cannot read 'zz'"),
        (["--set", "nope"], "unknown set 'nope'"),
        (["mb1ic2ih5oc2kh3", "--backends", "fast"], "--backends: unknown fast"),
        (["mb1ic2ih5oc2kh3", "--mb", "0"], "--mb must be >= 1"),
    ],
)
def test_cli_errors_are_one_line(argv, message, capsys):
    assert conv.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_rows_summarise_each_batch_size(monkeypatch):
    calls = []

    def fake_run(problems, impls, dtype_name="float32", repeat=5, progress=True):
        calls.append((problems[0].mb, tuple(impls)))
        rows = [
            {"descriptor": p.descriptor(), "impl": impl, "status": "ok", "seconds": _s(t)}
            for p in problems
            for impl, t in (("numba", 2.0), ("torch", 1.0))
        ]
        result = {"peak_gflops": 1.0, "rows": rows}
        conv.annotate(result)
        return result

    monkeypatch.setattr(conv, "run", fake_run)
    rows = conv.compare_rows("alexnet", batch_sizes=(8, 1), backends=("numba",))
    assert calls == [(8, ("numba", "torch")), (1, ("numba", "torch"))]
    numba = [r for r in rows if r["impl"] == "numba"]
    assert [(r["set"], r["mb"]) for r in numba] == [("alexnet", 8), ("alexnet", 1)]
    assert numba[0]["geomean_vs_torch"] == pytest.approx(2.0)


def test_compare_rows_fail_on_a_wrong_answer(monkeypatch):
    def fake_run(problems, impls, dtype_name="float32", repeat=5, progress=True):
        row = {"descriptor": problems[0].descriptor(), "impl": "numba", "status": "WRONG"}
        return {"peak_gflops": 1.0, "rows": [row]}

    monkeypatch.setattr(conv, "run", fake_run)
    with pytest.raises(RuntimeError, match="alexnet mb8: wrong answers from numba on"):
        conv.compare_rows("alexnet", batch_sizes=(8,), backends=("numba",))
