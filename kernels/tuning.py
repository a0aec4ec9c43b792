"""auto's tuner: one configuration (mode, cache directory) and the choices made under it, the
scope that sets it, and the keys choices are made and cached under.

    mode "cached" (default)  use the cache file, time only keys it does not know
    mode "fresh"             time every key again and rewrite their entries
    mode "off"               time nothing: the caller's fixed rule

A Tuner holds one configuration and what it chose. kernels/auto.py uses the current one: scope
another with

    with auto.using(mode="fresh", cache_dir=tmp):   # restored on leaving the block
        ...

or set the current one's with configure(mode=..., cache_dir=...) (model.train's --autotune);
$CONVBENCH_AUTOTUNE and $CONVBENCH_CACHE are read where neither says. A key is the op, every
field of the call's geometry and its non-default options, then the thread settings in force
(kernels/tuning_cache.py). A bad cache entry (check_entry: an unknown backend, a backward on a
backend that cannot build its ctx) is dropped with a warning and timed again; a cache that
cannot be written only warns, once. It never stops a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .geometry import ConvGeometry, PoolGeometry
from .tuning_cache import (
    CacheUnreadable,
    cache_file,
    default_cache_dir,
    load_choices,
    machine_fingerprint,
    save_choices,
    threads_in_force,
)

MODES = ("off", "cached", "fresh")
CONV_CANDIDATES = ("winograd", "numba", "im2col", "einsum")
POOL_CANDIDATES = ("numba", "im2col")
FUSED, SEPARATE = "fused numba", "separate"  # a Conv2D + MaxPool2D pair's two choices


def _check_mode(value: str, name: str) -> str:
    if value not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(MODES)}, got {value!r}")
    return value


class Tuner:
    """One autotuning configuration and what it has chosen.

    mode: "off", "cached", "fresh", or None ($CONVBENCH_AUTOTUNE, else "cached");
    cache_dir: the cache file's directory, or None ($CONVBENCH_CACHE, else the user cache).
    The cache file is read on the first choice that needs it; choices() is this tuner's
    record of every key it has run, in first-use order."""

    def __init__(self, mode: str | None = None, cache_dir: str | os.PathLike | None = None):
        self.mode_setting = None if mode is None else _check_mode(mode, "autotune mode")
        self.cache_dir_setting = None if cache_dir is None else Path(cache_dir)
        self._chosen: dict[str, dict] = {}
        self._table: dict[str, dict] | None = None  # the cache file's entries, once read
        self._machine: dict | None = None
        self._path: Path | None = None
        self._saving = True  # False once the cache proved unreadable or unwritable

    @property
    def mode(self) -> str:
        """The mode in force: this tuner's setting, else $CONVBENCH_AUTOTUNE, else "cached"."""
        if self.mode_setting is not None:
            return self.mode_setting
        return _check_mode(os.environ.get("CONVBENCH_AUTOTUNE", "cached"), "CONVBENCH_AUTOTUNE")

    @property
    def cache_dir(self) -> Path:
        return self.cache_dir_setting or default_cache_dir()

    def cache_path(self) -> Path:
        """This machine's cache file (kernels.tuning_cache.cache_file) in cache_dir."""
        if self._path is None:
            self._machine = machine_fingerprint()
            self._path = cache_file(self.cache_dir, self._machine)
        return self._path

    def choices(self) -> dict[str, dict]:
        """{key: {"backend": name, "seconds": {candidate: seconds}, "source": ...}} for every
        key this tuner has run ("source": "rule", "cache", "timed" or "only choice")."""
        return dict(self._chosen)

    def _entries(self) -> dict[str, dict]:
        if self._table is None:
            self._table = {}
            if self.mode == "cached":
                path = self.cache_path()
                try:
                    self._table = load_choices(path, self._machine or {}, check_entry)
                except CacheUnreadable:
                    self._saving = False
        return self._table

    def choose(self, key: str, rule: Callable[[], str], decide: Callable[[], dict]) -> dict:
        """The record of the choice for `key` ({"backend": ..., ...}): this tuner's, rule()'s
        in mode "off", the cache's, else decide()'s, timed now and merged into the cache file;
        a record without timings ("seconds" empty: there was one choice) is kept in memory."""
        if key in self._chosen:
            return self._chosen[key]
        if self.mode == "off":
            self._chosen[key] = {"backend": rule(), "source": "rule"}
            return self._chosen[key]
        table = self._entries()
        if key in table:
            self._chosen[key] = {**table[key], "source": "cache"}
            return self._chosen[key]
        record = decide()
        if not record["seconds"]:
            self._chosen[key] = {**record, "source": "only choice"}
            return self._chosen[key]
        table[key] = record
        self._save(key, record)
        self._chosen[key] = {**record, "source": "timed"}
        return self._chosen[key]

    def _save(self, key: str, record: dict) -> None:
        if not self._saving:
            return
        path = self.cache_path()
        try:
            save_choices(path, self._machine or {}, {key: record}, check_entry)
        except OSError as exc:
            self._saving = False  # one warning per run, not one per layer shape
            warnings.warn(
                f"could not write the autotune cache {path}: {exc}; choices are kept for this "
                f"run only",
                RuntimeWarning,
                stacklevel=4,
            )


