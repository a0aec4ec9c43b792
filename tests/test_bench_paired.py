"""The paired section (bench/paired.py): rounds rotate who trains first, each round's ratio is
against the faster PyTorch layout of that round, and a missing participant is a reason, not a
crash. Timings are stand-ins here: no wall clock is judged."""

from __future__ import annotations

import itertools

import pytest
from bench_helpers import Bar

from bench import markdown, paired
from bench.context import Context, Options
from bench.status import OK
from bench.suite import resolve_options


@pytest.mark.parametrize("backends", [["auto", "numba"], ["auto"]])
def test_rounds_rotate_so_each_takes_every_position_alike(backends):
    names = paired.participants(backends)
    assert names[0] == paired.OURS and (paired.SINGLE in names) == (paired.SINGLE in backends)
    orders = [paired.round_order(r, names) for r in range(len(names))]
    for position in range(len(names)):
        assert sorted(o[position] for o in orders) == sorted(names)
    assert paired.round_order(len(names), names) == paired.round_order(0, names)


def test_each_round_is_against_that_rounds_faster_layout():
    ours = [1.0, 2.0, 3.0]
    peer = {"torch": [2.0, 2.0, 10.0], "torch_cl": [4.0, 1.0, 6.0]}
    assert paired.ratios(ours, peer) == [0.5, 2.0, 0.5]


def _ctx(backends, peer_status, quick=True):
    opts = resolve_options(Options(quick=quick, backends=backends, peers=True))
    return Context(opts, backends, peers=peer_status, bar=Bar())


def test_run_times_every_participant_every_round(monkeypatch, mnist_dir):
    calls = []
    seconds = itertools.count(1.0)

    def ours(name, arch, x, *rest):
        calls.append((arch, name, len(x)))
        return {"seconds": next(seconds)}

    def peer(name, arch, x, *rest):
        calls.append((arch, name, len(x)))
        return {"seconds": next(seconds)}

    monkeypatch.setattr(paired, "epoch_run", ours)
    monkeypatch.setattr(paired.peers, "epoch_run", peer)
    ctx = _ctx(["auto", "numba"], {p: OK for p in paired.PEERS})
    ctx.opts.data_dir = str(mnist_dir)
    res = paired.run(ctx)
    assert ctx.bar.steps == paired.steps(ctx.opts, ctx.backends)
    assert res["rounds"] == paired.QUICK_ROUNDS
    for arch in res["archs"]:
        assert arch["status"] == OK
        assert len(arch["ours"]) == len(arch["ratios"]) == paired.QUICK_ROUNDS
        assert arch["ratios"] == pytest.approx(paired.ratios(arch["ours"], arch["peer"]))
        single = arch["single"]
        assert len(single["seconds"]) == paired.QUICK_ROUNDS
        assert single["ratios"] == pytest.approx(
            [o / s for o, s in zip(arch["ours"], single["seconds"])]
        )
        n = paired.QUICK_ROUND_BATCHES[arch["arch"]] * 64
        mine = [c for c in calls if c[0] == arch["arch"]]
        assert {c[2] for c in mine} == {n}  # the same batches for all
        assert sorted(c[1] for c in mine) == sorted(
            paired.participants(ctx.backends) * paired.QUICK_ROUNDS
        )
    text = markdown.paired_section({"paired": res})
    assert "`small` (20 batches, momentum)" in text and "auto / numba" in text


def test_without_the_single_backend_its_column_is_left_out(monkeypatch, mnist_dir):
    monkeypatch.setattr(paired, "epoch_run", lambda *a: {"seconds": 1.0})
    monkeypatch.setattr(paired.peers, "epoch_run", lambda *a: {"seconds": 2.0})
    ctx = _ctx(["auto"], {p: OK for p in paired.PEERS})
    ctx.opts.data_dir = str(mnist_dir)
    res = paired.run(ctx)
    assert all(a["status"] == OK and "single" not in a for a in res["archs"])
    text = markdown.paired_section({"paired": res})
    assert "0.50×" in text and "auto / numba" not in text


def test_without_pytorch_or_auto_the_section_says_why(mnist_dir):
    ctx = _ctx(["auto"], {"torch": "not installed", "torch_cl": "not installed"})
    ctx.opts.data_dir = str(mnist_dir)
    res = paired.run(ctx)
    assert {a["status"] for a in res["archs"]} == {"torch: not installed; torch_cl: not installed"}
    assert ctx.bar.steps == paired.steps(ctx.opts, ctx.backends)
    assert "torch: not installed" in markdown.paired_section({"paired": res})
    ctx = _ctx(["im2col"], {p: OK for p in paired.PEERS})
    ctx.opts.data_dir = str(mnist_dir)
    assert {a["status"] for a in paired.run(ctx)["archs"]} == {
        "auto is not among the usable backends"
    }


def test_a_failing_run_is_reported_in_its_row(monkeypatch, mnist_dir):
    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(paired, "epoch_run", broken)
    ctx = _ctx(["auto"], {p: OK for p in paired.PEERS})
    ctx.opts.data_dir = str(mnist_dir)
    res = paired.run(ctx)
    assert all("out of memory" in a["status"] for a in res["archs"])
    assert ctx.bar.steps == paired.steps(ctx.opts, ctx.backends)
