"""One epoch on the first 10,000 MNIST training images, Adam lr 0.002, batch 64, seeds 0-2:
our deep network with He-normal weights (init="he") or PyTorch's default init (init="uniform"),
against the same network in PyTorch, from its default init or from our He weights copied in."""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, "tests")
import test_model_parity as P

from model import layers as L
from model.batches import iterate_batches, scale
from model.mnist import load_mnist
from model.network import build_network
from model.optim import Adam
from model.training import fit

data = load_mnist(os.environ.get("MNIST_DIR", "../shared/data/mnist"), progress=False)
x, y = scale(data.x_train[:10000]), data.y_train[:10000].astype(np.intp)
xt, yt = scale(data.x_test), data.y_test.astype(np.intp)


def he_net(seed):
    net = build_network("deep", seed=seed)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, (L.Conv2D, L.Dense)):
            w = layer.params["w"]
            fan_in = w.size // w.shape[-1]
            layer.params["w"][...] = rng.normal(0, np.sqrt(2 / fan_in), w.shape)
            if "b" in layer.params:
                layer.params["b"][...] = 0
    return net


def ours(net, warmup):
    h = fit(
        net,
        x,
        y,
        1,
        Adam(lr=P.LR),
        64,
        x_test=xt,
        y_test=yt,
        warmup_steps=warmup,
        progress=False,
        log=None,
    )
    return h["test_acc"][-1]


def theirs(seed, copy_from=None):
    torch.manual_seed(seed)
    t = P.torch_deep()
    if copy_from is not None:
        P.copy_into_torch(copy_from, t)
    opt = torch.optim.Adam(t.parameters(), lr=P.LR)
    rng = np.random.default_rng(seed)
    t.train()
    for xb, yb in iterate_batches(x, y, 64, rng):
        loss = torch.nn.functional.cross_entropy(t(P.nchw(xb)), torch.from_numpy(yb))
        opt.zero_grad()
        loss.backward()
        opt.step()
    t.eval()
    with torch.no_grad():
        pred = np.concatenate(
            [t(P.nchw(xt[i : i + 1000])).argmax(1).numpy() for i in range(0, 10000, 1000)]
        )
    return float((pred == yt).mean())


torch.set_num_threads(1)
rows = {
    "ours, He-normal weights, zero biases (20 warmup steps)": lambda s: ours(he_net(s), 20),
    "ours, PyTorch's init (20 warmup steps, the trainer's default)": lambda s: ours(
        build_network("deep", seed=s), 20
    ),
    "ours, PyTorch's init, no warmup": lambda s: ours(build_network("deep", seed=s), 0),
    "PyTorch, our He-normal weights copied in": lambda s: theirs(s, he_net(s)),
    "PyTorch, its default init": lambda s: theirs(s),
}
print(__doc__)
print("| run | seed 0 | seed 1 | seed 2 | mean |\n|---|---|---|---|---|")
for name, run in rows.items():
    accs = [run(s) for s in (0, 1, 2)]
    print(
        f"| {name} | " + " | ".join(f"{a:.2%}" for a in accs) + f" | **{np.mean(accs):.2%}** |",
        flush=True,
    )
