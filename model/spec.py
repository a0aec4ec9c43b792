"""The layer-spec language: a network for (N, 28, 28, 1) images and 10 classes, written as text.

A spec is a comma-separated list of layers, each `name` or `name(arguments)`; arguments are
positional numbers first, then `key=value` options (numbers, `true`/`false`, names, and `AxB`
for a (height, width) pair). The named architectures are specs:

    small = conv(16,3,pad=1,init=he), maxpool(2), relu, flatten, dense(128,init=he), relu,
            dense(10,init=he)
    deep  = conv(32,3,pad=1,bias=false), bn, maxpool(2), relu, conv(64,3,pad=1,bias=false), bn,
            maxpool(2), relu, flatten, dense(128), relu, dropout(0.5), dense(10)

| layer | arguments (defaults) |
|---|---|
| `conv(filters, kernel=3, stride=1, pad=0, dilation=1, groups=1, bias=true, init=uniform)` | pad: a number, `AxB`, `same` (TensorFlow's: uneven with an even kernel or a stride) or `valid`; groups must divide the input's and the output's channels (`groups=` the input's channels: depthwise); init: `uniform` (PyTorch's) or `he` |
| `maxpool(size=2, stride=size, pad=0, ceil=false)` | pad: a number or `AxB`, at most half the window; ceil: PyTorch's `ceil_mode` |
| `avgpool(size=2, stride=size, pad=0, ceil=false, count_pad=true)` | count_pad: the padding counts in a window's divisor (PyTorch's `count_include_pad`) |
| `bn` (or `batchnorm`)`(momentum=0.9, eps=1e-5)` | over channels before `flatten`, features after |
| `relu`, `flatten` | |
| `dropout(rate=0.5)` | |
| `dense(units, init=uniform)` | needs a `flatten` before it |

The input's channels and features are inferred layer by layer from the 28x28x1 image, and the
last layer must be `dense(10)`. A conv whose input nothing before it needs a gradient for (the
first conv) asks its backend for no dx. `spec_of(layers)` writes the canonical text back, so a
network built from layer objects by hand is saved, and rebuilt, as a spec too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from kernels.geometry import conv_geometry, pool_geometry

from . import layers as L

INPUT_SHAPE = (28, 28, 1)
CLASSES = 10

# kind -> (positional argument names, {option: default}); aliases below
_SIGNATURES: dict[str, tuple[tuple[str, ...], dict]] = {
    "conv": (
        ("filters", "kernel"),
        {
            "kernel": 3,
            "stride": 1,
            "pad": 0,
            "dilation": 1,
            "groups": 1,
            "bias": True,
            "init": "uniform",
        },
    ),
    "maxpool": (("size", "stride"), {"size": 2, "stride": None, "pad": 0, "ceil": False}),
    "avgpool": (
        ("size", "stride"),
        {"size": 2, "stride": None, "pad": 0, "ceil": False, "count_pad": True},
    ),
    "bn": ((), {"momentum": 0.9, "eps": 1e-5}),
    "relu": ((), {}),
    "flatten": ((), {}),
    "dropout": (("rate",), {"rate": 0.5}),
    "dense": (("units",), {"init": "uniform"}),
}
_REQUIRED = {"conv": ("filters",), "dense": ("units",)}
# the arguments the canonical text always writes, positionally
_SHOWN = {
    "conv": ("filters", "kernel"),
    "maxpool": ("size",),
    "avgpool": ("size",),
    "dropout": ("rate",),
    "dense": ("units",),
}
_ALIASES = {"batchnorm": "bn"}
_TOKEN = re.compile(r"^([a-z_]+)\s*(?:\((.*)\))?$", re.DOTALL)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a spec: its kind ("conv", "maxpool", ...) and every argument, defaults
    filled in (sizes as (height, width) pairs)."""

    kind: str
    args: dict = field(default_factory=dict)

    def text(self) -> str:
        """The canonical token: the main arguments positionally, then options that differ
        from their defaults."""
        shown_names = _SHOWN.get(self.kind, ())
        shown = [_format(self.args[name]) for name in shown_names]
        options = []
        for name, default in _SIGNATURES[self.kind][1].items():
            if name in shown_names:
                continue
            if name == "stride" and self.kind.endswith("pool"):
                default = self.args["size"]
            if self.args[name] != _normal(name, default):
                options.append(f"{name}={_format(self.args[name])}")
        inner = ",".join(shown + options)
        return f"{self.kind}({inner})" if inner else self.kind


