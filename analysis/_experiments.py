"""An offline experiment kit: small data sets, small networks and a short seeded training loop.

Nothing here downloads anything: digits come bundled with scikit-learn, the rest is synthetic.
The analyses (neural codes, neuron alignment, LinearScope, the interaction basis) and their
tutorials train their networks with these, so a digits CNN is a few seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor, nn

from interp import InterpError, check_option, progress_bar

__all__ = [
    "Dataset",
    "digits",
    "xor_clusters",
    "modular_addition",
    "mlp",
    "cnn",
    "train",
    "accuracy",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


@dataclass(frozen=True)
class Dataset:
    """A train/test split of a classification task (inputs float32, labels int64)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.x_train[0].numel())

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """The same task with ``n`` training examples drawn without replacement (test unchanged)."""
        if not 0 < n <= len(self.x_train):
            raise InterpError(f"subset needs 0 < n <= {len(self.x_train)}; got {n}.")
        keep = torch.randperm(len(self.x_train), generator=torch.Generator().manual_seed(seed))[:n]
        return Dataset(
            self.name,
            self.x_train[keep],
            self.y_train[keep],
            self.x_test,
            self.y_test,
            self.n_classes,
        )

    def __repr__(self) -> str:
        shape = tuple(self.x_train.shape[1:])
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input shape={shape}, classes={self.n_classes})"
        )


def _split(
    name: str, x: Tensor, y: Tensor, test_fraction: float, seed: int, n_classes: int
) -> Dataset:
    if not 0 < test_fraction < 1:
        raise InterpError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * len(x)))
    test, train_ = order[:n_test], order[n_test:]
    return Dataset(name, x[train_], y[train_], x[test], y[test], n_classes)


def digits(*, image: bool = True, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), pixels scaled to [0, 1].

    Parameters
    ----------
    image : bool
        ``True`` gives inputs shaped (1, 8, 8) for CNNs, ``False`` flat vectors of 64.

    Examples
    --------
    >>> data = digits(image=False)
    >>> data.x_train.shape, data.n_classes
    (torch.Size([1348, 64]), 10)
    """
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32) / 16.0
    x = x[:, None] if image else x.reshape(len(x), -1)
    return _split("digits", x, torch.tensor(raw.target), test_fraction, seed, 10)


def xor_clusters(
    n: int = 1000,
    *,
    dim: int = 2,
    noise: float = 0.0,
    spread: float = 0.3,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Four Gaussian clusters at (±1, ±1, 0...) labelled by XOR of the signs; a fraction ``noise``
    of the *training* labels is flipped (the benign-overfitting setting: test labels stay clean).

    Examples
    --------
    >>> data = xor_clusters(400, noise=0.1)
    >>> float((data.y_train != (data.x_train[:, 0] * data.x_train[:, 1] < 0).long()).float().mean()) > 0.05
    True
    """
    if dim < 2:
        raise InterpError(f"xor_clusters needs dim >= 2; got {dim}.")
    if not 0 <= noise < 0.5:
        raise InterpError(f"noise is the fraction of flipped labels, in [0, 0.5); got {noise}.")
    g = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (n, 2), generator=g) * 2 - 1
    centers = torch.zeros(n, dim)
    centers[:, :2] = signs.float()
    x = centers + spread * torch.randn(n, dim, generator=g)
    y = (signs[:, 0] != signs[:, 1]).long()
    data = _split("xor-clusters", x, y, test_fraction, seed, 2)
    flip = torch.rand(len(data.y_train), generator=g) < noise
    return Dataset(
        data.name,
        data.x_train,
        torch.where(flip, 1 - data.y_train, data.y_train),
        data.x_test,
        data.y_test,
        2,
    )


