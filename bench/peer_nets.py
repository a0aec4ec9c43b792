"""The benchmark's two architectures (model.network.build_network) as PyTorch and Keras models.

    torch_network(torch, "deep")   -> nn.Sequential taking (N, 1, 28, 28), giving logits (N, 10)
    keras_network(keras, "deep")   -> keras.Sequential taking (N, 28, 28, 1), giving logits (N, 10)

Same layers, channels and order as ours (max-pool before ReLU, as ours computes it; the two
commute), so the peers do the same work. Initialisation is each framework's default: only speed
and one epoch's accuracy are compared, not the weights.
"""

from __future__ import annotations

ARCHS = ("small", "deep")


def _check(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def torch_network(torch, arch: str):
    """small: conv16-pool-relu-dense128-relu-dense10; deep: two conv(no bias)-BN-pool-relu
    blocks (32, 64 channels), dense128-relu-dropout0.5-dense10."""
    _check(arch)
    nn = torch.nn
    if arch == "small":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 14 * 14, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(7 * 7 * 64, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def keras_network(keras, arch: str):
    """torch_network's layers in Keras, NHWC."""
    _check(arch)
    layers = keras.layers
    if arch == "small":
        body = [
            layers.Conv2D(16, 3, padding="same"),
            layers.MaxPooling2D(2),
            layers.ReLU(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(10),
        ]
    else:
        body = []
        for channels in (32, 64):
            body += [
                layers.Conv2D(channels, 3, padding="same", use_bias=False),
                layers.BatchNormalization(),
                layers.MaxPooling2D(2),
                layers.ReLU(),
            ]
        body += [
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(10),
        ]
    return keras.Sequential([keras.Input((28, 28, 1)), *body])
