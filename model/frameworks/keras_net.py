"""A convbench Sequential as a keras.Sequential with the same weights, trained by TensorFlow.

Keras is NHWC with HWIO kernels, as we are, so weights copy as they are; explicit conv padding
becomes a ZeroPadding2D before a "valid" Conv2D. Keras's BatchNormalization keeps its moving
variance from the biased batch variance (ours and PyTorch's from the unbiased one): the
evaluation-mode statistics differ by the factor n/(n-1) (1.00002 for a batch of 64 x 28 x 28).

The updates are model.optim's (PyTorch's) rules written in TensorFlow, not Keras's optimizers:
Keras's SGD folds the learning rate into the velocity (v = m * v - lr * g; p += v) where we and
PyTorch apply it at the step (v = m * v + g; p -= lr * v), so under a changing rate (warmup, the
cosine and step schedules) the two are different runs; Keras's Adam adds epsilon after the bias
correction of the second moment, we and PyTorch before it.
"""

from __future__ import annotations

import numpy as np

from .. import layers as L
from ..tensorflow_import import import_tensorflow

tf = import_tensorflow()
keras = tf.keras


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _depthwise(layer) -> bool:
    """Our groups == C_in is Keras's DepthwiseConv2D (its kernel (KH, KW, C_in, multiplier) is
    ours (KH, KW, 1, C_in * multiplier) reshaped: output channel c * multiplier + m either way)."""
    return layer.groups == layer.in_channels > 1


def _conv(layer, mode: str, dtype: str):
    options = dict(
        strides=_pair(layer.stride),
        padding=mode,
        dilation_rate=_pair(layer.dilation),
        use_bias="b" in layer.params,
        dtype=dtype,
    )
    if _depthwise(layer):
        multiplier = layer.out_channels // layer.in_channels
        return keras.layers.DepthwiseConv2D(
            layer.kernel_size, depth_multiplier=multiplier, **options
        )
    return keras.layers.Conv2D(
        layer.out_channels, layer.kernel_size, groups=layer.groups, **options
    )


def _pool_padding(layer, dtype: str):
    """The layer that pads before a padded Keras pool (Keras pools have only "valid" and
    "same"): zeros for an average that counts them (count_include_pad), -inf for a maximum
    (padding never wins a window). None without padding; ValueError for what Keras has no
    equivalent of (ceil_mode, an average that does not count its padding)."""
    name = type(layer).__name__
    if layer.ceil_mode:
        raise ValueError(f"--framework keras: {name} with ceil_mode has no Keras equivalent")
    ph, pw = _pair(layer.padding)
    if (ph, pw) == (0, 0):
        return None
    if isinstance(layer, L.AvgPool2D):
        if not layer.count_include_pad:
            raise ValueError(
                f"--framework keras: {name} with padding and count_include_pad=False has no "
                "Keras equivalent"
            )
        return keras.layers.ZeroPadding2D((ph, pw), dtype=dtype)
    pads = [[0, 0], [ph, ph], [pw, pw], [0, 0]]
    return keras.layers.Lambda(
        lambda t: tf.pad(t, pads, constant_values=float("-inf")), dtype=dtype
    )


def translate(net) -> tuple[keras.Sequential, list]:
    """(the model, [(our layer, its keras layer)]) with net's current weights."""
    dtype = "float64" if net.dtype == np.float64 else "float32"
    model = keras.Sequential([keras.Input((28, 28, 1), dtype=dtype)])
    pairs = []
    for layer in net.layers:
        if isinstance(layer, L.Conv2D):
            pad = layer.padding
            if isinstance(pad, str):
                mode = pad
            else:
                mode = "valid"
                if _pair(pad) != (0, 0):
                    model.add(keras.layers.ZeroPadding2D(_pair(pad), dtype=dtype))
            k = _conv(layer, mode, dtype)
        elif isinstance(layer, L.BatchNorm):
            k = keras.layers.BatchNormalization(
                momentum=layer.momentum, epsilon=layer.eps, dtype=dtype
            )
        elif isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
            cls = (
                keras.layers.MaxPooling2D
                if isinstance(layer, L.MaxPool2D)
                else keras.layers.AveragePooling2D
            )
            stride = layer.size if layer.stride is None else layer.stride
            padded = _pool_padding(layer, dtype)
            if padded is not None:
                model.add(padded)
            k = cls(_pair(layer.size), strides=_pair(stride), dtype=dtype)
        elif isinstance(layer, L.ReLU):
            k = keras.layers.ReLU(dtype=dtype)
        elif isinstance(layer, L.Flatten):
            k = keras.layers.Flatten(dtype=dtype)
        elif isinstance(layer, L.Dropout):
            k = keras.layers.Dropout(layer.rate, dtype=dtype)
        elif isinstance(layer, L.Dense):
            k = keras.layers.Dense(layer.out_features, dtype=dtype)
        else:
            raise ValueError(f"--framework keras: no Keras version of {type(layer).__name__}")
        model.add(k)
        pairs.append((layer, k))
    _copy(pairs, into_keras=True)
    return model, pairs


