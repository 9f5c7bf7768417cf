"""Neural codes: networks read as hash encoders (He, Lei, Ji & Tao, arXiv:2101.05490).

The *neural code* of an input is its activation pattern: one bit per ReLU-like unit, set when the
unit's pre-activation is positive. In a piecewise-linear network the code names the linear region
the input falls in. The paper's findings, which this module measures:

- **determinism**: past some width almost every example has a code of its own (the redundancy
  ratio ``(N - distinct codes) / N`` falls to zero);
- **categorization**: codes of one class are close in Hamming distance, so K-NN (k = 9), logistic
  regression and K-Means on the codes classify nearly as well as the network itself.

Codes are stored packed, eight bits a byte (:func:`pack_codes`); Hamming distances are popcounts
of XORed 64-bit words (:func:`hamming_distances`), so a K-NN over 50,000 codes of 1,024 bits takes
seconds. Dead neuron rates (Liu et al., arXiv:2212.06145) come from the same bits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
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
    explain_model_errors,
    model_input,
    reset_fitted,
)

__all__ = [
    "PIECEWISE_LINEAR",
    "RELU_LIKE",
    "NeuralCodes",
    "pack_codes",
    "unpack_codes",
    "hamming_distances",
    "hamming_neighbors",
    "hamming_knn",
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


# -- packing ----------------------------------------------------------------------------------


def _check_packed(codes: Any, name: str) -> np.ndarray:
    arr = codes.numpy() if isinstance(codes, Tensor) else np.asarray(codes)
    if arr.dtype != np.uint8 or arr.ndim != 2:
        raise ShapeError(
            f"{name} must be packed codes: a 2-D uint8 array (examples, bytes) from pack_codes; "
            f"got dtype {arr.dtype} and shape {arr.shape}. Pack 0/1 codes with pack_codes(bits)."
        )
    return arr


def pack_codes(bits: Any) -> np.ndarray:
    """Pack 0/1 codes eight bits a byte.

    Parameters
    ----------
    bits : array-like of shape (examples, units)
        Booleans or 0/1 numbers.

    Returns
    -------
    numpy.ndarray of uint8, shape (examples, ceil(units / 8))
        Big-endian within each byte (``numpy.packbits``); the unused bits of the last byte are 0,
        so they never count in a Hamming distance.

    Examples
    --------
    >>> pack_codes([[1, 0, 0, 0, 0, 0, 0, 1, 1]])
    array([[129, 128]], dtype=uint8)
    """
    arr = bits.detach().cpu().numpy() if isinstance(bits, Tensor) else np.asarray(bits)
    if arr.ndim != 2:
        raise ShapeError(
            f"bits must be a 2-D array (examples, units); got shape {arr.shape}. "
            "Reshape it, e.g. bits.reshape(len(bits), -1)."
        )
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise ShapeError("bits must hold only 0 and 1 (or booleans); threshold them first.")
        arr = arr.astype(np.bool_)
    return np.packbits(arr, axis=1)


def unpack_codes(codes: Any, n_bits: int) -> np.ndarray:
    """The 0/1 codes (uint8, shape (examples, n_bits)) back from :func:`pack_codes`.

    Examples
    --------
    >>> unpack_codes(pack_codes([[1, 0, 1]]), 3)
    array([[1, 0, 1]], dtype=uint8)
    """
    packed = _check_packed(codes, "codes")
    if not 0 <= n_bits <= 8 * packed.shape[1]:
        raise ShapeError(f"n_bits must be in 0..{8 * packed.shape[1]}; got {n_bits}.")
    return np.unpackbits(packed, axis=1, count=n_bits)


def _words(packed: np.ndarray, n_bytes: int) -> np.ndarray:
    """Packed codes as (words, examples) uint64, zero-padded to whole words (zeros XOR to 0)."""
    pad = (-n_bytes) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(np.ascontiguousarray(packed).view(np.uint64).T)


def _distance_block(q: np.ndarray, ref: np.ndarray, out: np.ndarray) -> None:
    """``out[i, j] = popcount(q[:, i] ^ ref[:, j])`` summed over words.

    Three words are summed in uint8 (at most 192) before widening to ``out``'s dtype: the adds
    into the wide accumulator are the slowest step, so they are done a third as often.
    """
    n_words = q.shape[0]
    shape = (q.shape[1], ref.shape[1])
    xor = np.empty(shape, np.uint64)
    count = np.empty(shape, np.uint8)
    part = np.empty(shape, np.uint8)
    out[...] = 0
    for start in range(0, n_words, 3):
        for j, w in enumerate(range(start, min(start + 3, n_words))):
            np.bitwise_xor(q[w][:, None], ref[w][None, :], out=xor)
            if j == 0:
                np.bitwise_count(xor, out=count)
            else:
                np.bitwise_count(xor, out=part)
                count += part
        out += count


def _chunk_rows(n_ref: int) -> int:
    # about half a million pairs per block: the uint64 scratch array (4 MB) stays in cache
    return max(1, min(1024, (1 << 19) // max(n_ref, 1)))


def hamming_distances(a: Any, b: Any | None = None, *, n_bits: int | None = None) -> np.ndarray:
    """Hamming distances between packed codes (popcount of XORed 64-bit words, chunked).

    Parameters
    ----------
    a : uint8 array of shape (n, bytes)
        Packed codes (:func:`pack_codes`).
    b : uint8 array of shape (m, bytes), optional
        Default: ``a`` itself.
    n_bits : int, optional
        The code length. Given, the distances are the *fraction* of differing bits (float64, what
        scikit-learn's ``metric="hamming"`` computes); otherwise the count of differing bits.

    Returns
    -------
    numpy.ndarray of shape (n, m)
        int64 counts, or float64 fractions when ``n_bits`` is given.

    Examples
    --------
    >>> codes = pack_codes([[1, 1, 0, 0], [1, 0, 1, 0]])
    >>> hamming_distances(codes)
    array([[0, 2],
           [2, 0]])
    >>> hamming_distances(codes, n_bits=4)[0, 1]
    np.float64(0.5)
    """
    a = _check_packed(a, "a")
    b = a if b is None else _check_packed(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ShapeError(
            f"a and b must be codes of the same length; got {a.shape[1]} and {b.shape[1]} bytes."
        )
    if n_bits is not None and not 0 < n_bits <= 8 * a.shape[1]:
        raise ShapeError(
            f"n_bits must be in 1..{8 * a.shape[1]} for codes of {a.shape[1]} bytes; got {n_bits}."
        )
    qa, rb = _words(a, a.shape[1]), _words(b, b.shape[1])
    out = np.empty((len(a), len(b)), np.int64)
    step = _chunk_rows(len(b))
    block = np.empty((step, len(b)), np.int64)
    for start in range(0, len(a), step):
        stop = min(start + step, len(a))
        _distance_block(qa[:, start:stop], rb, block[: stop - start])
        out[start:stop] = block[: stop - start]
    return out if n_bits is None else out / n_bits


def hamming_neighbors(
    reference: Any, queries: Any, k: int, *, progress: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference codes of every query code, in Hamming distance.

    Ties are broken by the reference index: the neighbours are the ``k`` smallest pairs
    ``(distance, reference index)``, so among equally distant codes the earlier ones come first.
    The result is exact and deterministic (no approximate search).

    Parameters
    ----------
    reference : uint8 array of shape (n, bytes)
        Packed codes to search.
    queries : uint8 array of shape (m, bytes)
        Packed codes to look up.
    k : int
        1 <= k <= n.

    Returns
    -------
    distances : int64 array of shape (m, k)
        Bit counts, ascending.
    indices : int64 array of shape (m, k)
        Row numbers into ``reference``.

    Examples
    --------
    >>> ref = pack_codes([[0, 0, 0], [1, 1, 1], [1, 0, 0]])
    >>> hamming_neighbors(ref, pack_codes([[1, 1, 0]]), k=2)
    (array([[1, 1]]), array([[1, 2]]))
    """
    ref = _check_packed(reference, "reference")
    qs = _check_packed(queries, "queries")
    if ref.shape[1] != qs.shape[1]:
        raise ShapeError(
            f"queries must be codes of the reference's length ({ref.shape[1]} bytes); "
            f"got {qs.shape[1]} bytes."
        )
    n = len(ref)
    if not isinstance(k, int | np.integer) or not 1 <= k <= n:
        raise InterpError(
            f"k must be an integer in 1..{n} (the number of reference codes); got {k}."
        )
    rw, qw = _words(ref, ref.shape[1]), _words(qs, qs.shape[1])
    wide = np.uint16 if 64 * rw.shape[0] < 2**16 else np.uint32
    step = _chunk_rows(n)
    block = np.empty((step, n), wide)
    # one integer key per pair, distance * n + index, orders by distance then index, so topk
    # breaks ties exactly; int32 keys when they fit (half the memory traffic of int64)
    key_dtype = np.int32 if (64 * rw.shape[0] + 1) * n < 2**31 else np.int64
    index = torch.arange(n, dtype=torch.from_numpy(np.zeros(0, key_dtype)).dtype)
    dist = np.empty((len(qs), k), np.int64)
    idx = np.empty((len(qs), k), np.int64)
    starts = range(0, len(qs), step)
    for start in progress_bar(starts, desc="hamming k-nn", progress=progress):
        stop = min(start + step, len(qs))
        part = block[: stop - start]
        _distance_block(qw[:, start:stop], rw, part)
        key = torch.from_numpy(part.astype(key_dtype)).mul_(n).add_(index)
        top = torch.topk(key, k, dim=1, largest=False, sorted=True).values
        dist[start:stop] = (top // n).numpy()
        idx[start:stop] = (top % n).numpy()
    return dist, idx


def _vote(neighbor_labels: np.ndarray) -> np.ndarray:
    """Majority label of each row; a tie goes to the smallest label."""
    classes, inverse = np.unique(neighbor_labels, return_inverse=True)
    inverse = inverse.reshape(neighbor_labels.shape)
    counts = np.zeros((len(neighbor_labels), len(classes)), np.int64)
    np.add.at(counts, (np.arange(len(neighbor_labels))[:, None], inverse), 1)
    return classes[counts.argmax(1)]


def hamming_knn(
    train_codes: Any,
    train_labels: Any,
    test_codes: Any,
    k: int = 9,
    *,
    progress: bool | None = None,
) -> np.ndarray:
    """K-nearest-neighbour labels of packed codes in Hamming distance (uniform weights).

    The neighbours are those of :func:`hamming_neighbors` (distance ties broken by training
    index); the predicted label is the most common among them, a tie going to the smallest label.
    scikit-learn's ``KNeighborsClassifier(metric="hamming")`` computes the same distances but may
    break distance ties differently.

    Parameters
    ----------
    train_codes : uint8 array of shape (n, bytes)
    train_labels : integer array of shape (n,)
    test_codes : uint8 array of shape (m, bytes)
    k : int
        Number of neighbours (the paper uses 9).

    Returns
    -------
    numpy.ndarray of shape (m,)
        Predicted labels.

    Examples
    --------
    >>> train = pack_codes([[0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 0]])
    >>> hamming_knn(train, [0, 0, 1, 1], pack_codes([[0, 0, 1, 0], [1, 1, 0, 1]]), k=3)
    array([0, 1])
    """
    labels = check_labels(
        train_labels, len(_check_packed(train_codes, "train_codes")), "train_labels"
    )
    _, idx = hamming_neighbors(train_codes, test_codes, k, progress=progress)
    return _vote(labels.numpy()[idx])


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
    y = np.asarray(labels).reshape(-1)
    c = np.asarray(clusters).reshape(-1)
    if y.shape != c.shape or len(y) == 0:
        raise ShapeError(
            f"labels and clusters must be 1-D of the same non-zero length; got {np.shape(labels)} "
            f"and {np.shape(clusters)}."
        )
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), np.int64)
    np.add.at(table, (ci, yi), 1)
    return table


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


