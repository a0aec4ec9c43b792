"""Layers: each holds its parameters and gradients; forward and backward sit side by side.

Every layer has `forward(x, training) -> y` and `backward(dy) -> dx`, and three dicts:
`params` (trainable arrays), `grads` (same keys, filled by backward) and `buffers` (state saved in
checkpoints but not trained, e.g. BatchNorm's running statistics). `no_decay` names the
parameters that L2 weight decay must skip (biases, BatchNorm's scale and shift).

Activations are NHWC `(N, H, W, C)`; Dense works on `(N, features)`. The conv and pool layers
delegate all arithmetic to a `kernels` backend chosen by name, so the layer code does not change
with the backend. Random draws (initialisation, dropout masks) come from the generator the
network passes in, so one seed fixes everything.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kernels import activations, batchnorm, batchnorm_pool, gemm, get_backend
from kernels.geometry import as_pair

from .checks import positive_int


class Layer:
    """Base class: a layer with no parameters that passes shapes through unchanged."""

    no_decay: frozenset = frozenset()

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        """dy: the gradient of the loss w.r.t. this layer's output -> the gradient w.r.t. its
        input (None from a first Conv2D built with need_dx=False), storing parameter gradients
        in self.grads."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


INITS = ("uniform", "he")


def he_normal(rng, shape, fan_in, dtype):
    """He et al. (2015) initialisation: N(0, 2 / fan_in), right for layers followed by ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def fan_in_uniform(rng, shape, fan_in, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for nn.Conv2d and nn.Linear weights
    (kaiming_uniform_ with a=sqrt(5)) and biases. Its std, 1/sqrt(3 fan_in), is sqrt(6) times
    smaller than He's: trained with Adam, whose steps have the same size whatever the weights'
    scale, He-initialised weights change more slowly (see _init_params)."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(dtype)


def _init_params(layer, init, rng, w_shape, fan_in, bias, dtype):
    """Fill layer.params["w"] (and "b" when bias) by `init`: "uniform" (the default) = PyTorch's
    default initialisation, weights and biases U(+-1/sqrt(fan_in)); "he" = He-normal weights and
    zero biases. The deep network learns measurably faster from "uniform" (one epoch on 10,000
    MNIST images, Adam lr 0.002, 3 seeds: 96.3% test accuracy against 94.9% from "he", as PyTorch
    gets 96.4% from its default and 93.8% from our He weights; tests/test_model_parity.py)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if init == "he":
        layer.params["w"] = he_normal(rng, w_shape, fan_in, dtype)
        if bias:
            layer.params["b"] = np.zeros(w_shape[-1], dtype=dtype)
    else:
        layer.params["w"] = fan_in_uniform(rng, w_shape, fan_in, dtype)
        if bias:
            layer.params["b"] = fan_in_uniform(rng, w_shape[-1], fan_in, dtype)


def _check_features(x, expected: int, layer: str, axis_name: str):
    if x.shape[-1] != expected:
        raise ValueError(
            f"{layer}: input x has {x.shape[-1]} {axis_name} on its last axis "
            f"(shape {x.shape}), expected {expected}"
        )