def _arrays(layer) -> list[tuple[dict, str]]:
    """Our arrays in the order keras's get_weights() lists them."""
    if isinstance(layer, (L.Conv2D, L.Dense)):
        return [(layer.params, "w")] + ([(layer.params, "b")] if "b" in layer.params else [])
    if isinstance(layer, L.BatchNorm):
        return [
            (layer.params, "gamma"),
            (layer.params, "beta"),
            (layer.buffers, "running_mean"),
            (layer.buffers, "running_var"),
        ]
    return []


def _copy(pairs, into_keras: bool) -> None:
    for layer, k in pairs:
        arrays = _arrays(layer)
        if not arrays:
            continue
        # Keras's depthwise kernel is ours reshaped (see _depthwise); everything else copies as is
        w_shape = k.get_weights()[0].shape
        if into_keras:
            values = [store[key] for store, key in arrays]
            values[0] = values[0].reshape(w_shape)
            k.set_weights(values)
        else:
            for (store, key), value in zip(arrays, k.get_weights()):
                store[key] = value.reshape(store[key].shape).astype(store[key].dtype)


class Model:
    """net translated to Keras, with the optimizer named by ours (sgd, momentum, adam)."""

    def __init__(self, net, optimizer, seed: int):
        keras.utils.set_random_seed(seed)
        self.model, self.pairs = translate(net)
        variables = self.model.trainable_variables
        dtype = variables[0].dtype

        def slots():
            return [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

        self.adam = optimizer.name == "adam"
        self.lr = tf.Variable(optimizer.lr, dtype=dtype, trainable=False)
        self.t = tf.Variable(0.0, dtype=dtype, trainable=False)
        if self.adam:
            self.beta1, self.beta2, self.eps = optimizer.beta1, optimizer.beta2, optimizer.eps
            self.m, self.v = slots(), slots()
        else:
            self.momentum = getattr(optimizer, "momentum", 0.0)
            self.velocity = slots()
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._step = tf.function(self._train_step)

    def _train_step(self, xb, yb):
        with tf.GradientTape() as tape:
            logits = self.model(xb, training=True)
            loss = self.loss(yb, logits)
        variables = self.model.trainable_variables
        self._update(variables, tape.gradient(loss, variables))
        return loss, logits

    def _update(self, variables, grads):
        """model.optim's Momentum (SGD: momentum 0) or Adam, see the module docstring."""
        self.t.assign_add(1.0)
        if not self.adam:
            for var, g, v in zip(variables, grads, self.velocity):
                v.assign(self.momentum * v + g)
                var.assign_sub(self.lr * v)
            return
        step = self.lr / (1.0 - self.beta1**self.t)
        root = tf.sqrt(1.0 - self.beta2**self.t)
        for var, g, m, v in zip(variables, grads, self.m, self.v):
            m.assign(self.beta1 * m + (1.0 - self.beta1) * g)
            v.assign(self.beta2 * v + (1.0 - self.beta2) * g * g)
            var.assign_sub(step * m / (tf.sqrt(v) / root + self.eps))

    def step(self, xb, yb, lr: float) -> tuple[float, int]:
        """One update on xb (B, 28, 28, 1), yb (B,) labels at learning rate lr."""
        self.lr.assign(lr)
        loss, logits = self._step(tf.constant(xb), tf.constant(np.asarray(yb, np.int64)))
        return float(loss), int((np.argmax(logits.numpy(), axis=1) == yb).sum())

    def evaluate(self, x, y, batch_size: int = 1000) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) in inference mode."""
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            logits = self.model(x[i : i + batch_size], training=False).numpy()
            yb = np.asarray(y[i : i + batch_size], np.int64)
            loss_sum += float(self.loss(yb, logits)) * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
        return loss_sum / len(x), correct / len(x)

    def copy_back(self, net) -> None:
        _copy(self.pairs, into_keras=False)
