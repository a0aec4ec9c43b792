"""A convbench Sequential as a keras.Sequential with the same weights, trained by TensorFlow.

Keras is NHWC with HWIO kernels, as we are, so weights copy as they are; explicit conv padding
becomes a ZeroPadding2D before a "valid" Conv2D. Keras's BatchNormalization keeps its moving
variance from the biased batch variance (ours and PyTorch's from the unbiased one): the
evaluation-mode statistics differ by the factor n/(n-1) (1.00002 for a batch of 64 x 28 x 28).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402

from .. import layers as L  # noqa: E402


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
        if optimizer.name == "adam":
            self.opt = keras.optimizers.Adam(
                optimizer.lr, beta_1=optimizer.beta1, beta_2=optimizer.beta2, epsilon=optimizer.eps
            )
        else:
            self.opt = keras.optimizers.SGD(
                optimizer.lr, momentum=getattr(optimizer, "momentum", 0.0)
            )
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        self._step = tf.function(self._train_step)

    def _train_step(self, xb, yb):
        with tf.GradientTape() as tape:
            logits = self.model(xb, training=True)
            loss = self.loss(yb, logits)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.opt.apply_gradients(zip(grads, self.model.trainable_variables))
        return loss, logits

    def step(self, xb, yb, lr: float) -> tuple[float, int]:
        """One update on xb (B, 28, 28, 1), yb (B,) labels at learning rate lr."""
        self.opt.learning_rate.assign(lr)
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
