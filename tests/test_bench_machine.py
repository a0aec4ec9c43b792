"""What a run records about the machine and where it writes: the busy-machine check, thread
counts and commit, and the default output directory that git ignores."""

import shutil
import subprocess

import pytest

from bench import machine, outdir


def test_a_loaded_machine_is_called_busy(monkeypatch):
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (3.8, 2.0, 1.0))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    got = machine.busy_check(seconds=0.01)
    assert got["load_average"] == [3.8, 2.0, 1.0]
    assert got["busy"].startswith("load average 3.80 on 2 cores")


def test_a_quiet_machine_is_not(monkeypatch):
    monkeypatch.setattr(machine.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(machine, "_cpu_jiffies", lambda: (100, 1000))  # nothing ran meanwhile
    got = machine.busy_check(seconds=0.01)
    assert got["busy"] is None and got["other_cores"] is None


def test_thread_settings_are_recorded():
    threads = machine.thread_settings()
    assert threads["blas"] and all(" " in entry for entry in threads["blas"])
    assert threads["numba"] >= 1


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_commit_measured_is_recorded():
    commit = machine.source_commit()
    assert commit is not None and len(commit.split("+")[0]) >= 7


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_default_output_directory_is_git_ignored():
    probe = outdir.DEFAULT_OUT / "run" / "results.json"
    got = subprocess.run(
        ["git", "-C", str(outdir.REPO), "check-ignore", "-q", str(probe)], capture_output=True
    )
    assert got.returncode == 0, f"{outdir.DEFAULT_OUT} is not in .gitignore"