def modular_addition(p: int = 59, *, train_fraction: float = 0.8, seed: int = 0) -> Dataset:
    """All pairs (a, b) mod ``p`` as concatenated one-hot vectors (2p inputs), label (a + b) mod p.

    Examples
    --------
    >>> data = modular_addition(7)
    >>> data.x_train.shape[1], data.n_classes, len(data.x_train) + len(data.x_test)
    (14, 7, 49)
    """
    if p < 2:
        raise InterpError(f"modular_addition needs p >= 2; got {p}.")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    eye = torch.eye(p)
    x = torch.cat([eye[a], eye[b]], dim=1)
    return _split(f"modular-addition-{p}", x, (a + b) % p, 1 - train_fraction, seed, p)


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    activation: str = "relu",
    bias: bool = True,
    seed: int = 0,
) -> nn.Sequential:
    """``Linear -> activation`` per hidden width, then a ``Linear`` readout, seeded.

    Examples
    --------
    >>> mlp(64, [32, 16], 10)
    Sequential(
      (0): Linear(in_features=64, out_features=32, bias=True)
      (1): ReLU()
      (2): Linear(in_features=32, out_features=16, bias=True)
      (3): ReLU()
      (4): Linear(in_features=16, out_features=10, bias=True)
    )
    """
    check_option("activation", activation, ACTIVATIONS)
    with torch.random.fork_rng():  # seeded, and the caller's random state is left alone
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h, bias=bias), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features, bias=bias))
        return nn.Sequential(*layers)


def cnn(
    channels: Sequence[int] = (8, 16),
    hidden: int = 32,
    n_classes: int = 10,
    *,
    image_size: int = 8,
    in_channels: int = 1,
    seed: int = 0,
) -> nn.Sequential:
    """``Conv3x3 -> ReLU -> MaxPool2`` per entry of ``channels``, then ``Linear -> ReLU -> Linear``.

    Examples
    --------
    >>> net = cnn()
    >>> net(torch.zeros(5, 1, 8, 8)).shape
    torch.Size([5, 10])
    """
    if image_size % (2 ** len(channels)):
        raise InterpError(
            f"image_size {image_size} cannot be halved {len(channels)} times by max pooling."
        )
    with torch.random.fork_rng():  # seeded, and the caller's random state is left alone
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        side = image_size // 2 ** len(channels)
        layers += [
            nn.Flatten(),
            nn.Linear(width * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        ]
        return nn.Sequential(*layers)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Fraction of examples whose arg-max output is the label."""
    was_training = model.training
    model.eval()
    try:
        return float((model(x).argmax(-1) == y).float().mean())
    finally:
        model.train(was_training)


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 100,
    lr: float = 1e-2,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    log_every: int = 1,
    callback: Callable[[int, nn.Module], None] | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train ``model`` with cross-entropy on ``data``; return the history as a data frame.

    Parameters
    ----------
    batch_size : int, optional
        Mini-batch size; ``None`` trains on the full training set each step.
    optimizer : {"adam", "adamw", "sgd"}
    callback : callable, optional
        ``callback(epoch, model)`` after every epoch (epoch 0 is before training), for checkpoints
        of a training-time sweep. The model is in eval mode during the call.
    progress : bool, optional
        A tqdm bar; default: only on a terminal.

    Returns
    -------
    pandas.DataFrame
        Columns ``epoch, loss, train_accuracy, test_accuracy``, one row every ``log_every`` epochs.
        The model is left in eval mode.

    Examples
    --------
    >>> data = xor_clusters(200)
    >>> history = train(mlp(2, [16], 2), data, epochs=50)
    >>> bool(history.test_accuracy.iloc[-1] > 0.9)
    True
    """
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    check_option("optimizer", optimizer, optimizers)
    if epochs < 0:
        raise InterpError(f"epochs must be >= 0; got {epochs}.")
    opt = optimizers[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    size = n if batch_size is None else batch_size
    rows = []

    def record(epoch: int, loss: float) -> None:
        model.eval()
        if epoch % log_every == 0 or epoch == epochs:
            rows.append(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "train_accuracy": accuracy(model, data.x_train, data.y_train),
                    "test_accuracy": accuracy(model, data.x_test, data.y_test),
                }
            )
        if callback is not None:
            callback(epoch, model)

    with torch.no_grad():
        model.eval()
        record(0, float(nn.functional.cross_entropy(model(data.x_train), data.y_train)))
    for epoch in progress_bar(range(1, epochs + 1), desc=f"train {data.name}", progress=progress):
        model.train()
        order = torch.randperm(n, generator=g)
        total = 0.0
        for start in range(0, n, size):
            batch = order[start : start + size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        record(epoch, total / n)
    model.eval()
    return pd.DataFrame(rows)