class Conv2D(Layer):
    """2-D convolution (cross-correlation). x: (N, H, W, C_in) -> y: (N, OH, OW, C_out).

    Weights are HWIO `(KH, KW, C_in // groups, C_out)`, bias `(C_out,)`, initialised by `init`
    ("uniform": PyTorch's default, U(+-1/sqrt(fan_in)); "he": He-normal weights, zero bias), with
    fan_in = KH*KW*C_in // groups. stride, padding, dilation and groups mean what they mean in
    torch.nn.Conv2d (kernels/contract.py; padding also "same" as TensorFlow pads it, or
    ((top, bottom), (left, right))). `need_dx=False` tells the backend not to compute the input
    gradient: the first layer of a network has nobody to pass it to.
    """

    no_decay = frozenset({"b"})

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=0,
        backend="im2col",
        rng=None,
        dtype=np.float32,
        bias=True,
        need_dx=True,
        init="uniform",
        dilation=1,
        groups=1,
    ):
        super().__init__()
        kh, kw = as_pair(kernel_size, "kernel_size")
        positive_int(in_channels, "Conv2D: in_channels")
        positive_int(out_channels, "Conv2D: out_channels")
        positive_int(groups, "Conv2D: groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2D: groups={groups} must divide in_channels={in_channels} and "
                f"out_channels={out_channels}"
            )
        rng = np.random.default_rng() if rng is None else rng
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, int(groups)
        self.backend_name, self.backend = backend, get_backend(backend)
        self.need_dx = need_dx
        group_in = self.in_channels // self.groups
        w_shape = (kh, kw, group_in, self.out_channels)
        self.init = init  # kept so that the layer's spec (model/spec.py) rebuilds it
        _init_params(self, init, rng, w_shape, kh * kw * group_in, bias, dtype)
        self._ctx = None

    def use_backend(self, backend, name: str) -> None:
        """Run on `backend` (a kernels backend module, or an object with its functions, e.g.
        model.warmup.CompilingBackend) from the next forward on; `name` is what reprs and
        checkpoints call it."""
        self.backend_name, self.backend = name, backend

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_features(x, self.in_channels, "Conv2D", "channels")
        y, self._ctx = self.backend.conv2d_forward(
            x, self.params["w"], self.params.get("b"), **self._options()
        )
        return y

    def _options(self) -> dict:
        """The keyword arguments of this layer's conv2d calls; dilation and groups only when
        set, so a backend object written before they existed (a user's) still runs plain
        convolutions."""
        options = {"stride": self.stride, "padding": self.padding}
        if as_pair(self.dilation, "dilation") != (1, 1):
            options["dilation"] = self.dilation
        if self.groups != 1:
            options["groups"] = self.groups
        return options

    def forward_maxpool(
        self, x: np.ndarray, pool: MaxPool2D, training: bool = False
    ) -> np.ndarray | None:
        """pool.forward(self.forward(x)) in one pass where this layer's backend has
        conv2d_maxpool2d_forward (numba, auto: the convolution's output is never written) and
        the pool runs on the same backend; both layers keep their ctx, so their backward passes
        are unchanged. None (nothing run) otherwise."""
        fused = getattr(self.backend, "conv2d_maxpool2d_forward", None)
        if fused is None or pool.backend is not self.backend or not pool.plain:
            return None
        _check_features(x, self.in_channels, "Conv2D", "channels")
        w, b = self.params["w"], self.params.get("b")
        result = fused(x, w, b, size=pool.size, pool_stride=pool.stride, **self._options())
        if result is None:
            return None
        y, self._ctx, pool._ctx = result
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray | None:
        dx, dw, db = self.backend.conv2d_backward(dy, self._ctx, need_dx=self.need_dx)
        return self._keep_grads(dx, dw, db)

    def backward_maxpool(self, dy: np.ndarray, pool: MaxPool2D) -> tuple[bool, np.ndarray | None]:
        """self.backward(pool.backward(dy)) in one call where this layer's backend has
        conv2d_maxpool2d_backward (numba, auto: the pool's gradient is never written whole) and
        the pool runs on the same backend: (True, dx), the same numbers as the two calls.
        (False, None), nothing run, otherwise."""
        fused = getattr(self.backend, "conv2d_maxpool2d_backward", None)
        if fused is None or pool.backend is not self.backend:
            return False, None
        result = fused(dy, self._ctx, pool._ctx, self.need_dx)
        if result is None:
            return False, None
        return True, self._keep_grads(*result)

    def _keep_grads(self, dx, dw, db) -> np.ndarray | None:
        self.grads["w"] = dw
        if db is not None:
            self.grads["b"] = db
        return dx

    def __repr__(self):
        extra = "".join(
            f", {name}={value}"
            for name, value in (("dilation", self.dilation), ("groups", self.groups))
            if value not in (1, (1, 1))
        )
        return (
            f"Conv2D({self.in_channels}->{self.out_channels}, {self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}{extra}, "
            f"backend={self.backend_name!r})"
        )


