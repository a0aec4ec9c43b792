"""auto's cache file (kernels/tuning_cache.py) never stops a run: a corrupt or stale file, bad
entries, a path it cannot write, and two runs writing at once."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import warnings

import numpy as np
import pytest

from kernels import auto, naive, tuning, tuning_cache, tuning_policy


@pytest.fixture
def cached(tmp_path, monkeypatch):
    """auto in mode "cached" with an empty cache directory of its own; timing is a stub (every
    candidate still runs once: it must work), so these tests check the file, not the clock."""
    monkeypatch.delenv("CONVBENCH_AUTOTUNE", raising=False)

    def stub(runs, key):
        for run in runs.values():
            run()
        return {name: float(i + 1) for i, name in enumerate(runs)}

    monkeypatch.setattr(tuning_policy, "time_candidates", stub)
    with auto.using(mode="cached", cache_dir=tmp_path):
        yield auto


def _conv_args():
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 6, 6, 8)), rng.standard_normal((3, 3, 8, 4)), None


def _conv_key() -> str:
    """The key auto.conv2d_forward(*_conv_args(), 1, 1) uses under the threads in force."""
    with auto.using(mode="off"):
        auto.conv2d_forward(*_conv_args(), 1, 1)
        (key,) = auto.choices()
    return key


def _write_cache(choices: dict) -> None:
    path = auto.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": tuning_cache.CACHE_VERSION,
        "machine": auto.machine_fingerprint(),
        "choices": choices,
    }
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"version": 1, "machine": {"cpu": "another"}, "choices": {}}), "[]"],
    ids=["corrupt", "stale", "not-a-mapping"],
)
def test_a_bad_cache_file_warns_and_is_rewritten(cached, content):
    path = cached.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="ignoring the autotune cache"):
        cached.conv2d_forward(*_conv_args(), 1, 1)
    assert json.loads(path.read_text())["machine"] == cached.machine_fingerprint()


BAD_ENTRIES = {
    "unknown backend": {"backend": "bogus", "seconds": {"bogus": 1.0}},
    "backward cannot build its ctx": {"backend": "numba", "backward": "im2col", "seconds": {}},
    "not a record": "numba",
    "seconds not a mapping": {"backend": "numba", "seconds": 3},
    "backward not a name": {"backend": "numba", "backward": 7},
}


@pytest.mark.parametrize("record", BAD_ENTRIES.values(), ids=BAD_ENTRIES.keys())
def test_a_bad_entry_is_dropped_with_a_warning_and_timed_again(cached, record):
    key = _conv_key()
    good_key = "maxpool2d " + key.split(" ", 1)[1]  # another key, a valid entry: it is kept
    _write_cache({key: record, good_key: {"backend": "im2col", "seconds": {"im2col": 1.0}}})
    with pytest.warns(RuntimeWarning, match="ignoring 1 bad entry of the autotune cache"):
        y, _ = cached.conv2d_forward(*_conv_args(), 1, 1)
    np.testing.assert_allclose(y, naive.conv2d_forward(*_conv_args(), 1, 1)[0], atol=1e-10)
    assert cached.choices()[key]["source"] == "timed"
    saved = json.loads(cached.cache_path().read_text())["choices"]
    assert tuning.check_entry(key, saved[key]) is None and good_key in saved


def test_an_entry_of_an_unknown_operation_is_dropped(cached):
    _write_cache({"conv3d x=1": {"backend": "numba", "seconds": {}}})
    with pytest.warns(RuntimeWarning, match=r"'conv3d x=1': unknown operation 'conv3d'"):
        cached.conv2d_forward(*_conv_args(), 1, 1)
    assert "conv3d x=1" not in json.loads(cached.cache_path().read_text())["choices"]


def test_a_cache_path_that_is_a_directory_warns_once_and_leaves_no_files(cached, tmp_path):
    cached.cache_path().mkdir(parents=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cached.conv2d_forward(*_conv_args(), 1, 1)
        cached.maxpool2d_forward(np.ones((2, 8, 8, 3)), 2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "choices will not be saved" in messages[0], messages
    assert len(cached.choices()) == 2  # the run went on, its choices in memory
    assert not list(tmp_path.glob("*.tmp")) and not list(cached.cache_path().iterdir())


def test_a_failed_write_warns_once_and_leaves_no_temp_file(cached, tmp_path, monkeypatch):
    def no_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tuning_cache.os, "replace", no_replace)
    with pytest.warns(RuntimeWarning, match="could not write the autotune cache") as caught:
        cached.conv2d_forward(*_conv_args(), 1, 1)
        cached.maxpool2d_forward(np.ones((2, 8, 8, 3)), 2)
    assert len([w for w in caught if "autotune" in str(w.message)]) == 1
    assert not list(tmp_path.glob("*.tmp"))


def _accept(key, record):
    return None


def _write_entries(path, machine, prefix, count):
    """One of two processes: `count` entries merged into the file one save at a time."""
    for i in range(count):
        tuning_cache.save_choices(
            path, machine, {f"{prefix} {i}": {"backend": prefix, "seconds": {}}}, _accept
        )


def test_two_runs_writing_at_once_keep_both_runs_entries(tmp_path):
    path, machine, count = tmp_path / "autotune-test.json", {"cpu": "test"}, 40
    spawn = multiprocessing.get_context("spawn")
    writers = [
        spawn.Process(target=_write_entries, args=(path, machine, name, count))
        for name in ("first", "second")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    saved = json.loads(path.read_text())
    assert saved["machine"] == machine
    assert sorted(saved["choices"]) == sorted(
        f"{name} {i}" for name in ("first", "second") for i in range(count)
    )
    assert not list(tmp_path.glob("*.tmp"))


def test_the_machine_fingerprint_follows_the_kernels_source(monkeypatch):
    before = tuning_cache.machine_fingerprint()["kernels"]
    monkeypatch.setattr(tuning_cache, "_kernels_digest", lambda: "changed")
    assert tuning_cache.machine_fingerprint()["kernels"] == "changed" != before


def test_the_thread_settings_start_numba_threads_through_kernels_threads():
    """The key reads numba's thread count, and whoever first asks starts numba's workers: it
    must go through kernels/threads.py, which starts them with a short GOMP_SPINCOUNT (started
    by numba.get_num_threads() they spin for milliseconds and take a core from the GEMMs). Run in
    a fresh process, where nothing has started them yet."""
    code = (
        "from kernels import threads, tuning_cache\n"
        "assert not threads._launched\n"
        "print(tuning_cache.threads_in_force())\n"
        "assert threads._launched\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blas=")


@pytest.mark.parametrize(
    "key, record, why",
    [
        ("conv2d x=1", {"backend": "winograd", "backward": "numba", "seconds": {}}, None),
        ("conv2d x=1", {"backend": "naive", "seconds": {}}, "unknown backend 'naive'"),
        ("maxpool2d x=1", {"backend": "winograd"}, "unknown backend 'winograd' for maxpool2d"),
        ("avgpool2d x=1", {"backend": "im2col"}, None),
        ("conv2d+maxpool2d x=1", {"backend": auto.FUSED, "seconds": {}}, None),
        ("conv2d+maxpool2d x=1", {"backend": "numba"}, "unknown pair choice 'numba'"),
        ("conv2d x=1", {"seconds": {}}, "no backend name"),
    ],
)
def test_each_kind_of_entry_is_checked(key, record, why):
    got = tuning.check_entry(key, record)
    assert got == why if why is None else why in got


def test_an_entry_on_a_backend_not_installed_here_is_dropped(monkeypatch):
    import kernels

    monkeypatch.setattr(kernels, "available_backends", lambda: ["naive", "im2col", "einsum"])
    assert "not available here" in tuning.check_entry("conv2d x=1", {"backend": "numba"})
    assert tuning.check_entry("conv2d x=1", {"backend": "im2col"}) is None
