"""model/warmup.py and kernels/jitcache.py: a compiling backend's kernels are loaded when cached,
compiled first with --compile wait, and otherwise compiled by a child process while training
runs on the stand-in backend, moving over between two layer calls without changing the numbers
beyond float32 rounding."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from model_helpers import separable_data

from kernels import get_backend, jitcache, numba_jit
from model import train as train_cli
from model import warmup
from model.losses import softmax_cross_entropy
from model.network import build_network
from model.optim import SGD

REPO = Path(__file__).resolve().parents[1]


def fake_backend(name, events, cached):
    """einsum's functions under another name, with a warmup that records its calls."""
    einsum = get_backend("einsum")
    return SimpleNamespace(
        **{f: getattr(einsum, f) for f in dir(einsum) if f.endswith(("_forward", "_backward"))},
        warmup=lambda dtypes, ops: events.append(f"warmup {name} {dtypes} {ops}"),
        warmup_cached=lambda dtypes, ops: cached,
    )


class FakeChild:
    """A compiling process that finishes after `polls` polls (or at once when waited for)."""

    def __init__(self, polls, returncode=0):
        self.polls, self.returncode, self.terminated = polls, None, False
        self._code = returncode

    def poll(self):
        self.polls -= 1
        if self.polls < 0:
            self.returncode = self._code
        return self.returncode

    def wait(self):
        self.returncode = self._code
        return self.returncode

    def terminate(self):
        self.terminated = self.returncode is None

    def error(self):
        return "SyntaxError: a test's failure"


def patch_backends(monkeypatch, events, cached=False, child=None):
    real = warmup.get_backend
    monkeypatch.setattr(
        warmup,
        "get_backend",
        lambda name: fake_backend(name, events, cached) if name == "numba" else real(name),
    )
    if child is not None:
        monkeypatch.setattr(warmup, "_Child", lambda *a: child)


def run_cli(capsys, *argv):
    code = train_cli.main([str(a) for a in argv])
    return code, capsys.readouterr().out


CLI = ("--no-progress", "--epochs", 1, "--backend", "numba")


@pytest.mark.parametrize("cached, mode", [(True, "background"), (False, "wait")])
def test_cli_loads_or_compiles_before_training_and_says_so(
    capsys, tmp_path, small_mnist_dir, monkeypatch, cached, mode
):
    events = []
    patch_backends(monkeypatch, events, cached=cached)
    code, stdout = run_cli(
        capsys, "--data-dir", small_mnist_dir, *CLI, "--compile", mode, "--out", tmp_path / "r"
    )
    # only this run's dtype and the ops its layers call
    assert code == 0 and events == [
        f"warmup numba {[np.dtype('float32')]} {['conv2d', 'maxpool2d']}"
    ]
    lines = stdout.splitlines()
    expected = (
        r"loading numba kernels \.\.\. \d+\.\d s"
        if cached
        else r"compiling numba kernels \(first run only\) \.\.\. \d+\.\d s"
    )
    at = next(i for i, line in enumerate(lines) if re.fullmatch(expected, line))
    assert at < next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/1"))
    # one epoch is "1 epoch" wherever it is counted
    assert "1 epochs" not in stdout and "batch 64, 1 epoch" in stdout
    assert "Total time:" in stdout and "for 1 epoch (" in stdout


def test_cli_trains_at_once_while_a_child_compiles(capsys, tmp_path, small_mnist_dir, monkeypatch):
    events, child = [], FakeChild(polls=5)
    patch_backends(monkeypatch, events, child=child)
    code, stdout = run_cli(capsys, "--data-dir", small_mnist_dir, *CLI, "--out", tmp_path / "r")
    assert code == 0
    lines = stdout.splitlines()
    opening = next(i for i, line in enumerate(lines) if "in a background process" in line)
    moved = next(i for i, line in enumerate(lines) if "kernels ready after" in line)
    assert opening < moved < next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/1"))
    # the kernels were loaded in this process once the child had compiled them
    assert events == [f"warmup numba {[np.dtype('float32')]} {['conv2d', 'maxpool2d']}"]