def _format(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _normal(name: str, value):
    """An argument in its normal form: sizes as (h, w) pairs, everything else as given."""
    if name in ("kernel", "stride", "size", "dilation") and isinstance(value, int):
        return (value, value)
    if name == "pad" and isinstance(value, int):
        return (value, value)
    return value


def _value(token: str, text: str):
    """One argument's text -> int, float, bool, (h, w) or a lower-case name."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"\d+x\d+", text):
        h, w = text.split("x")
        return (int(h), int(w))
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        pass
    if re.fullmatch(r"[a-z_]+", text):
        return text
    raise ValueError(f"layer spec: in {token!r}, cannot read the value {text!r}")


def _parse_token(token: str) -> LayerSpec:
    match = _TOKEN.match(token.strip().lower())
    if not match:
        raise ValueError(
            f"layer spec: cannot read {token.strip()!r}; expected name or name(arguments), "
            f"e.g. conv(32,3,pad=1)"
        )
    kind, inner = _ALIASES.get(match[1], match[1]), match[2]
    if kind not in _SIGNATURES:
        raise ValueError(
            f"layer spec: unknown layer {match[1]!r} in {token.strip()!r}; known: "
            f"{', '.join(list(_SIGNATURES) + list(_ALIASES))}"
        )
    positional, defaults = _SIGNATURES[kind]
    args: dict = {}
    parts = [p for p in (inner or "").split(",") if p.strip()] if inner is not None else []
    for i, part in enumerate(parts):
        if "=" in part:
            name, text = (s.strip() for s in part.split("=", 1))
            if name not in defaults and name not in positional:
                raise ValueError(
                    f"layer spec: {kind} has no option {name!r} (in {token.strip()!r}); "
                    f"its arguments: {', '.join(dict.fromkeys(positional + tuple(defaults)))}"
                )
        else:
            if any("=" in p for p in parts[:i]):
                raise ValueError(
                    f"layer spec: in {token.strip()!r}, a positional argument follows an option"
                )
            if i >= len(positional):
                raise ValueError(
                    f"layer spec: {kind} takes at most {len(positional)} positional argument(s) "
                    f"({', '.join(positional) or 'none'}), got {len(parts)} in {token.strip()!r}"
                )
            name, text = positional[i], part
        if name in args:
            raise ValueError(f"layer spec: {name!r} given twice in {token.strip()!r}")
        args[name] = _value(token.strip(), text)
    for name in _REQUIRED.get(kind, ()):
        if name not in args:
            raise ValueError(
                f"layer spec: {kind} needs {name} (in {token.strip()!r}), e.g. {kind}(32)"
            )
    full = {name: _normal(name, args.get(name, default)) for name, default in defaults.items()}
    full.update({name: _normal(name, v) for name, v in args.items()})
    if kind.endswith("pool") and full["stride"] is None:
        full["stride"] = full["size"]
    _check_values(kind, full, token.strip())
    return LayerSpec(kind, full)


def _positive_pair(value, name, kind, token):
    if not (isinstance(value, tuple) and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(
            f"layer spec: {kind} {name} must be a positive integer or AxB, got {value!r} in {token!r}"
        )


def _check_values(kind: str, a: dict, token: str) -> None:
    if kind == "conv":
        if not (isinstance(a["filters"], int) and a["filters"] > 0):
            raise ValueError(
                f"layer spec: conv filters must be a positive integer, got {a['filters']!r} in {token!r}"
            )
        _positive_pair(a["kernel"], "kernel", kind, token)
        _positive_pair(a["stride"], "stride", kind, token)
        _positive_pair(a["dilation"], "dilation", kind, token)
        if not (isinstance(a["groups"], int) and a["groups"] > 0):
            raise ValueError(
                f"layer spec: conv groups must be a positive integer, got {a['groups']!r} in {token!r}"
            )
        if a["filters"] % a["groups"]:
            raise ValueError(
                f"layer spec: conv groups={a['groups']} must divide its filters={a['filters']}, "
                f"in {token!r}"
            )
        pad = a["pad"]
        if not (pad in ("same", "valid") or (isinstance(pad, tuple) and min(pad) >= 0)):
            raise ValueError(
                f"layer spec: conv pad must be >= 0, AxB, same or valid, got {pad!r} in {token!r}"
            )
        if a["init"] not in L.INITS or not isinstance(a["bias"], bool):
            raise ValueError(
                f"layer spec: conv init must be one of {', '.join(L.INITS)} and bias true or "
                f"false, in {token!r}"
            )
    elif kind.endswith("pool"):
        _positive_pair(a["size"], "size", kind, token)
        _positive_pair(a["stride"], "stride", kind, token)
        pad = a["pad"]
        if not (isinstance(pad, tuple) and min(pad) >= 0):
            raise ValueError(
                f"layer spec: {kind} pad must be a number >= 0 or AxB, got {pad!r} in {token!r}"
            )
        flags = ("ceil", "count_pad") if kind == "avgpool" else ("ceil",)
        for flag in flags:
            if not isinstance(a[flag], bool):
                raise ValueError(
                    f"layer spec: {kind} {flag} must be true or false, got {a[flag]!r} in {token!r}"
                )
    elif kind == "dropout":
        if not (isinstance(a["rate"], (int, float)) and 0 <= a["rate"] < 1):
            raise ValueError(
                f"layer spec: dropout rate must be in [0, 1), got {a['rate']!r} in {token!r}"
            )
        a["rate"] = float(a["rate"])
    elif kind == "dense":
        if not (isinstance(a["units"], int) and a["units"] > 0):
            raise ValueError(
                f"layer spec: dense units must be a positive integer, got {a['units']!r} in {token!r}"
            )
        if a["init"] not in L.INITS:
            raise ValueError(
                f"layer spec: dense init must be one of {', '.join(L.INITS)}, in {token!r}"
            )
    elif kind == "bn":
        a["momentum"], a["eps"] = float(a["momentum"]), float(a["eps"])
        if not (0 <= a["momentum"] < 1 and a["eps"] > 0):
            raise ValueError(f"layer spec: bn needs 0 <= momentum < 1 and eps > 0, in {token!r}")


def _split(text: str) -> list[str]:
    """Top-level commas only: those inside parentheses separate arguments."""
    tokens, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            raise ValueError(f"layer spec: unbalanced ')' at character {i + 1} of {text!r}")
        if ch == "," and depth == 0:
            tokens.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"layer spec: unclosed '(' in {text!r}")
    tokens.append(text[start:])
    return tokens


def parse_spec(text: str) -> list[LayerSpec]:
    """The layers of a spec, arguments checked and defaults filled; ValueError naming the token
    and what was expected. Shapes are checked by build_layers (or check_shapes)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"layer spec must be a non-empty string, got {text!r}")
    tokens = _split(text)
    for i, token in enumerate(tokens):
        if not token.strip():
            raise ValueError(f"layer spec: empty layer at position {i + 1} of {text!r}")
    specs = [_parse_token(t) for t in tokens]
    check_shapes(specs)
    return specs


