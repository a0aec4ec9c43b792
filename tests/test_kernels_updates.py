"""kernels/updates.py: the fused optimizer updates equal model/optim.py's NumPy arithmetic bit
for bit."""

from __future__ import annotations

import numpy as np
import pytest

from model import optim


def _train(name, dtype, fused: bool, monkeypatch):
    calls = []
    real = optim._compiled
    with monkeypatch.context() as patch:
        patch.setattr(
            optim, "_compiled", lambda *a: calls.append(real(*a) if fused else None) or calls[-1]
        )
        opt = optim.make_optimizer(name, weight_decay=0.01)
        rng = np.random.default_rng(0)
        p = rng.standard_normal((300, 7)).astype(dtype)
        for _ in range(6):
            opt.step([("w", p, rng.standard_normal((300, 7)).astype(dtype) * 10, True)])
    assert all((c is not None) == fused for c in calls) and calls
    return p, opt.state["w"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_fused_update_is_bit_identical_to_numpy(name, dtype, monkeypatch):
    p_fused, state_fused = _train(name, dtype, True, monkeypatch)
    p_plain, state_plain = _train(name, dtype, False, monkeypatch)
    assert p_fused.dtype == dtype
    np.testing.assert_array_equal(p_fused, p_plain)
    for slot, state in state_fused.items():
        np.testing.assert_array_equal(state, state_plain[slot])


def test_non_contiguous_arrays_take_the_numpy_path():
    p = np.zeros((4, 4), np.float32)
    assert optim._compiled(p, np.zeros((4, 4), np.float32)) is not None
    assert optim._compiled(p, np.zeros((4, 4), np.float32).T) is None
    assert optim._compiled(p, np.zeros((4, 4), np.float64)) is None