_current = Tuner()


def tuner() -> Tuner:
    """The Tuner the backend functions use now."""
    return _current


@contextlib.contextmanager
def using(mode: str | None = None, cache_dir: str | os.PathLike | None = None) -> Iterator[Tuner]:
    """A fresh Tuner for the block (what is not given is the current one's setting), with
    nothing chosen yet; the previous tuner, and its choices, are back on leaving it."""
    global _current
    previous = _current
    _current = _successor(mode, cache_dir)
    try:
        yield _current
    finally:
        _current = previous


def configure(mode: str | None = None, cache_dir: str | os.PathLike | None = None) -> None:
    """Replace the current tuner by a fresh one with this mode ("off", "cached", "fresh")
    and/or cache directory (the other setting kept); inside a using() block, until it ends."""
    global _current
    _current = _successor(mode, cache_dir)


def _successor(mode: str | None, cache_dir: str | os.PathLike | None) -> Tuner:
    """A fresh Tuner with the current one's settings where these are None."""
    return Tuner(
        _current.mode_setting if mode is None else mode,
        _current.cache_dir_setting if cache_dir is None else cache_dir,
    )


def mode() -> str:
    """The current tuner's mode in force (see Tuner.mode)."""
    return _current.mode


def cache_dir() -> Path:
    """The current tuner's cache directory."""
    return _current.cache_dir


def cache_path() -> Path:
    """The current tuner's cache file."""
    return _current.cache_path()


def choices() -> dict[str, dict]:
    """The current tuner's choices (see Tuner.choices)."""
    return _current.choices()


def describe(record: dict) -> str:
    """A choice record as the run log and the report print it: "numba", or
    "winograd forward, numba backward" where the passes run on different backends."""
    backward = record.get("backward", record["backend"])
    if backward == record["backend"]:
        return record["backend"]
    return f"{record['backend']} forward, {backward} backward"


# ---------------------------------------------------------------- cache entries


def available(names) -> list[str]:
    """The backends of `names` installed here, in that order."""
    from . import available_backends  # the registry (kernels/__init__ imports us lazily)

    return [name for name in names if name in available_backends()]


def backend(name: str):
    """The backend module called `name` (kernels.get_backend)."""
    from . import get_backend

    return get_backend(name)


_CANDIDATES = {
    "conv2d": CONV_CANDIDATES,
    "maxpool2d": POOL_CANDIDATES,
    "avgpool2d": POOL_CANDIDATES,
}


def check_entry(key: str, record: Any) -> str | None:
    """None when a cache entry can be run as it says, else why not (the entry is dropped and
    its shape timed again): an unknown operation or backend, one not installed here, or a
    backward on another backend than the forward's that cannot build its ctx from the inputs."""
    if not isinstance(record, dict) or not isinstance(record.get("backend"), str):
        return "no backend name"
    if not isinstance(record.get("seconds", {}), dict):
        return "its seconds are not a mapping"
    op = key.split(" ", 1)[0]
    forward = record["backend"]
    if op == "conv2d+maxpool2d":
        return None if forward in (FUSED, SEPARATE) else f"unknown pair choice {forward!r}"
    candidates = _CANDIDATES.get(op)
    if candidates is None:
        return f"unknown operation {op!r}"
    backward = record.get("backward", forward)
    if not isinstance(backward, str):
        return "no backward backend name"
    for name in {forward, backward}:
        if name not in candidates:
            return f"unknown backend {name!r} for {op}"
        if not available([name]):
            return f"backend {name!r} is not available here"
    if backward != forward and not hasattr(backend(backward), "conv2d_backward_ctx"):
        return f"{backward} cannot run a backward after {forward}'s forward"
    return None