def test_cli_waits_for_the_child_when_training_ends_first(
    capsys, tmp_path, small_mnist_dir, monkeypatch
):
    events, child = [], FakeChild(polls=10**9)
    patch_backends(monkeypatch, events, child=child)
    code, stdout = run_cli(capsys, "--data-dir", small_mnist_dir, *CLI, "--out", tmp_path / "r")
    assert code == 0 and "training ended before the numba kernels were ready" in stdout
    assert len(events) == 1 and not child.terminated


def steps(net, batches, lr=0.05):
    optimizer = SGD(lr=lr)
    losses = []
    for xb, yb in batches:
        loss, dlogits = softmax_cross_entropy(net.forward(xb, training=True), yb)
        losses.append(loss)
        net.backward(dlogits)
        net.update(optimizer)
    return losses


def test_the_move_keeps_the_numbers_and_each_backward_goes_to_its_forwards_backend(monkeypatch):
    x, y = separable_data(6 * 32, seed=2)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    reference = steps(build_network("deep", backend="im2col", seed=1), batches)

    events, child = [], FakeChild(polls=7)  # 4 kernel layers: moves in the second forward
    patch_backends(monkeypatch, events, child=child)
    net = build_network("deep", backend="im2col", seed=1)
    proxy = warmup.prepare_backend(net, "numba", np.float32, move_log=events.append)
    assert isinstance(proxy, warmup.CompilingBackend) and not proxy.moved
    assert {layer.backend_name for layer in net.layers if hasattr(layer, "backend")} == {"numba"}
    moved = steps(net, batches)
    assert proxy.moved and any("kernels ready after" in e for e in events)
    np.testing.assert_allclose(moved, reference, rtol=1e-5)


def test_after_the_move_the_fused_conv_pool_runs_on_the_target(monkeypatch):
    """The compiling proxy passes Conv2D + MaxPool2D's fused forward to numba once it has moved
    (the stand-in has none: the two calls run), and each backward, fused or not, to the backend
    that made its ctx: the same losses as the network built on numba."""
    numba_be = get_backend("numba")
    x, y = separable_data(4 * 32, seed=2)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, len(x), 32)]
    reference = steps(build_network("small", backend="numba", seed=1), batches)

    fused_runs = []

    def fused(*args):
        result = numba_be.conv2d_maxpool2d_forward(*args)
        fused_runs.append(result is not None)
        return result

    target = SimpleNamespace(
        **{f: getattr(numba_be, f) for f in dir(numba_be) if f.endswith(("_forward", "_backward"))},
        warmup=lambda dtypes, ops: None,
        warmup_cached=lambda dtypes, ops: False,
    )
    backward_runs = []

    def fused_backward(*args):
        result = numba_be.conv2d_maxpool2d_backward(*args)
        backward_runs.append(result is not None)
        return result

    target.conv2d_maxpool2d_forward = fused
    target.conv2d_maxpool2d_backward = fused_backward
    real = warmup.get_backend
    monkeypatch.setattr(warmup, "get_backend", lambda n: target if n == "numba" else real(n))
    monkeypatch.setattr(warmup, "_Child", lambda *a: FakeChild(polls=2))  # moves in batch 2
    net = build_network("small", backend="im2col", seed=1)
    proxy = warmup.prepare_backend(net, "numba", np.float32, move_log=lambda line: None)
    moved = steps(net, batches)
    assert proxy.moved and fused_runs and all(fused_runs)
    assert backward_runs and all(backward_runs)
    np.testing.assert_allclose(moved, reference, rtol=1e-5)


def test_a_failed_child_compiles_here_and_says_why(monkeypatch):
    events, child = [], FakeChild(polls=0, returncode=1)
    patch_backends(monkeypatch, events, child=child)
    net = build_network("small", backend="im2col", seed=0)
    proxy = warmup.prepare_backend(net, "numba", np.float32, move_log=events.append)
    net.forward(np.zeros((2, 28, 28, 1), np.float32))
    assert proxy.moved and "failed (SyntaxError: a test's failure)" in events[0]
    assert events[1].startswith("warmup numba")


