"""Data-parallel training over MPI (model/distributed.py): `mpiexec -n 2 ... --distributed` gives
the weights one process gets with the same global batch (batch norm and dropout included), a
failing rank ends the job with rank 0's message and leaves the last checkpoint intact, and a
missing mpi4py is a clear error. Each run is a subprocess with a timeout, so a hang fails."""

import builtins
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from model_helpers import write_mnist_dir

from model import train as train_cli
from model.network import load_network

ROOT = Path(__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpirun")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or __import__("importlib").util.find_spec("mpi4py") is None,
    reason='needs mpi4py and mpiexec (pip install -e ".[mpi]")',
)


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_mnist_dir(tmp_path_factory.mktemp("mnist"))


def train(mnist_dir, out, *extra, ranks=None, env=None):
    """python -m model.train on tiny data, under `mpiexec -n ranks` when ranks is given."""
    command = [sys.executable, "-m", "model.train", "--data-dir", str(mnist_dir), "--out", str(out)]
    command += ["--no-progress", "--train-limit", "160", *map(str, extra)]
    if ranks:
        command = [MPIEXEC, "-n", str(ranks), *command, "--distributed"]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def relative_differences(a_path, b_path):
    a, b = load_network(a_path).state_arrays(), load_network(b_path).state_arrays()
    assert set(a) == set(b)
    return {k: float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-12)) for k in a}


@needs_mpi
@pytest.mark.parametrize(
    "arch, options",
    [
        ("small", ("--optimizer", "momentum")),
        # batch norm (synchronised), dropout (masks drawn for the whole batch), augmentation;
        # 160 images make a last batch of 32, split 16 + 16
        ("deep", ("--optimizer", "adam", "--augment")),
    ],
)
def test_two_ranks_give_one_process_weights(tmp_path, mnist_dir, arch, options):
    args = ("--arch", arch, "--epochs", 2, *options)
    single = train(mnist_dir, tmp_path / "one", *args)
    assert single.returncode == 0, single.stderr
    double = train(mnist_dir, tmp_path / "two", *args, ranks=2)
    assert double.returncode == 0, double.stderr
    # float32, summed in another order: a few units in the last place per step
    worst = max(
        relative_differences(tmp_path / "two" / "last.npz", tmp_path / "one" / "last.npz").values()
    )
    assert worst < 1e-3, worst
    # rank 0 alone prints and writes, and says how many ranks ran
    assert double.stdout.count("Experiment completed!") == 1
    assert double.stdout.count("Distributed: 2 ranks (MPI)") == 1
    assert json.loads((tmp_path / "two" / "history.json").read_text())["ranks"] == 2
    assert "ranks" not in json.loads((tmp_path / "one" / "history.json").read_text())
    one_lines = [line for line in single.stdout.splitlines() if line.startswith("Epoch 2/2")]
    two_lines = [line for line in double.stdout.splitlines() if line.startswith("Epoch 2/2")]
    assert (
        len(two_lines) == 1
        and two_lines[0].split("Time")[0][:40] == one_lines[0].split("Time")[0][:40]
    )


@needs_mpi
def test_a_failing_rank_ends_the_job_and_keeps_the_last_checkpoint(tmp_path, mnist_dir):
    out = tmp_path / "run"
    first = train(mnist_dir, out, "--epochs", 1, ranks=2)
    assert first.returncode == 0, first.stderr
    before = (out / "last.npz").read_bytes()
    # 160 images, batch 64: 3 steps an epoch; rank 1 fails at step 4, in the second epoch
    failed = train(
        mnist_dir, out, "--epochs", 3, "--resume", out / "last.npz", ranks=2,
        env={"CONVBENCH_FAIL_AT": "1:4"},
    )  # fmt: skip
    assert failed.returncode != 0
    assert "rank 1/2: RuntimeError: CONVBENCH_FAIL_AT=1:4" in failed.stderr
    assert "error: 1 rank failed in a training step" in failed.stderr
    assert f"The last good checkpoint is {out / 'last.npz'}" in failed.stderr
    assert (out / "last.npz").read_bytes() == before
    assert load_network(out / "last.npz").meta["epoch"] == 1


def test_distributed_without_mpi4py_names_the_extra(monkeypatch, capsys, mnist_dir):
    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    code = train_cli.main(["--distributed", "--data-dir", str(mnist_dir), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install -e ".[mpi]"' in err and err.count("\n") == 1


def interrupt_a_distributed_run(mnist_dir, out, delay):
    """Start a two-rank run in a process group of its own, send the group SIGINT `delay`
    seconds into the first epoch, and return (exit status or None for a hang, stdout)."""
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "model.train", "--distributed"]
    command += ["--data-dir", str(mnist_dir), "--out", str(out), "--no-progress"]
    command += ["--epochs", "1000", "--compile", "wait"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    job = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    printed = []
    for line in job.stdout:
        printed.append(line)
        if line.startswith("Epoch 1/"):
            break
    time.sleep(delay)
    os.killpg(job.pid, signal.SIGINT)
    try:
        rest, _ = job.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        rest, _ = job.communicate()
        return None, "".join(printed) + rest
    return job.returncode, "".join(printed) + rest


@needs_mpi
@pytest.mark.slow
def test_ctrl_c_stops_every_rank_at_the_same_step(tmp_path, mnist_dir):
    """Ctrl-C of a two-rank job: every rank stops after the same step, rank 0 saves
    interrupted.npz, and the job exits 130 (a rank that raised KeyboardInterrupt where the
    signal landed left the other in an Allreduce: a hang in about one try in six). The delays
    spread the signal over the step's phases."""
    for attempt, delay in enumerate(np.linspace(0.0, 0.5, 10)):
        out = tmp_path / f"run{attempt}"
        code, printed = interrupt_a_distributed_run(mnist_dir, out, delay)
        assert code == 130, f"attempt {attempt}: {'hung' if code is None else code}\n{printed}"
        assert printed.count("Interrupted: saved") == 1, printed
        meta = load_network(out / "interrupted.npz").meta
        assert meta["interrupted"] is True


@needs_mpi
def test_an_unwritable_out_ends_every_rank_with_one_line(tmp_path, mnist_dir):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    job = train(mnist_dir, blocker / "run", ranks=2)
    assert job.returncode == 2 and "Epoch" not in job.stdout
    assert job.stderr.count("error: --out") == 1 and "cannot be created" in job.stderr
