"""Convolution problems in oneDNN benchdnn's descriptor syntax, and the network sets of them.

A descriptor names one 2-D convolution exactly; a network set is a file of them,
bench/shapes/<set>.txt, one per line ('#' starts a comment):

    mb8ic64ih56oc64oh56kh3ph1n"resnet50:res2a_branch2b*3"

Fields (a letter prefix, then a non-negative integer; any order; '_' between fields is ignored):
    g   groups (default 1)                mb  minibatch (default 2, as benchdnn)
    ic  input channels (required)         oc  output channels (required)
    ih  input height (required)           iw  input width (default ih)
    oh  output height (default computed)  ow  output width (default computed, or oh)
    kh  kernel height (required)          kw  kernel width (default kh)
    sh  stride height (default 1)         sw  stride width (default sh)
    ph  padding height (default: from oh, else 0)
    pw  padding width (default: ph when ph is given, else from ow, else 0)
    dh  dilation height minus one: benchdnn's convention, so dh0 (the default) is no dilation and
        dh1 spaces the taps two pixels apart (PyTorch's dilation=2)
    dw  dilation width minus one (default dh)
    n"name*count"  the layer's name; the optional *count says how often it occurs in the network

Output size: oh = (ih + 2*ph - ((kh - 1)*(dh + 1) + 1)) // sh + 1. When oh is given and ph is
not, ph is derived from it as benchdnn does; when both are given they must agree.

    >>> p = parse('mb8ic64ih56oc64oh56kh3ph1n"resnet50:res2a_branch2b*3"')
    >>> p.count, p.x_shape, p.w_shape
    (3, (8, 56, 56, 64), (3, 3, 64, 64))
    >>> load_set("resnet50", mb=1)[0].name
    'resnet50:conv1'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

SHAPES_DIR = Path(__file__).with_name("shapes")

_FIELDS = ("g", "mb", "ic", "ih", "iw", "oc", "oh", "ow", "kh", "kw", "sh", "sw")
_FIELDS += ("ph", "pw", "dh", "dw")
# Longest prefixes first is not needed: every field name is two letters except "g".
_TOKEN = re.compile(r'(mb|ic|ih|iw|oc|oh|ow|kh|kw|sh|sw|ph|pw|dh|dw|g)(\d+)|n"([^"]*)"|_+')
_NAME = re.compile(r"^(.*?)(?:\*(\d+))?$")


class DescriptorError(ValueError):
    """A descriptor that cannot be parsed; the message names the field at fault."""


@dataclass(frozen=True)
class Problem:
    """One 2-D convolution, NHWC activations and HWIO weights (kernels/contract.py).

    Shapes: x (mb, ih, iw, ic), w (kh, kw, ic // g, oc), y (mb, oh, ow, oc), all float.
    dh, dw follow benchdnn: the dilation minus one (0 = taps next to each other).
    """

    ic: int
    ih: int
    oc: int
    kh: int
    mb: int = 2
    g: int = 1
    iw: int = 0  # 0 in the constructor means "same as ih"; likewise kw, sw, pw, dw below
    oh: int = 0  # 0: computed
    ow: int = 0
    kw: int = 0
    sh: int = 1
    sw: int = 0
    ph: int = 0
    pw: int = -1  # -1: same as ph
    dh: int = 0
    dw: int = -1
    name: str = ""
    count: int = 1

    def __post_init__(self):
        put = object.__setattr__
        put(self, "iw", self.iw or self.ih)
        put(self, "kw", self.kw or self.kh)
        put(self, "sw", self.sw or self.sh)
        put(self, "pw", self.ph if self.pw < 0 else self.pw)
        put(self, "dw", self.dh if self.dw < 0 else self.dw)
        for field in ("ic", "ih", "iw", "oc", "kh", "kw", "sh", "sw", "mb", "g", "count"):
            if getattr(self, field) < 1:
                raise DescriptorError(f"{field} must be >= 1, got {getattr(self, field)}")
        for field in ("ph", "pw", "dh", "dw"):
            if getattr(self, field) < 0:
                raise DescriptorError(f"{field} must be >= 0, got {getattr(self, field)}")
        if self.ic % self.g or self.oc % self.g:
            raise DescriptorError(
                f"g={self.g} must divide ic={self.ic} and oc={self.oc} (each group sees "
                f"ic/g input and oc/g output channels)"
            )
        for out, size, k, s, p, d in (
            ("oh", self.ih, self.kh, self.sh, self.ph, self.dh),
            ("ow", self.iw, self.kw, self.sw, self.pw, self.dw),
        ):
            computed = (size + 2 * p - ((k - 1) * (d + 1) + 1)) // s + 1
            if computed < 1:
                raise DescriptorError(
                    f"the kernel does not fit: {out} would be {computed} "
                    f"(input {size}, kernel {k}, stride {s}, padding {p}, dilation-1 {d})"
                )
            given = getattr(self, out)
            if given and given != computed:
                raise DescriptorError(
                    f"{out}={given} disagrees with the other fields, which give {out}={computed}"
                )
            put(self, out, computed)

    # ------------------------------------------------------------------ shapes and work
    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C_in) of the input."""
        return (self.mb, self.ih, self.iw, self.ic)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        """(KH, KW, C_in / groups, C_out) of the weights (PyTorch's grouping, in HWIO)."""
        return (self.kh, self.kw, self.ic // self.g, self.oc)

    @property
    def y_shape(self) -> tuple[int, int, int, int]:
        """(N, OH, OW, C_out) of the output."""
        return (self.mb, self.oh, self.ow, self.oc)

    @property
    def dilation(self) -> tuple[int, int]:
        """PyTorch's dilation (1 = none): benchdnn's dh, dw plus one."""
        return (self.dh + 1, self.dw + 1)

    @property
    def flops(self) -> int:
        """Floating-point operations of one pass (forward, backward-data or backward-weights):
        2 * N * OH * OW * C_out * KH * KW * C_in / groups (a multiply and an add each)."""
        return 2 * self.mb * self.oh * self.ow * self.oc * self.kh * self.kw * (self.ic // self.g)

    @property
    def label(self) -> str:
        """The layer's name without the network prefix, or its descriptor when it has none."""
        return self.name.split(":", 1)[-1] if self.name else self.descriptor(with_name=False)

    def with_mb(self, mb: int) -> Problem:
        """The same layer at minibatch `mb`."""
        return dataclasses.replace(self, mb=mb)

    def descriptor(self, with_name: bool = True) -> str:
        """The canonical descriptor: every field that differs from its default, benchdnn's order."""
        parts = [f"g{self.g}"] if self.g != 1 else []
        parts += [f"mb{self.mb}", f"ic{self.ic}", f"ih{self.ih}"]
        parts += [f"iw{self.iw}"] if self.iw != self.ih else []
        parts += [f"oc{self.oc}", f"oh{self.oh}"]
        parts += [f"ow{self.ow}"] if self.ow != self.oh else []
        parts += [f"kh{self.kh}"] + ([f"kw{self.kw}"] if self.kw != self.kh else [])
        parts += [f"sh{self.sh}"] if self.sh != 1 or self.sw != 1 else []
        parts += [f"sw{self.sw}"] if self.sw != self.sh else []
        parts += [f"ph{self.ph}"] + ([f"pw{self.pw}"] if self.pw != self.ph else [])
        parts += [f"dh{self.dh}"] if self.dh or self.dw else []
        parts += [f"dw{self.dw}"] if self.dw != self.dh else []
        if with_name and (self.name or self.count != 1):
            parts.append(f'n"{self.name}' + (f"*{self.count}" if self.count != 1 else "") + '"')
        return "".join(parts)


def parse(descriptor: str) -> Problem:
    """One benchdnn conv descriptor -> Problem; DescriptorError naming the field at fault."""
    text = descriptor.strip()
    values: dict[str, int] = {}
    name, count = "", 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise DescriptorError(
                f"descriptor {descriptor!r}: cannot read {text[pos:]!r} at character {pos} "
                f'(expected one of {", ".join(_FIELDS)} followed by a number, or n"name")'
            )
        field, number, quoted = match.groups()
        if field is not None:
            if field in values:
                raise DescriptorError(f"descriptor {descriptor!r}: field {field} given twice")
            values[field] = int(number)
        elif quoted is not None:
            name_match = _NAME.match(quoted)
            assert name_match is not None  # the pattern matches every string
            name = name_match.group(1)
            count = int(name_match.group(2) or 1)
        pos = match.end()
    for required in ("ic", "ih", "oc", "kh"):
        if required not in values:
            raise DescriptorError(f"descriptor {descriptor!r}: missing field {required}")
    values = {**values, **_derived_padding(values, descriptor)}
    try:
        return Problem(name=name, count=count, **values)
    except DescriptorError as err:
        raise DescriptorError(f"descriptor {descriptor!r}: {err}") from None


def _derived_padding(values: dict[str, int], descriptor: str) -> dict[str, int]:
    """benchdnn's rule: an output size given without its padding fixes the padding."""
    out = {}
    for o, p, i, k, s, d, i_default, k_default in (
        ("oh", "ph", "ih", "kh", "sh", "dh", None, None),
        ("ow", "pw", "iw", "kw", "sw", "dw", "ih", "kh"),
    ):
        # pw defaults to an explicit ph before it is derived from ow
        if o in values and p not in values and not (p == "pw" and "ph" in values):
            size = values.get(i, values.get(i_default or i, 0))
            kernel = values.get(k, values.get(k_default or k, 0))
            stride = values.get(s, values.get("sh", 1))
            dil = values.get(d, values.get("dh", 0))
            span = (kernel - 1) * (dil + 1) + 1
            twice = (values[o] - 1) * stride - size + span
            # benchdnn takes the floor of twice / 2; a stride-2 layer that halves its input
            # (resnet50:conv1, 224 -> 112 with a 7x7 kernel) needs the ceiling
            fits = [
                pad
                for pad in (twice // 2, (twice + 1) // 2)
                if pad >= 0 and (size + 2 * pad - span) // stride + 1 == values[o]
            ]
            if not fits:
                raise DescriptorError(
                    f"descriptor {descriptor!r}: no padding gives {o}={values[o]}; "
                    f"give {p} explicitly"
                )
            out[p] = fits[0]
    return out


def available_sets() -> list[str]:
    """The names of the network sets in bench/shapes (file names without .txt), sorted."""
    return sorted(path.stem for path in SHAPES_DIR.glob("*.txt"))


def load_set(name: str, mb: int | None = None) -> list[Problem]:
    """The problems of bench/shapes/<name>.txt, in file order; at minibatch `mb` when given."""
    path = SHAPES_DIR / f"{name}.txt"
    if not path.is_file():
        raise ValueError(f"unknown set {name!r}; available sets: {', '.join(available_sets())}")
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            problem = parse(line)
        except DescriptorError as err:
            raise DescriptorError(f"{path.name} line {number}: {err}") from None
        problems.append(problem if mb is None else problem.with_mb(mb))
    return problems