class _Pool2D(Layer):
    """Shared wiring of the two pools; `kind` picks the backend functions. padding (n, (ph, pw)
    or ((top, bottom), (left, right))) and ceil_mode mean what they mean in torch.nn.MaxPool2d."""

    kind = ""

    def __init__(self, size=2, stride=None, backend="im2col", padding=0, ceil_mode=False):
        super().__init__()
        self.size, self.stride = size, stride
        self.padding, self.ceil_mode = padding, bool(ceil_mode)
        self.use_backend(get_backend(backend), backend)
        self._ctx = None

    @property
    def plain(self) -> bool:
        """No padding and floor division: the pool the fused conv/BatchNorm + pool passes run."""
        return self.padding in (0, (0, 0)) and not self.ceil_mode

    def _options(self) -> dict:
        # Only what differs from the defaults, so a user's backend object written before pool
        # padding existed still runs plain pools.
        options: dict = {"size": self.size, "stride": self.stride}
        if self.padding not in (0, (0, 0)):
            options["padding"] = self.padding
        if self.ceil_mode:
            options["ceil_mode"] = True
        return options

    def use_backend(self, backend, name: str) -> None:
        """As Conv2D.use_backend."""
        self.backend_name, self.backend = name, backend
        self._forward = getattr(backend, f"{self.kind}pool2d_forward")
        self._backward = getattr(backend, f"{self.kind}pool2d_backward")

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        y, self._ctx = self._forward(x, **self._options())
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return self._backward(dy, self._ctx)

    def __repr__(self):
        extra = f", padding={self.padding}" if self.padding not in (0, (0, 0)) else ""
        extra += ", ceil_mode=True" if self.ceil_mode else ""
        return (
            f"{type(self).__name__}({self.size}, stride={self.stride}{extra}, "
            f"backend={self.backend_name!r})"
        )


class MaxPool2D(_Pool2D):
    """x: (N, H, W, C) -> (N, OH, OW, C), the maximum of each window."""

    kind = "max"