def _spans(spec: LayerSpec) -> tuple[int, int]:
    """Rows and columns one window of a conv or pool layer covers (a dilated kernel's span)."""
    if spec.kind != "conv":
        return spec.args["size"]
    (kh, kw), (dh, dw) = spec.args["kernel"], spec.args["dilation"]
    return (kh - 1) * dh + 1, (kw - 1) * dw + 1


def _pads(spec: LayerSpec) -> tuple[int, int] | str:
    """The conv's padding as the layer takes it: (ph, pw), or "same" where TensorFlow's rule
    pads unevenly (an even kernel span or a stride), which kernels.geometry resolves per input."""
    pad = spec.args["pad"]
    if pad == "valid":
        return (0, 0)
    if pad == "same":
        (sh, sw), (kh, kw) = spec.args["stride"], _spans(spec)
        if (sh, sw) == (1, 1) and kh % 2 and kw % 2:
            return (kh // 2, kw // 2)  # even on both sides: written as numbers, as before
        return "same"
    return pad


def _out_shape(spec: LayerSpec, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(OH, OW, C) of a conv or pool layer on an (H, W, C) input, by kernels.geometry (the one
    copy of the output-size arithmetic), whose clear errors it passes on."""
    x = np.broadcast_to(np.zeros((), np.float32), (1, *shape))
    a = spec.args
    if spec.kind == "conv":
        group_in = max(shape[2] // a["groups"], 1)
        w = np.broadcast_to(np.zeros((), np.float32), (*a["kernel"], group_in, a["filters"]))
        g = conv_geometry(x, w, None, a["stride"], _pads(spec), a["dilation"], a["groups"])
        return g.out_h, g.out_w, g.c_out
    pg = pool_geometry(
        x, a["size"], a["stride"], a["pad"], a["ceil"], a.get("count_pad", True)
    )  # fmt: skip
    return pg.out_h, pg.out_w, pg.c


def check_shapes(specs: list[LayerSpec]) -> list[tuple[int, ...]]:
    """The activation shape after each layer (without the batch axis), from (28, 28, 1);
    ValueError naming the first layer that cannot take its input."""
    shape: tuple[int, ...] = INPUT_SHAPE
    shapes = []
    for i, s in enumerate(specs):
        where = f"layer {i + 1} ({s.text()})"
        if s.kind in ("conv", "maxpool", "avgpool"):
            if len(shape) != 3:
                raise ValueError(
                    f"layer spec: {where} needs an image (H, W, C) but comes after flatten"
                )
            kh, kw = _spans(s)
            pad = _pads(s) if s.kind == "conv" else s.args["pad"]
            ph, pw = (0, 0) if isinstance(pad, str) else pad
            if pad != "same" and (kh > shape[0] + 2 * ph or kw > shape[1] + 2 * pw):
                raise ValueError(
                    f"layer spec: {where}: window {kh}x{kw} is larger than its "
                    f"{shape[0]}x{shape[1]} input (padded: +{2 * ph}x{2 * pw})"
                )
            try:
                shape = _out_shape(s, shape)
            except (TypeError, ValueError) as error:
                raise ValueError(f"layer spec: {where}: {error}") from None
        elif s.kind == "flatten":
            shape = (math.prod(shape),)
        elif s.kind == "dense":
            if len(shape) != 1:
                raise ValueError(f"layer spec: {where} needs features; put a flatten before it")
            shape = (s.args["units"],)
        shapes.append(shape)
    if not specs or specs[-1].kind != "dense" or shape != (CLASSES,):
        raise ValueError(
            f"layer spec: the last layer must be dense({CLASSES}) (one logit per digit), "
            f"got {specs[-1].text() if specs else 'nothing'}"
        )
    return shapes


def build_layers(specs: list[LayerSpec], backend: str, dtype, rng) -> list:
    """The model.layers objects of `specs`, drawing initial weights from `rng` in layer order."""
    shapes = [INPUT_SHAPE, *check_shapes(specs)]
    built: list = []
    for s, shape in zip(specs, shapes):
        a = s.args
        has_params_before = any(layer.params for layer in built)
        if s.kind == "conv":
            built.append(
                L.Conv2D(
                    shape[2],
                    a["filters"],
                    _compact(a["kernel"]),
                    stride=_compact(a["stride"]),
                    padding=_compact(_pads(s)),
                    dilation=_compact(a["dilation"]),
                    groups=a["groups"],
                    bias=a["bias"],
                    need_dx=has_params_before,
                    init=a["init"],
                    backend=backend,
                    rng=rng,
                    dtype=dtype,
                )  # fmt: skip
            )
        elif s.kind in ("maxpool", "avgpool"):
            stride = None if a["stride"] == a["size"] else _compact(a["stride"])
            options = {"backend": backend, "padding": _compact(a["pad"]), "ceil_mode": a["ceil"]}
            if s.kind == "maxpool":
                built.append(L.MaxPool2D(_compact(a["size"]), stride=stride, **options))
            else:
                built.append(
                    L.AvgPool2D(
                        _compact(a["size"]),
                        stride=stride,
                        count_include_pad=a["count_pad"],
                        **options,
                    )
                )
        elif s.kind == "bn":
            built.append(L.BatchNorm(shape[-1], momentum=a["momentum"], eps=a["eps"], dtype=dtype))
        elif s.kind == "relu":
            built.append(L.ReLU())
        elif s.kind == "flatten":
            built.append(L.Flatten())
        elif s.kind == "dropout":
            built.append(L.Dropout(a["rate"], rng=rng))
        elif s.kind == "dense":
            built.append(L.Dense(shape[0], a["units"], rng=rng, dtype=dtype, init=a["init"]))
    return built


def _compact(pair):
    """(k, k) -> k, as the layers' reprs and the named architectures write it ("same" as is)."""
    if isinstance(pair, str):
        return pair
    return pair[0] if pair[0] == pair[1] else pair


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)  # type: ignore[return-value]


def spec_of(layers) -> str:
    """The canonical spec text of built layers (any model.layers objects this language has)."""
    tokens = []
    for layer in layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            pad = layer.padding if isinstance(layer.padding, str) else _pair(layer.padding)
            args = {
                "filters": layer.out_channels,
                "kernel": _pair(layer.kernel_size),
                "stride": _pair(layer.stride),
                "pad": pad,
                "dilation": _pair(layer.dilation),
                "groups": layer.groups,
                "bias": "b" in layer.params,
                "init": layer.init,
            }
            tokens.append(LayerSpec("conv", args).text())
        elif kind in ("MaxPool2D", "AvgPool2D"):
            size = _pair(layer.size)
            stride = size if layer.stride is None else _pair(layer.stride)
            if not isinstance(layer.padding, (int, np.integer)) and len(layer.padding) == 2:
                if isinstance(layer.padding[0], tuple):
                    raise ValueError(
                        "spec_of: the layer spec language has no uneven pool padding, got "
                        f"{layer.padding!r}"
                    )
            args = {"size": size, "stride": stride, "pad": _pair(layer.padding)}
            args["ceil"] = layer.ceil_mode
            if kind == "AvgPool2D":
                args["count_pad"] = layer.count_include_pad
            tokens.append(LayerSpec(kind[:3].lower() + "pool", args).text())
        elif kind == "BatchNorm":
            tokens.append(LayerSpec("bn", {"momentum": layer.momentum, "eps": layer.eps}).text())
        elif kind in ("ReLU", "Flatten"):
            tokens.append(kind.lower())
        elif kind == "Dropout":
            tokens.append(LayerSpec("dropout", {"rate": float(layer.rate)}).text())
        elif kind == "Dense":
            tokens.append(
                LayerSpec("dense", {"units": layer.out_features, "init": layer.init}).text()
            )
        else:
            raise ValueError(f"spec_of: the layer spec language has no {kind} layer")
    return ",".join(tokens)