# ---------------------------------------------------------------- keys


def non_default(**given: tuple[Any, Any]) -> dict[str, Any]:
    """{name: value} of the (value, default) pairs whose value is not the default (n and
    (n, n) alike), to pass on: a backend that does not know an option is only asked for it
    when a caller uses it."""

    def is_default(value: Any, default: Any) -> bool:
        # the default's own type only: groups=1.0 or ceil_mode=0 go on, to their clear error
        if isinstance(value, (tuple, list)) and not isinstance(default, (tuple, list)):
            return all(type(v) is type(default) and v == default for v in value)
        return type(value) is type(default) and bool(value == default)

    return {
        name: value for name, (value, default) in given.items() if not is_default(value, default)
    }


# geometry fields the keys spell out; every other field (what a later geometry adds: dilation,
# groups, four-sided padding, ceil mode) goes in as name=value, so it keys the cache too
_SHOWN = {"n", "height", "width", "c_in", "c", "kh", "kw", "c_out", "sh", "sw", "out_h", "out_w"}


def _key(op: str, g: Any, options: dict[str, Any]) -> str:
    # every call of a layer asks again: built once per geometry and options (a depthwise
    # layer's groups= option made the key a per-call cost: MobileNetV2's 7x7 depthwise layers
    # ran measurably slower on auto than on the numba backend it chose)
    if not options:
        return _plain_key(op, g)
    try:
        return _optioned_key(op, g, tuple(sorted(options.items())))
    except TypeError:  # an unhashable option value (a list): built afresh
        return _build_optioned_key(op, g, tuple(sorted(options.items())))


def _build_optioned_key(op: str, g: Any, options: tuple) -> str:
    names = [f.name for f in dataclasses.fields(g)]
    rest = [f"{name}={value}" for name, value in options if name not in names]
    return " ".join([_plain_key(op, g), *rest])


_optioned_key = functools.lru_cache(maxsize=4096)(_build_optioned_key)


@functools.lru_cache(maxsize=4096)
def _plain_key(op: str, g: Any) -> str:
    shape = "x".join(map(str, g.x_shape))
    if op == "conv2d":
        head = f"w={'x'.join(map(str, g.w_shape))} stride={g.sh},{g.sw}"
    else:
        head = f"size={g.kh},{g.kw} stride={g.sh},{g.sw}"
    rest = [f"{f.name}={getattr(g, f.name)}" for f in dataclasses.fields(g) if f.name not in _SHOWN]
    return " ".join([op, f"x={shape}", head, *rest])


def conv_key(g: ConvGeometry, options: dict[str, Any] | None = None) -> str:
    """The cache key of a conv2d call, without the thread settings: shapes, stride, every other
    geometry field (padding, bias, dtype, ...) and the non-default options (dilation, groups)."""
    return _key("conv2d", g, options or {})


def pool_key(op: str, g: PoolGeometry, options: dict[str, Any] | None = None) -> str:
    """The cache key of a pooling call (op "maxpool2d" or "avgpool2d"), without the threads."""
    return _key(op, g, options or {})


def pair_key(g: ConvGeometry, pg: PoolGeometry) -> str:
    """The cache key of a Conv2D + MaxPool2D pair: the conv's key and the pool's window."""
    return f"conv2d+maxpool2d {conv_key(g)[len('conv2d ') :]} pool={pg.kh},{pg.kw},{pg.sh},{pg.sw}"


def choose(key: str, rule: Callable[[], str], decide: Callable[[], dict]) -> dict:
    """The current tuner's choice for `key` under the thread settings in force."""
    return _current.choose(f"{key} {threads_in_force()}", rule, decide)