def test_a_backend_that_compiles_nothing_needs_no_preparation():
    net = build_network("small", backend="im2col")
    assert warmup.prepare_backend(net, "im2col", np.float32) is None
    with pytest.raises(ValueError, match="compile mode must be one of background, wait"):
        warmup.prepare_backend(net, "numba", np.float32, mode="later")


@pytest.mark.slow  # a real cold compile in a child process
def test_the_child_compiles_into_the_disk_cache(tmp_path):
    """A real child process: numba's average pool in float64 (small, quick to compile)."""
    child = warmup._Child("numba", [np.float64], ["avgpool2d"])
    assert child.wait() == 0, child.error()
    assert numba_jit.warmup_cached([np.float64], ["avgpool2d"])


def test_cache_markers_follow_sources_dtypes_and_ops(tmp_path):
    source = tmp_path / "kernel_source.py"
    source.write_text("x = 1\n")
    dispatcher = numba_jit._maxpool_forward
    args = (dispatcher, [str(source)])
    markers = jitcache._markers(*args, [np.float32, np.float64], ["conv2d", "maxpool2d"])
    try:
        assert not jitcache.is_cached(*args, [np.float32], ["conv2d"])
        jitcache.mark_cached(*args, [np.float32, np.float64], ["conv2d", "maxpool2d"])
        assert jitcache.is_cached(*args, [np.float32], ["conv2d"])  # a subset is covered
        assert jitcache.is_cached(*args, [np.float64], ["conv2d", "maxpool2d"])
        assert not jitcache.is_cached(*args, [np.float32], ["avgpool2d"])
        source.write_text("x = 22\n")  # an edited source: numba recompiles, so not cached
        os.utime(source, ns=(1, 1))
        assert not jitcache.is_cached(*args, [np.float32], ["conv2d"])
    finally:
        for marker in markers:
            marker.unlink(missing_ok=True)


@pytest.mark.parametrize("arch", ["small", "deep"])
def test_warmup_compiles_every_signature_a_training_step_uses(arch):
    """After warmup(dtype, the network's ops), a training step compiles nothing more: a kernel
    signature warmup misses (a read-only flag, a code path) costs seconds in the first step."""
    import numba

    from kernels import numba_conv

    backend = get_backend("numba")
    backend.warmup([np.float32], sorted(warmup.kernel_ops(build_network(arch))))

    def signatures():
        return {
            (module.__name__, name): len(f.signatures)
            for module in (numba_jit, numba_conv)
            for name, f in vars(module).items()
            if isinstance(f, numba.core.registry.CPUDispatcher)
        }

    before = signatures()
    net = build_network(arch, backend="numba")
    x, y = separable_data(64, seed=0)
    net.train_step(x, y, SGD(lr=0.01))
    net.evaluate(x, y)
    assert signatures() == before


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux's"
)
def test_the_child_dies_with_a_killed_parent(tmp_path):
    """kill -9 of a training run leaves no compiling child behind: the parent here starts a
    child that would sleep for ten minutes, waits until it runs, prints its pid and kills
    itself."""
    started = tmp_path / "started"
    work = f"open({str(started)!r}, 'w').close(); import time; time.sleep(600)"
    parent = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, time; from model import warmup; "
            f"child = warmup._Child('numba', [], [], work={work!r}); "
            f"[time.sleep(0.05) for _ in range(2400) if not os.path.exists({str(started)!r})]; "
            "print(child._proc.pid, flush=True); os.kill(os.getpid(), signal.SIGKILL)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert parent.returncode == -signal.SIGKILL and started.exists()
    child_pid = int(parent.stdout.split()[0])
    for _ in range(300):  # the kernel signals the child at once; allow a loaded machine 30 s
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z":  # reaped later by init
            break
        time.sleep(0.1)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail(f"the compiling child {child_pid} outlived its killed parent")
