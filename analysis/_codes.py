"""Neural codes: networks read as hash encoders (He, Lei, Ji & Tao, arXiv:2101.05490).

The *neural code* of an input is its activation pattern: one bit per ReLU-like unit, set when the
unit's pre-activation is positive. In a piecewise-linear network the code names the linear region
the input falls in. The paper's findings, which this module measures:

- **determinism**: past some width almost every example has a code of its own (the redundancy
  ratio ``(N - distinct codes) / N`` falls to zero);
- **categorization**: codes of one class are close in Hamming distance, so K-NN (k = 9), logistic
  regression and K-Means on the codes classify nearly as well as the network itself.

Codes are stored packed and compared by the Hamming kernels of :mod:`analysis._hamming`. Dead
neuron rates (Liu et al., arXiv:2212.06145) come from the same bits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from interp import (
    HookedModel,
    InterpError,
    ModuleModel,
    ShapeError,
    TransformerModel,
    progress_bar,
    wrap,
)

from ._base import (
    check_fitted,
    check_labels,
    check_matrix,
    check_options,
    explain_model_errors,
    model_input,
    reset_fitted,
)
from ._hamming import hamming_knn, pack_codes, unpack_codes

__all__ = [
    "PIECEWISE_LINEAR",
    "RELU_LIKE",
    "NeuralCodes",
    "redundancy_ratio",
    "singleton_fraction",
    "cluster_purity",
    "hungarian_accuracy",
    "dead_neuron_rates",
    "codes_phase_chart",
    "plot_phase_chart",
]

#: Piecewise-linear activations with a kink at 0: the sign of their *input* says which linear
#: piece a unit is on, so codes of these units name linear regions. The default of
#: :class:`NeuralCodes` (``activation_types``) when ``layers=None``. ReLU6's upper kink (at 6) is
#: not coded. Hardtanh is left out: its kinks are at -1 and 1, not at 0.
PIECEWISE_LINEAR: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ReLU6,
)

#: :data:`PIECEWISE_LINEAR` plus smooth ReLU-like activations (ELU, CELU, SELU, GELU, SiLU,
#: Mish). Their input sign is still a bit, but the network is not piecewise linear, so their
#: codes name no linear regions; select them with ``NeuralCodes(activation_types=RELU_LIKE)``.
RELU_LIKE: tuple[type[nn.Module], ...] = PIECEWISE_LINEAR + (
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
)

METRICS = ("knn", "logistic", "kmeans")


# -- scores of codes -----------------------------------------------------------------------------


def _rows(codes: Any, name: str = "codes") -> np.ndarray:
    arr = codes.detach().cpu().numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.ndim != 2 or len(arr) == 0:
        raise ShapeError(f"{name} must be a non-empty 2-D array (examples, bits); got {arr.shape}.")
    return arr


def redundancy_ratio(codes: Any) -> float:
    """``(N - distinct codes) / N``: 0 when every example has a linear region of its own.

    Three examples sharing one region add 2/N (not 3/N). Packed or unpacked codes give the same
    value.

    Examples
    --------
    >>> redundancy_ratio([[1, 0], [1, 0], [1, 0], [0, 1]])
    0.5
    """
    arr = _rows(codes)
    return (len(arr) - len(np.unique(arr, axis=0))) / len(arr)


def singleton_fraction(codes: Any) -> float:
    """Fraction of examples whose code no other example has (alone in their linear region).

    Examples
    --------
    >>> singleton_fraction([[1, 0], [1, 0], [1, 0], [0, 1]])
    0.25
    """
    arr = _rows(codes)
    _, inverse, counts = np.unique(arr, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.reshape(-1)] == 1).mean())


def _contingency(labels: Any, clusters: Any) -> np.ndarray:
    """Counts of (cluster, label) pairs: one row per cluster, one column per label."""
    from sklearn.metrics.cluster import contingency_matrix

    y = np.asarray(labels).reshape(-1)
    c = np.asarray(clusters).reshape(-1)
    if y.shape != c.shape or len(y) == 0:
        raise ShapeError(
            f"labels and clusters must be 1-D of the same non-zero length; got {np.shape(labels)} "
            f"and {np.shape(clusters)}."
        )
    return contingency_matrix(c, y)


def cluster_purity(labels: Any, clusters: Any) -> float:
    """Clustering accuracy with each cluster mapped to its majority label (many-to-one).

    This is the paper's ``compute_clustering_accuracy`` for MNIST and CIFAR-10. It is never below
    :func:`hungarian_accuracy`, and equals it when clusters and labels match one to one.

    Examples
    --------
    >>> cluster_purity([0, 0, 1, 1], [5, 5, 5, 7])
    0.75
    """
    table = _contingency(labels, clusters)
    return float(table.max(1).sum() / table.sum())


def hungarian_accuracy(labels: Any, clusters: Any) -> float:
    """Clustering accuracy under the best one-to-one map of clusters to labels (Hungarian).

    The paper's TinyImageNet variant. Clusters left without a label count as wrong.

    Examples
    --------
    >>> hungarian_accuracy([0, 0, 1, 1], [5, 5, 5, 7])
    0.75
    >>> hungarian_accuracy([0, 0, 1, 1], [5, 5, 5, 5])
    0.5
    """
    from scipy.optimize import linear_sum_assignment

    table = _contingency(labels, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def dead_neuron_rates(bits: Any) -> dict[str, float]:
    """Dead neuron rates of unpacked 0/1 codes (1 = active unit).

    Returns
    -------
    dict
        ``dynamic``: fraction of (example, unit) pairs that are inactive, i.e. 1 - mean code;
        ``static``: fraction of units inactive on every example; ``static_count``: their number;
        ``units``: the number of units.

    Examples
    --------
    >>> dead_neuron_rates([[1, 0, 0], [1, 1, 0]])
    {'dynamic': 0.5, 'static': 0.3333333333333333, 'static_count': 1, 'units': 3}
    """
    arr = _rows(bits, "bits")
    active = arr.astype(bool) if arr.dtype == np.bool_ or np.isin(arr, (0, 1)).all() else None
    if active is None:
        raise ShapeError("bits must hold 0/1 codes (unpacked); unpack them with unpack_codes.")
    dead = ~active.any(0)
    return {
        "dynamic": float(1 - active.mean()),
        "static": float(dead.mean()),
        "static_count": int(dead.sum()),
        "units": int(active.shape[1]),
    }


# -- extracting codes ------------------------------------------------------------------------


def _plain_layers(
    hooked: ModuleModel, layers: Sequence[str] | None, types: tuple[type[nn.Module], ...]
) -> list[str]:
    modules = dict(hooked.model.named_modules())
    if layers is None:
        found = [path for path, m in modules.items() if path and isinstance(m, types)]
        if not found:
            kinds = ", ".join(t.__name__ for t in types)
            smooth = [
                f"{path} ({type(m).__name__})"
                for path, m in modules.items()
                if path and isinstance(m, RELU_LIKE) and not isinstance(m, types)
            ]
            hint = (
                f" It has smooth activations {smooth[:6]}, whose codes name no linear regions; "
                "use them anyway with activation_types=RELU_LIKE."
                if smooth
                else ""
            )
            raise InterpError(
                f"No ReLU-like module ({kinds}) found in this {type(hooked.model).__name__}; "
                "activations called as functions (F.relu) cannot be hooked. Use nn.ReLU modules "
                "or name the modules whose inputs are pre-activations with layers=[...]." + hint
            )
        return found
    out = []
    for layer in layers:
        if not isinstance(layer, str) or layer not in modules or not layer:
            names = [p for p in modules if p]
            raise InterpError(
                f"layers must name submodules of the model (their inputs are the "
                f"pre-activations); got {layer!r}. Module paths: {names[:12]}"
                + (" ..." if len(names) > 12 else "")
            )
        out.append(layer)
    return out


def _transformer_sites(model: TransformerModel, layers: Sequence[Any] | None) -> list[str]:
    n = model.spec.n_layers
    if layers is None:
        return [f"m{L}.pre" for L in range(n)]
    out = []
    for layer in layers:
        if isinstance(layer, int | np.integer):
            if not 0 <= layer < n:
                raise InterpError(f"Layer {layer} out of range: the model has layers 0..{n - 1}.")
            out.append(f"m{int(layer)}.pre")
        else:
            out.append(str(model.resolve(layer)))
    return out


class _Recorder:
    """Collects ``input > 0`` of hooked sites per forward pass, each firing in order."""

    def __init__(self) -> None:
        self.got: list[Tensor] = []

    def __call__(self, x: Tensor, site: Any) -> None:
        self.got.append((x.detach() > 0).reshape(x.shape[0], -1).cpu())


def _plain_bits(
    model: nn.Module,
    layers: list[str],
    x: Tensor,
    batch_size: int,
    progress: bool | None,
    name: str = "x",
) -> tuple[Tensor, list[tuple[str, int]]]:
    hooked = ModuleModel(model)
    x = model_input(model, x)  # codes come back to the CPU
    chunks: list[Tensor] = []
    widths: list[tuple[str, int]] = []
    was_training = model.training
    model.eval()
    try:
        recorders = {layer: _Recorder() for layer in layers}
        with torch.no_grad(), hooked.hooks({f"{p}:in": r for p, r in recorders.items()}):
            starts = range(0, len(x), batch_size)
            for start in progress_bar(starts, desc="neural codes", progress=progress):
                for r in recorders.values():
                    r.got.clear()
                with explain_model_errors(model, x, name):
                    model(x[start : start + batch_size])
                parts = []
                fired = []
                for layer, r in recorders.items():
                    if not r.got:
                        raise InterpError(
                            f"Module {layer!r} did not run in the forward pass; choose modules "
                            "the model calls."
                        )
                    parts += r.got
                    fired += [
                        (layer if len(r.got) == 1 else f"{layer}#{i}", t.shape[1])
                        for i, t in enumerate(r.got)
                    ]
                chunks.append(torch.cat(parts, dim=1))
                widths = fired
    finally:
        model.train(was_training)
    return torch.cat(chunks), widths


def _token_batches(model: TransformerModel, prompts: Any) -> list[Tensor]:
    if isinstance(prompts, Tensor):
        return [model.prepare(prompts)]
    if isinstance(prompts, str):
        prompts = [prompts]
    if (
        not isinstance(prompts, Sequence)
        or not prompts
        or not all(isinstance(p, str) for p in prompts)
    ):
        raise InterpError(
            "For a transformer, x must be a prompt, a list of prompts or token ids (batch, pos); "
            f"got {type(prompts).__name__}."
        )
    # one prompt at a time: batching prompts of different lengths would pad them
    return [model.to_tokens(p) for p in prompts]


def _transformer_bits(
    model: TransformerModel, sites: list[str], prompts: Any, progress: bool | None
) -> tuple[Tensor, list[tuple[str, int]]]:
    rows = []
    for tokens in progress_bar(
        _token_batches(model, prompts), desc="neural codes", progress=progress
    ):
        _, cache = model.run_with_cache(tokens, sites)
        acts = [cache[s] for s in sites]  # (batch, pos, d_mlp) each
        rows.append(torch.cat([(a > 0).reshape(-1, a.shape[-1]).cpu() for a in acts], dim=1))
    widths = [(s, int(cache[s].shape[-1])) for s in sites]
    return torch.cat(rows), widths


# -- the estimator ---------------------------------------------------------------------------


class NeuralCodes(BaseEstimator):
    """Activation codes of a network and how well they encode the data (He, Lei et al. 2021).

    Parameters
    ----------
    layers : list, optional
        Plain networks: paths of the modules whose *inputs* are the pre-activations (default:
        every module of one of ``activation_types``; a module called several times contributes
        one block of bits per call). Transformers: layer numbers or site names (default:
        ``m{L}.pre`` of every layer), one code per token position.
    activation_types : tuple of module types
        The modules found when ``layers=None``: by default the piecewise-linear ones
        (:data:`PIECEWISE_LINEAR`: ReLU, LeakyReLU, PReLU, RReLU, ReLU6), whose codes name
        linear regions. :data:`RELU_LIKE` adds smooth activations (GELU, SiLU, Mish, ELU, SELU,
        CELU): their sign bits are still codes, but not linear regions.
    drop_constant : bool
        Drop units that are constant over train and test together, as the paper does. Neither
        distinctness nor Hamming rankings change; dead neuron rates are computed before.
    k : int
        Neighbours of the Hamming K-NN.
    metrics : sequence of {"knn", "logistic", "kmeans"}
        Categorization scores to compute (all by default; they need labels). One word names
        one metric.
    n_clusters : int, optional
        K-Means clusters; default the number of classes (10 in the paper).
    random_state : int
        Seed of K-Means and logistic regression (9 in the paper's code).
    n_init : int
        K-Means restarts (pinned: scikit-learn's default changed in 1.4).
    max_iter : int
        Iterations of each logistic regression (scikit-learn's 100 often stops short on codes).
    batch_size : int
        Examples per forward pass.
    progress : bool, optional
        tqdm bars; default only on a terminal.

    Attributes
    ----------
    model_ : HookedModel
        The fitted model, wrapped (:func:`interp.wrap`).
    sites_ : list of str
        The module paths (plain networks) or site names (transformers) whose pre-activations
        are coded.
    input_shape_ : tuple of int
        Shape of one training example (plain networks); new inputs must match it.
    codes_, test_codes_ : uint8 arrays (examples, bytes)
        Packed codes of the kept units (see :func:`pack_codes`).
    n_bits_ : int
        Code length after dropping constant units; ``n_units_`` before.
    kept_units_ : int64 array
        Indices of the kept units among all ``n_units_``.
    layer_units_ : dict
        Layer (or site) name -> ``(start, stop)`` of its units among all units.
    scores_ : pandas.DataFrame
        One row per split (``train``, ``test``); see :meth:`report`.
    layer_dnr_ : pandas.DataFrame
        Dynamic and static dead neuron rates per layer and split.

    Examples
    --------
    >>> data = xor_clusters(200)
    >>> net = mlp(2, [32], 2)
    >>> _ = train(net, data, epochs=30)
    >>> codes = NeuralCodes(metrics=["knn"]).fit(net, data.x_train, data.y_train,
    ...                                          data.x_test, data.y_test)
    >>> codes.codes_.shape[0], codes.n_bits_ <= 32
    (150, True)
    >>> bool(codes.report().loc["test", "knn_accuracy"] > 0.9)
    True
    """

    def __init__(
        self,
        layers: Sequence[Any] | None = None,
        *,
        activation_types: tuple[type[nn.Module], ...] = PIECEWISE_LINEAR,
        drop_constant: bool = True,
        k: int = 9,
        metrics: Sequence[str] = METRICS,
        n_clusters: int | None = None,
        random_state: int = 9,
        n_init: int = 10,
        max_iter: int = 1000,
        batch_size: int = 1024,
        progress: bool | None = None,
    ) -> None:
        self.layers = layers
        self.activation_types = activation_types
        self.drop_constant = drop_constant
        self.k = k
        self.metrics = metrics
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.n_init = n_init
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.progress = progress

    # -- fitting ----------------------------------------------------------------------------------

    def _check_params(self) -> tuple[str, ...]:
        """The validated metrics (the other parameters are checked and used as they are)."""
        metrics = check_options("metrics", self.metrics, METRICS)
        if not isinstance(self.k, int | np.integer) or self.k < 1:
            raise InterpError(f"k must be a positive integer; got {self.k!r}.")
        if not isinstance(self.batch_size, int | np.integer) or self.batch_size < 1:
            raise InterpError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        types = self.activation_types
        if (
            not isinstance(types, tuple)
            or not types
            or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)
        ):
            raise InterpError(
                "activation_types must be a non-empty tuple of nn.Module classes, e.g. "
                f"PIECEWISE_LINEAR or RELU_LIKE; got {types!r}."
            )
        return metrics

    @property
    def _transformer(self) -> bool:
        return isinstance(self.model_, TransformerModel)

    def _plain_input(self, x: Any, name: str) -> Tensor:
        """Inputs of a plain network, shaped like the training inputs once those are known."""
        # check_matrix checks shape and finiteness (and makes non-floating inputs float32)
        t = check_matrix(x, name, ndim=(2, 3, 4, 5))
        raw = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
        if not raw.is_floating_point() and raw.dtype != torch.bool:
            t = raw  # integer inputs (token ids for an nn.Embedding) are passed unchanged
        if hasattr(self, "input_shape_") and tuple(t.shape[1:]) != self.input_shape_:
            raise ShapeError(
                f"{name} must be shaped like the training inputs {self.input_shape_} per "
                f"example; got {tuple(t.shape[1:])}."
            )
        return t

    def _bits(self, x: Any, name: str) -> tuple[Tensor, list[tuple[str, int]]]:
        """0/1 codes of every unit (examples, n_units) and the units per block. Writes nothing:
        :meth:`transform` calls it on a fitted estimator."""
        if self._transformer:
            bits, widths = _transformer_bits(self.model_, self.sites_, x, self.progress)
        else:
            t = self._plain_input(x, name)
            bits, widths = _plain_bits(
                self.model_.model, self.sites_, t, int(self.batch_size), self.progress, name
            )
        if hasattr(self, "n_units_") and bits.shape[1] != self.n_units_:
            raise ShapeError(
                f"{name} gives codes of {bits.shape[1]} units; the fitted model gave "
                f"{self.n_units_}. Pass inputs shaped like the training inputs."
            )
        return bits, widths

    def _labels(self, y: Any, n: int, name: str) -> Tensor | None:
        if y is None:
            return None
        t = y.detach() if isinstance(y, Tensor) else torch.as_tensor(np.asarray(y))
        return check_labels(t.reshape(-1) if self._transformer else t, n, name)

    def fit(
        self,
        model: nn.Module | HookedModel,
        x_train: Any,
        y_train: Any = None,
        x_test: Any = None,
        y_test: Any = None,
    ) -> NeuralCodes:
        """Extract the codes of the training (and test) inputs and score them.

        Floating inputs are cast to the network's parameter dtype; integer inputs (token ids
        for an ``nn.Embedding``) are passed unchanged. A refit forgets everything an earlier
        ``fit`` learned, also when it fails.

        Parameters
        ----------
        model : nn.Module or TransformerModel
            A plain network (run in eval mode; its mode is restored) or a transformer.
        x_train : array-like (examples, ...) or prompts
            Inputs; for a transformer a list of prompts or token ids (batch, pos).
        y_train : integer array-like (examples,), optional
            Labels; for a transformer one per token position (batch, pos) or flat. Without
            labels only the code statistics (redundancy, dead neurons) are reported.
        x_test, y_test : optional
            A held-out split, scored the same way (K-Means clusters it on its own).

        Returns
        -------
        self
        """
        reset_fitted(self)
        metrics = self._check_params()
        if not isinstance(model, nn.Module | HookedModel):
            raise InterpError(
                f"NeuralCodes reads a torch.nn.Module or a TransformerModel; got "
                f"{type(model).__name__}."
            )
        try:
            return self._fit(model, x_train, y_train, x_test, y_test, metrics)
        except BaseException:
            reset_fitted(self)  # no half-fitted state: a failed fit leaves it unfitted
            raise

    def _fit(
        self,
        model: nn.Module | HookedModel,
        x_train: Any,
        y_train: Any,
        x_test: Any,
        y_test: Any,
        metrics: tuple[str, ...],
    ) -> NeuralCodes:
        self.model_ = wrap(model)
        if self._transformer:
            self.sites_ = _transformer_sites(self.model_, self.layers)
        else:
            self.sites_ = _plain_layers(self.model_, self.layers, self.activation_types)
            x_train = self._plain_input(x_train, "x_train")
            self.input_shape_ = tuple(x_train.shape[1:])

        bits, widths = self._bits(x_train, "x_train")
        self.labels_ = self._labels(y_train, len(bits), "y_train")
        starts = np.cumsum([0] + [w for _, w in widths])
        self.layer_units_ = {
            name: (int(a), int(b))
            for (name, _), a, b in zip(widths, starts[:-1], starts[1:], strict=True)
        }
        self.n_units_ = int(bits.shape[1])
        splits = {"train": (bits, self.labels_)}
        if x_test is not None:
            test_bits, _ = self._bits(x_test, "x_test")
            splits["test"] = (test_bits, self._labels(y_test, len(test_bits), "y_test"))
        elif y_test is not None:
            raise InterpError("y_test was given without x_test; pass both or neither.")

        if self.drop_constant:
            stacked = torch.cat([b for b, _ in splits.values()])
            keep = (stacked.any(0) & ~stacked.all(0)).nonzero().reshape(-1)
        else:
            keep = torch.arange(self.n_units_)
        self.kept_units_ = keep.numpy().astype(np.int64)
        self.n_bits_ = len(self.kept_units_)

        packed = {s: pack_codes(b[:, keep]) for s, (b, _) in splits.items()}
        self.codes_ = packed["train"]
        if "test" in packed:
            self.test_codes_ = packed["test"]
            self.test_labels_ = splits["test"][1]
        self.layer_dnr_ = pd.DataFrame(
            [
                {"split": s, "layer": name, **dead_neuron_rates(b[:, a:z].numpy())}
                for s, (b, _) in splits.items()
                for name, (a, z) in self.layer_units_.items()
            ]
        )
        rows = {}
        for split, (b, _) in splits.items():
            row = {
                "examples": len(b),
                "distinct_codes": len(np.unique(packed[split], axis=0)),
                "redundancy": redundancy_ratio(packed[split]),
                "singleton_fraction": singleton_fraction(packed[split]),
            }
            dnr = dead_neuron_rates(b.numpy())
            row["dynamic_dnr"], row["static_dnr"] = dnr["dynamic"], dnr["static"]
            rows[split] = row
        self._categorize(rows, packed, splits, metrics)
        self.scores_ = pd.DataFrame.from_dict(rows, orient="index")
        self.scores_.index.name = "split"
        return self

    def _categorize(self, rows: dict, packed: dict, splits: dict, metrics: tuple[str, ...]) -> None:
        y_train = self.labels_
        for split in rows:
            for m in ("knn_accuracy", "logistic_accuracy", "kmeans_purity", "kmeans_hungarian"):
                rows[split][m] = np.nan
        if y_train is None or not metrics:
            return
        y_tr = y_train.numpy()
        features = {s: unpack_codes(packed[s], self.n_bits_).astype(np.float64) for s in packed}
        classes = np.unique(y_tr)
        if "knn" in metrics:
            k = min(int(self.k), len(y_tr))
            for split, (_, labels) in splits.items():
                if labels is not None:
                    pred = hamming_knn(self.codes_, y_tr, packed[split], k, progress=self.progress)
                    rows[split]["knn_accuracy"] = float((pred == labels.numpy()).mean())
        if "logistic" in metrics and len(classes) > 1 and self.n_bits_ > 0:
            from sklearn.linear_model import LogisticRegression
            from sklearn.multiclass import OneVsOneClassifier

            clf = OneVsOneClassifier(
                LogisticRegression(random_state=self.random_state, max_iter=self.max_iter)
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=UserWarning)
                clf.fit(features["train"], y_tr)
            for split, (_, labels) in splits.items():
                if labels is not None:
                    rows[split]["logistic_accuracy"] = float(
                        clf.score(features[split], labels.numpy())
                    )
        if "kmeans" in metrics:
            from sklearn.cluster import KMeans

            n_clusters = self.n_clusters or len(classes)
            for split, (_, labels) in splits.items():
                if labels is None or len(labels) < n_clusters or self.n_bits_ == 0:
                    continue
                with warnings.catch_warnings():
                    # fewer distinct codes than clusters: sklearn warns and still clusters
                    warnings.simplefilter("ignore")
                    clusters = KMeans(
                        n_clusters=n_clusters, random_state=self.random_state, n_init=self.n_init
                    ).fit_predict(features[split])
                rows[split]["kmeans_purity"] = cluster_purity(labels.numpy(), clusters)
                rows[split]["kmeans_hungarian"] = hungarian_accuracy(labels.numpy(), clusters)

    # -- using the fitted codes ---------------------------------------------------------------------

    def transform(self, x: Any) -> np.ndarray:
        """Packed codes of new inputs over the kept units: uint8 (examples, bytes)."""
        check_fitted(self, "codes_")
        bits, _ = self._bits(x, "x")
        return pack_codes(bits[:, torch.as_tensor(self.kept_units_)])

    def predict(self, x: Any) -> np.ndarray:
        """Labels of new inputs by Hamming K-NN of their codes among the training codes."""
        check_fitted(self, "codes_")
        if self.labels_ is None:
            raise InterpError("predict needs labels: fit with y_train.")
        k = min(int(self.k), len(self.labels_))
        return hamming_knn(self.codes_, self.labels_, self.transform(x), k, progress=self.progress)

    def report(self) -> pd.DataFrame:
        """The code statistics, one row per split (``train``, ``test``).

        Columns: ``examples``, ``distinct_codes`` (linear regions hit), ``redundancy``
        (``(N - distinct) / N``), ``singleton_fraction`` (examples alone in their region),
        ``dynamic_dnr`` and ``static_dnr`` (over all units, before dropping constant ones),
        ``knn_accuracy``, ``logistic_accuracy`` (classifiers fit on the training codes),
        ``kmeans_purity`` and ``kmeans_hungarian`` (K-Means fit on each split's codes alone, its
        clusters mapped to labels by majority or one to one). Missing scores are NaN.

        The ``train`` row's classifier scores are resubstitution scores, optimistic by
        construction: ``knn_accuracy`` there looks each training code up among the training
        codes *itself included* (at distance 0, so every point votes for its own label: with
        ``k=1`` and distinct codes it is 1.0), and ``logistic_accuracy`` is the fit's training
        accuracy. The paper reports K-NN and logistic regression on the test codes only (fit on
        train, scored on test); read the ``test`` row for those. K-Means is unsupervised and
        fit on each split alone, so both of its rows are as the paper computes them.
        """
        check_fitted(self, "scores_")
        return self.scores_.copy()


# -- the phase chart ---------------------------------------------------------------------------


def _grid(values: Any, name: str) -> list:
    out = [values] if isinstance(values, int) or values is None else list(values)
    if not out:
        raise InterpError(f"{name} must list at least one value.")
    return out


def _regime(r: float) -> str:
    if r > 0.1:
        return "under-expressive"
    return "critically-expressive" if r > 0.01 else "sufficiently-expressive"


def codes_phase_chart(
    data: Any,
    *,
    widths: Sequence[int] = (4, 8, 16, 32, 64),
    sample_sizes: Sequence[int | None] | int | None = None,
    epochs: Sequence[int] | int = 50,
    seeds: Sequence[int] | int = 0,
    depth: int = 1,
    lr: float = 1e-2,
    batch_size: int | None = 64,
    tile: bool = True,
    metrics: Sequence[str] = ("knn",),
    progress: bool | None = None,
) -> pd.DataFrame:
    """Sweep width, training-set size and training time; score the codes of each network.

    Every network is an MLP of ``depth`` hidden ReLU layers of ``width // depth`` units (the paper
    splits the total width evenly), trained with Adam on cross-entropy (:func:`train`).

    Parameters
    ----------
    data : Dataset
        From the experiment kit (e.g. ``digits(image=False)``).
    widths : sequence of int
        Total hidden widths.
    sample_sizes : sequence of int or None
        Training-set sizes (random subsets); ``None`` is the whole training set.
    epochs : sequence of int
        Checkpoints of one training run per (width, size, seed); 0 is the initialisation.
    tile : bool
        Repeat a subset to the full training-set size for training, as the paper does, so that
        every size gets the same number of steps. Codes are taken on the subset itself.
    metrics : sequence of str
        Categorization scores for :class:`NeuralCodes` (K-NN only by default, for speed).

    Returns
    -------
    pandas.DataFrame
        One row per (width, n_train, epoch, seed): ``redundancy_train``, ``redundancy_test``,
        ``singleton_test``, ``distinct_train``, ``dynamic_dnr``, ``static_dnr``, the chosen
        accuracies on test codes (``knn_test``, ``logistic_test``, ``kmeans_test`` purity),
        ``network_test`` (the network's own accuracy) and ``regime`` (a label read off
        ``redundancy_test``: above 0.1 under-, above 0.01 critically-, else
        sufficiently-expressive; the thresholds are ours, the paper gives none).

    Examples
    --------
    >>> chart = codes_phase_chart(xor_clusters(200), widths=[2, 16], epochs=[0, 20])
    >>> chart[["width", "epoch"]].values.tolist()
    [[2, 0], [2, 20], [16, 0], [16, 20]]
    """
    from ._experiments import Dataset, mlp, train

    if not isinstance(data, Dataset):
        raise InterpError(
            f"data must be a Dataset from the experiment kit (digits(image=False), "
            f"xor_clusters(...)); got {type(data).__name__}."
        )
    metrics = check_options("metrics", metrics, METRICS)  # before any network is trained
    widths, sizes = _grid(widths, "widths"), _grid(sample_sizes, "sample_sizes")
    checkpoints, seed_list = sorted(set(_grid(epochs, "epochs"))), _grid(seeds, "seeds")
    if any(not isinstance(w, int) or w < depth for w in widths):
        raise InterpError(f"widths must be integers >= depth ({depth}); got {widths}.")
    if checkpoints[0] < 0:
        raise InterpError(f"epochs must be >= 0; got {checkpoints}.")
    n_full = len(data.x_train)
    runs = [(w, n, s) for w in widths for n in sizes for s in seed_list]
    rows = []
    for width, n, seed in progress_bar(runs, desc="phase chart", progress=progress):
        subset = data if n is None or n == n_full else data.subset(int(n), seed=seed)
        fit_on = subset
        if tile and len(subset.x_train) < n_full:
            reps = n_full // len(subset.x_train)
            fit_on = Dataset(
                subset.name,
                subset.x_train.repeat(reps, *[1] * (subset.x_train.ndim - 1)),
                subset.y_train.repeat(reps),
                subset.x_test,
                subset.y_test,
                subset.n_classes,
            )
        net = mlp(data.n_features, [width // depth] * depth, data.n_classes, seed=seed)

        def checkpoint(epoch: int, model: nn.Module, width=width, subset=subset, seed=seed) -> None:
            if epoch not in checkpoints:
                return
            codes = NeuralCodes(metrics=metrics, random_state=9).fit(
                model, subset.x_train, subset.y_train, subset.x_test, subset.y_test
            )
            rep = codes.report()
            from ._experiments import accuracy

            row = {
                "width": width,
                "n_train": len(subset.x_train),
                "epoch": epoch,
                "seed": seed,
                "redundancy_train": rep.loc["train", "redundancy"],
                "redundancy_test": rep.loc["test", "redundancy"],
                "singleton_test": rep.loc["test", "singleton_fraction"],
                "distinct_train": int(rep.loc["train", "distinct_codes"]),
                "dynamic_dnr": rep.loc["train", "dynamic_dnr"],
                "static_dnr": rep.loc["train", "static_dnr"],
            }
            for m, col in (
                ("knn", "knn_accuracy"),
                ("logistic", "logistic_accuracy"),
                ("kmeans", "kmeans_purity"),
            ):
                if m in metrics:
                    row[f"{m}_test"] = rep.loc["test", col]
            row["network_test"] = accuracy(model, subset.x_test, subset.y_test)
            row["regime"] = _regime(row["redundancy_test"])
            rows.append(row)

        train(
            net,
            fit_on,
            epochs=max(checkpoints),
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            callback=checkpoint,
            progress=False,
            log_every=max(max(checkpoints), 1),
        )
    return pd.DataFrame(rows)


def plot_phase_chart(
    chart: pd.DataFrame,
    value: str = "redundancy_test",
    *,
    x: str = "width",
    y: str = "n_train",
    ax: Any = None,
    cmap: str = "viridis",
    annotate: bool = True,
) -> Any:
    """A heatmap of one column of :func:`codes_phase_chart` over two swept axes (seed mean).

    Rows not on the two axes are averaged: pass a chart filtered to one epoch (or width...)
    to see a slice. Returns the matplotlib Axes.

    Examples
    --------
    >>> chart = pd.DataFrame({"width": [2, 2, 8, 8], "n_train": [10, 20, 10, 20],
    ...                       "redundancy_test": [0.9, 0.8, 0.1, 0.0]})
    >>> plot_phase_chart(chart).get_xlabel()
    'width'
    """
    import matplotlib.pyplot as plt

    missing = [c for c in (value, x, y) if c not in chart.columns]
    if missing:
        raise InterpError(f"The chart has no column {missing}; it has {list(chart.columns)}.")
    grid = chart.pivot_table(index=y, columns=x, values=value, aggfunc="mean").sort_index(
        ascending=False
    )
    if ax is None:
        _, ax = plt.subplots(figsize=(1.0 + 0.7 * grid.shape[1], 1.0 + 0.5 * grid.shape[0]))
    image = ax.imshow(grid.values.astype(float), cmap=cmap, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(value)
    if annotate:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid.values[i, j]
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.figure.colorbar(image, ax=ax)
    return ax