class NeuralCodes:
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
        Categorization scores to compute (all by default; they need labels).
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

    def _check_params(self) -> None:
        unknown = set(self.metrics) - set(METRICS)
        if unknown:
            raise InterpError(f"Unknown metrics {sorted(unknown)}; choose from {list(METRICS)}.")
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

    def _bits(self, x: Any, name: str) -> Tensor:
        if self._transformer:
            bits, widths = _transformer_bits(self.model_, self._sites, x, self.progress)
        else:
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
            bits, widths = _plain_bits(
                self.model_.model, self._sites, t, int(self.batch_size), self.progress, name
            )
            self.input_shape_ = tuple(t.shape[1:])
        if hasattr(self, "layer_units_") and bits.shape[1] != self.n_units_:
            raise ShapeError(
                f"{name} gives codes of {bits.shape[1]} units; the fitted model gave "
                f"{self.n_units_}. Pass inputs shaped like the training inputs."
            )
        self._widths = widths
        return bits

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
        self._check_params()
        if not isinstance(model, nn.Module | HookedModel):
            raise InterpError(
                f"NeuralCodes reads a torch.nn.Module or a TransformerModel; got "
                f"{type(model).__name__}."
            )
        try:
            return self._fit(model, x_train, y_train, x_test, y_test)
        except BaseException:
            reset_fitted(self)  # no half-fitted state: a failed fit leaves it unfitted
            raise

    def _fit(
        self, model: nn.Module | HookedModel, x_train: Any, y_train: Any, x_test: Any, y_test: Any
    ) -> NeuralCodes:
        self.model_ = wrap(model)
        self._transformer = isinstance(self.model_, TransformerModel)
        if self._transformer:
            self._sites = _transformer_sites(self.model_, self.layers)
        else:
            self._sites = _plain_layers(self.model_, self.layers, self.activation_types)

        bits = self._bits(x_train, "x_train")
        self.labels_ = self._labels(y_train, len(bits), "y_train")
        starts = np.cumsum([0] + [w for _, w in self._widths])
        self.layer_units_ = {
            name: (int(a), int(b))
            for (name, _), a, b in zip(self._widths, starts[:-1], starts[1:], strict=True)
        }
        self.n_units_ = int(bits.shape[1])
        splits = {"train": (bits, self.labels_)}
        if x_test is not None:
            test_bits = self._bits(x_test, "x_test")
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
        self._categorize(rows, packed, splits)
        self.scores_ = pd.DataFrame.from_dict(rows, orient="index")
        self.scores_.index.name = "split"
        return self

    def _categorize(self, rows: dict, packed: dict, splits: dict) -> None:
        y_train = self.labels_
        for split in rows:
            for m in ("knn_accuracy", "logistic_accuracy", "kmeans_purity", "kmeans_hungarian"):
                rows[split][m] = np.nan
        if y_train is None or not self.metrics:
            return
        y_tr = y_train.numpy()
        features = {s: unpack_codes(packed[s], self.n_bits_).astype(np.float64) for s in packed}
        classes = np.unique(y_tr)
        if "knn" in self.metrics:
            k = min(int(self.k), len(y_tr))
            for split, (_, labels) in splits.items():
                if labels is not None:
                    pred = hamming_knn(self.codes_, y_tr, packed[split], k, progress=self.progress)
                    rows[split]["knn_accuracy"] = float((pred == labels.numpy()).mean())
        if "logistic" in self.metrics and len(classes) > 1 and self.n_bits_ > 0:
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
        if "kmeans" in self.metrics:
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
        bits = self._bits(x, "x")
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

    _PARAMS = (
        "layers",
        "activation_types",
        "drop_constant",
        "k",
        "metrics",
        "n_clusters",
        "random_state",
        "n_init",
        "max_iter",
        "batch_size",
        "progress",
    )

    def __repr__(self) -> str:
        default = NeuralCodes()
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name in self._PARAMS
            if getattr(self, name) != getattr(default, name)
        ]
        return f"NeuralCodes({', '.join(changed)})"


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
