"""auto's timing policy (kernels/tuning_policy.py): interleaved rounds, a failing candidate
dropped, close calls timed again, the fastest kept."""

from __future__ import annotations

import pytest

from kernels import tuning_policy as policy


def test_candidates_are_timed_in_rounds_and_a_failing_one_is_dropped():
    order = []

    def make(name, fails=False):
        def run():
            order.append(name)
            if fails:
                raise ValueError("cannot")

        return run

    with pytest.warns(RuntimeWarning, match="autotune: b failed"):
        seconds = policy.time_candidates(
            {"a": make("a"), "b": make("b", True), "c": make("c")}, "k"
        )
    assert seconds["b"] is None and seconds["a"] >= 0 and seconds["c"] >= 0
    # one warm-up call each, then rounds of a, c (each timed call after an untimed one of the
    # same candidate): never all of one candidate's samples in a row
    assert order[:3] == ["a", "b", "c"]
    assert order[3:] == ["a", "a", "c", "c"] * policy.TIMING_REPEATS


def test_a_close_call_is_timed_again_and_keeps_each_best(monkeypatch):
    """The two best within CLOSE_CALL are timed again (CLOSE_CALL_ROUNDS sets of rounds) and
    keep their best; a clear winner, or a lone candidate, is not re-timed."""
    rounds = []
    later = {"a": 5.0, "b": 1.0}  # b is faster in the later rounds

    def fake(runs, key):
        rounds.append(sorted(runs))
        return {name: later[name] for name in runs}

    monkeypatch.setattr(policy, "time_candidates", fake)
    runs = {"a": None, "b": None, "c": None}
    first = {"a": 2.0, "b": 2.2, "c": 9.0, "d": None}  # d failed: not a choice
    settled = policy.settle_close_call(runs, first, "k")
    assert rounds == [["a", "b"]] * policy.CLOSE_CALL_ROUNDS
    assert settled == {"a": 2.0, "b": 1.0, "c": 9.0, "d": None}
    rounds.clear()
    clear = {"a": 1.0, "b": 1.0 * policy.CLOSE_CALL * 1.01, "c": 9.0}
    assert policy.settle_close_call(runs, clear, "k") == clear and not rounds
    assert policy.settle_close_call(runs, {"a": 1.0, "b": None}, "k") == {"a": 1.0, "b": None}
    assert not rounds


def test_fastest_names_the_winner_and_a_lone_run_is_not_timed(monkeypatch):
    monkeypatch.setattr(policy, "time_candidates", lambda runs, key: {"a": 2.0, "b": 1.0})
    assert policy.fastest({"a": None, "b": None}, "k") == {
        "backend": "b",
        "seconds": {"a": 2.0, "b": 1.0},
    }
    assert policy.fastest({"a": None}, "k") == {"backend": "a", "seconds": {}}


def test_fastest_with_no_runnable_candidate_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(policy, "time_candidates", lambda runs, key: dict.fromkeys(runs))
    with pytest.raises(RuntimeError, match="autotune: no backend could run k"):
        policy.fastest({"a": None, "b": None}, "k")


def test_a_hopeless_candidate_is_not_timed_after_the_first_round(monkeypatch):
    """A candidate more than HOPELESS times slower than the best in the first round keeps that
    time and is not called again; the others run every round."""
    import types

    clock = [0.0]
    monkeypatch.setattr(policy, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    order = []

    def make(name, cost):
        def run():
            order.append(name)
            clock[0] += cost

        return run

    slow_cost = 1.5 * policy.HOPELESS
    near_cost = 0.9 * policy.HOPELESS
    seconds = policy.time_candidates(
        {
            "fast": make("fast", 1.0),
            "slow": make("slow", slow_cost),
            "near": make("near", near_cost),
        },
        "k",
    )
    assert order.count("slow") == 3  # the warm-up call, then one untimed and one timed
    assert order.count("fast") == order.count("near") == 1 + 2 * policy.TIMING_REPEATS
    assert seconds == pytest.approx({"fast": 1.0, "slow": slow_cost, "near": near_cost})