class AvgPool2D(_Pool2D):
    """x: (N, H, W, C) -> (N, OH, OW, C), the mean of each window; count_include_pad (PyTorch's
    default True) counts the padding in a padded window's divisor."""

    kind = "avg"

    def __init__(
        self,
        size=2,
        stride=None,
        backend="im2col",
        padding=0,
        ceil_mode=False,
        count_include_pad=True,
    ):
        super().__init__(size, stride, backend, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def _options(self) -> dict:
        options = super()._options()
        if not self.count_include_pad:
            options["count_include_pad"] = False
        return options


def pair_kind(layer: Layer, following: Layer) -> str | None:
    """How Sequential may run `layer` and `following` as one call each way: "maxpool" (a Conv2D
    or a BatchNorm, then a MaxPool2D: forward_maxpool, backward_maxpool), "relu" (a BatchNorm,
    then a ReLU: forward_relu, backward_relu), or None. Those methods say when they do not
    apply."""
    if isinstance(layer, (Conv2D, BatchNorm)) and isinstance(following, MaxPool2D):
        return "maxpool"
    if isinstance(layer, BatchNorm) and type(following) is ReLU:
        return "relu"
    return None


def fusable(layer: Layer, following: Layer) -> bool:
    """True when Sequential may run `layer` and `following` as one call each way (pair_kind)."""
    return pair_kind(layer, following) is not None


class Dense(Layer):
    """Fully connected: x: (N, in_features) -> y = x @ W + b: (N, out_features). W is
    (in_features, out_features); `init` as Conv2D's, with fan_in = in_features."""

    no_decay = frozenset({"b"})

    def __init__(self, in_features, out_features, rng=None, dtype=np.float32, init="uniform"):
        super().__init__()
        rng = np.random.default_rng() if rng is None else rng
        self.in_features, self.out_features = int(in_features), int(out_features)
        shape = (self.in_features, self.out_features)
        self.init = init
        _init_params(self, init, rng, shape, self.in_features, True, dtype)
        self._x = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if x.ndim != 2:
            raise ValueError(
                f"Dense: input x must be 2-D (N, {self.in_features}), got shape "
                f"{x.shape}; put a Flatten before it"
            )
        _check_features(x, self.in_features, "Dense", "features")
        self._x = x
        y = gemm.matmul(x, self.params["w"])  # both cores, BLAS on one thread (kernels/gemm.py)
        y += self.params["b"]
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._x is None:
            raise RuntimeError("Dense.backward called before forward")
        # dW and dX are independent products: one per core
        self.grads["w"], dx = gemm.matmul_pair((self._x.T, dy), (dy, self.params["w"].T))
        self.grads["b"] = dy.sum(axis=0)
        return dx

    def __repr__(self):
        return f"Dense({self.in_features}->{self.out_features})"


class ReLU(Layer):
    """y = max(x, 0), any shape (compiled: kernels/activations.py). The gradient at exactly 0 is
    taken as 0."""

    _y: np.ndarray | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        # y, not a mask, is kept: y > 0 exactly where x > 0, and prediction, which never calls
        # backward, then makes one pass over x rather than two
        self._y = activations.relu(x)
        return self._y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._y is None:
            raise RuntimeError(
                "ReLU.backward called before forward (after a BatchNorm + ReLU pair's forward, "
                "the pair's backward is BatchNorm.backward_relu)"
            )
        return activations.relu_backward(self._y, dy)


class Flatten(Layer):
    """x: (N, d1, d2, ...) -> (N, d1*d2*...), in NHWC (row-major) order."""

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability `rate` and scale the
    survivors by 1 / (1 - rate), so evaluation (which passes x through) needs no rescaling."""

    def __init__(self, rate=0.5, rng=None):
        super().__init__()
        if not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self.rng = np.random.default_rng() if rng is None else rng
        self._mask = None
        # data-parallel training (model/distributed.py) sets (lo, hi, n): x holds rows lo..hi-1
        # of a global batch of n, and the mask is drawn for the whole batch, as one process
        # would draw it, then sliced
        self.shard: tuple[int, int, int] | None = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        if not training or self.rate == 0:
            self._mask = None
            return x
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        if self.shard is None:
            keep = self.rng.random(x.shape, dtype=dtype)
        else:
            lo, hi, n = self.shard
            keep = self.rng.random((n, *x.shape[1:]), dtype=dtype)[lo:hi]
        self._mask = (keep >= self.rate).astype(x.dtype) * x.dtype.type(1 / (1 - self.rate))
        return x * self._mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy if self._mask is None else dy * self._mask

    def __repr__(self):
        return f"Dropout({self.rate})"


class _RowsCache(NamedTuple):
    """What BatchNorm's training forward keeps for its backward: x_hat (R, C), inv_std (C,), the
    input's shape, the rows the statistics cover, and whether a ReLU ran in the same passes
    (forward_relu: then backward_relu is the pair's backward)."""

    x_hat: np.ndarray
    inv_std: np.ndarray
    shape: tuple
    rows: float
    relu: bool


class _PooledCache(NamedTuple):
    """What BatchNorm.forward_maxpool keeps for backward_maxpool: its input x (N, H, W, C), the
    pool's argmax (N, H/2, W/2, C), the batch mean and inv_std (C,) and the rows they cover (the count)."""

    x: np.ndarray
    argmax: np.ndarray
    mean: np.ndarray
    inv_std: np.ndarray
    rows: float


class BatchNorm(Layer):
    """Batch normalisation over the last axis: per channel for (N, H, W, C), per feature for (N, F).

    Training normalises with the batch's mean and (biased) variance and updates the running
    statistics (running = momentum * running + (1 - momentum) * batch, unbiased variance as in
    PyTorch); evaluation uses the running statistics. gamma (scale) and beta (shift): (C,).
    """

    no_decay = frozenset({"gamma", "beta"})

    def __init__(self, num_features, momentum=0.9, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_features, self.momentum, self.eps = int(num_features), momentum, eps
        self.params["gamma"] = np.ones(num_features, dtype=dtype)
        self.params["beta"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
        self._cache = None
        # data-parallel training (model/distributed.py) sets this to a cross-process sum, so
        # that the batch statistics, and their gradients, are those of the whole global batch
        self.reduce = None

    def forward(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        _check_features(x, self.num_features, "BatchNorm", "channels/features")
        if training:
            return self._train(x, relu=False)
        self._cache = None
        y = batchnorm.forward_eval(
            np.ascontiguousarray(x).reshape(-1, self.num_features),  # (N*H*W, C)
            self.buffers["running_mean"],
            self.buffers["running_var"],
            self.params["gamma"],
            self.params["beta"],
            self.eps,
        )
        return y.reshape(x.shape)

    def _train(self, x: np.ndarray, relu: bool) -> np.ndarray:
        """The training forward (with relu: followed by a ReLU in the same passes), its running
        statistics updated and its _RowsCache kept."""
        rows = np.ascontiguousarray(x).reshape(-1, self.num_features)  # (N*H*W, C)
        shift = None if self.reduce is None else self.buffers["running_mean"]
        y, x_hat, mean, var, inv_std, count = batchnorm.forward_train(
            rows, self.params["gamma"], self.params["beta"], self.eps, shift, self.reduce, relu
        )
        self._update_running(mean, var, count, x.dtype)
        self._cache = _RowsCache(x_hat, inv_std, x.shape, count, relu)
        return y.reshape(x.shape)

    def _backward_rows(self, dy: np.ndarray, cache: _RowsCache) -> np.ndarray:
        """dx for dy of _train's output shape; fills grads."""
        dy_rows = np.ascontiguousarray(dy).reshape(-1, self.num_features)
        dx, self.grads["gamma"], self.grads["beta"] = batchnorm.backward(
            dy_rows,
            cache.x_hat,
            cache.inv_std,
            self.params["gamma"],
            count=cache.rows,
            reduce=self.reduce,
            beta=self.params["beta"],
            relu=cache.relu,
        )
        return dx.reshape(cache.shape)

    def _update_running(self, mean, var, count, dtype) -> None:
        m = dtype.type(self.momentum)
        self.buffers["running_mean"] = m * self.buffers["running_mean"] + (1 - m) * mean
        unbiased = var * dtype.type(count / max(count - 1, 1))
        self.buffers["running_var"] = m * self.buffers["running_var"] + (1 - m) * unbiased

    def forward_maxpool(
        self, x: np.ndarray, pool: MaxPool2D, training: bool = False
    ) -> np.ndarray | None:
        """pool.forward(self.forward(x, training)) in one pass (kernels/batchnorm_pool.py: the
        normalised (N, H, W, C) array is never written), the same numbers, where it applies:
        training, a 2x2 pool of stride 2 over even H and W, and no cross-process statistics.
        None (nothing run) otherwise. The pool layer then keeps no ctx: backward_maxpool runs
        the pair's backward."""
        if not training or self.reduce is not None or not batchnorm_pool.applies(x.shape):
            return None
        size, stride = as_pair(pool.size, "size"), as_pair(pool.stride or pool.size, "stride")
        if (size, stride) != ((2, 2), (2, 2)) or not pool.plain:
            return None
        _check_features(x, self.num_features, "BatchNorm", "channels/features")
        x = np.ascontiguousarray(x)
        gamma, beta = self.params["gamma"], self.params["beta"]
        y, argmax, mean, var, inv_std, count = batchnorm_pool.forward_train_maxpool2(
            x, gamma, beta, self.eps
        )
        self._update_running(mean, var, count, x.dtype)
        self._cache = _PooledCache(x, argmax, mean, inv_std, count)
        pool._ctx = None
        return y

    def forward_relu(self, x: np.ndarray, relu: ReLU, training: bool = False) -> np.ndarray | None:
        """relu.forward(self.forward(x, training)) in batch norm's two passes
        (kernels/batchnorm.py, relu=True): the same numbers, one pass over the activation less
        each way. Training only, without cross-process statistics; None (nothing run)
        otherwise. The ReLU layer then keeps nothing: backward_relu runs the pair's backward."""
        if not training or self.reduce is not None:
            return None
        _check_features(x, self.num_features, "BatchNorm", "channels/features")
        relu._y = None
        return self._train(x, relu=True)

    def backward_relu(self, dy: np.ndarray, relu: ReLU) -> tuple[bool, np.ndarray | None]:
        """The pair's backward after forward_relu: (True, dx); (False, None), nothing run,
        after a forward of this layer alone."""
        cache = self._cache
        if not (isinstance(cache, _RowsCache) and cache.relu):
            return False, None
        if dy.shape != cache.shape:
            raise ValueError(
                f"BatchNorm + ReLU: dy must have the output's shape {cache.shape}, got {dy.shape}"
            )
        return True, self._backward_rows(dy, cache)

    def backward_maxpool(self, dy: np.ndarray, pool: MaxPool2D) -> tuple[bool, np.ndarray | None]:
        """The pair's backward after forward_maxpool: (True, dx); (False, None), nothing run,
        after a forward of this layer alone."""
        pooled = self._cache
        if not isinstance(pooled, _PooledCache):
            return False, None
        if dy.shape != pooled.argmax.shape:
            raise ValueError(
                f"BatchNorm + MaxPool2D: dy must have the pooled output's shape "
                f"{pooled.argmax.shape}, got {dy.shape}"
            )
        dx, self.grads["gamma"], self.grads["beta"] = batchnorm_pool.backward_maxpool2(
            np.ascontiguousarray(dy),
            pooled.argmax,
            pooled.x,
            pooled.mean,
            pooled.inv_std,
            self.params["gamma"],
            pooled.rows,
        )
        return True, dx

    def backward(self, dy: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward (in training mode)")
        if isinstance(self._cache, _PooledCache):
            raise RuntimeError(
                "BatchNorm.backward after forward_maxpool: the pair's backward is "
                "backward_maxpool(dy, pool)"
            )
        if self._cache.relu:
            raise RuntimeError(
                "BatchNorm.backward after forward_relu: the pair's backward is "
                "backward_relu(dy, relu)"
            )
        return self._backward_rows(dy, self._cache)

    def __repr__(self):
        return f"BatchNorm({self.num_features})"
