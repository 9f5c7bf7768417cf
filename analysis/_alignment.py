"""Neuron alignment between two networks: convergent learning (Li et al., ICLR 2016).

Do two networks trained from different seeds learn the same units? Per layer, every unit of
network A is compared with every unit of network B over the same inputs (a conv channel's
samples are all examples x positions):

- :func:`correlation_matrix` (Pearson) and :func:`mutual_information_matrix` (binned, with the
  Miller-Madow bias correction) give the between-network similarity ``C_AB``;
- :func:`semi_matching` (each unit's best partner, many-to-one) and :func:`bipartite_matching`
  (one-to-one, Hungarian) align units; the mean matched correlation per layer, next to a
  baseline (B with its examples shuffled, or a third network), is the paper's Table 1;
- :func:`sparse_prediction` maps A's units to B's with L1-regularised linear maps (few-to-one);
- :func:`spectral_groups` clusters the joint correlation matrix into many-to-many groups;
- :func:`linear_cka` and :func:`procrustes_distance` sum a layer pair up in one number.

:class:`NeuronAlignment` runs all of it per layer and returns a bipartite :class:`CircuitGraph`.
Everything is computed in float64 whatever the input precision.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from interp import InterpError, ShapeError, check_option, progress_bar

from ._base import (
    check_fitted,
    check_matrix,
    explain_model_errors,
    model_input,
    reset_fitted,
)

__all__ = [
    "NeuronAlignment",
    "SparsePrediction",
    "bipartite_matching",
    "correlation_matrix",
    "linear_cka",
    "mutual_information_matrix",
    "procrustes_distance",
    "semi_matching",
    "sparse_prediction",
    "spectral_groups",
]

METHODS = ("correlation", "mutual_information")


# -- inputs -------------------------------------------------------------------------------------


def _activations(x: Any, name: str, min_rows: int = 2, unit_axis: int | None = 1) -> Tensor:
    """A validated float64 activation tensor shaped (examples, units, *positions), its units
    taken from ``unit_axis`` (see :func:`_units_second`)."""
    t = _units_second(check_matrix(x, name, ndim=(2, 3, 4, 5), min_rows=min_rows), unit_axis, name)
    if t.shape[1] < 1:
        raise ShapeError(
            f"{name} has no units (shape {tuple(t.shape)}); expected (examples, units, ...)."
        )
    return t.to(torch.float64)


def _samples(t: Tensor) -> Tensor:
    """(examples, units, *positions) -> (examples * positions, units): each position a sample."""
    return rearrange(t, "n c ... -> (n ...) c")


def _units_second(t: Tensor, unit_axis: int | None, name: str) -> Tensor:
    """Activations with their unit axis moved to axis 1: (examples, units, *positions).

    ``unit_axis=None`` reads 2-D, 4-D and 5-D activations as (examples, units, ...) (dense and
    NCHW / NCDHW conv layers) and refuses 3-D ones, which are as often (examples, channels,
    length) as (examples, tokens, features)."""
    if unit_axis is None:
        if t.ndim == 3:
            raise ShapeError(
                f"{name} is 3-D {tuple(t.shape)}, so which axis holds the units is ambiguous. "
                "Say it: NeuronAlignment(unit_axis=-1) for per-token activations (examples, "
                "tokens, features), every token a sample; unit_axis=1 for (examples, channels, "
                "length), e.g. a Conv1d."
            )
        return t
    axis = unit_axis + t.ndim if unit_axis < 0 else unit_axis
    if not 1 <= axis < t.ndim:
        raise ShapeError(
            f"unit_axis={unit_axis} does not name a unit axis of {name}, shaped "
            f"{tuple(t.shape)}: axis 0 holds the examples; use 1..{t.ndim - 1} or -1."
        )
    return t.movedim(axis, 1)


def _same_grid(ta: Tensor, tb: Tensor, names: tuple[str, str]) -> None:
    if ta.shape[0] != tb.shape[0] or ta.shape[2:] != tb.shape[2:]:
        raise ShapeError(
            f"{names[0]} and {names[1]} must hold the same examples at the same positions: shapes "
            f"(examples, units, *positions) {tuple(ta.shape)} and {tuple(tb.shape)} differ outside "
            "the unit axis. Run both networks on the same inputs; for layers with different "
            "spatial grids pool them first, e.g. x.mean((2, 3))."
        )


def _pair(a: Any, b: Any, names: tuple[str, str] = ("a", "b")) -> tuple[Tensor, Tensor]:
    """Two activation tensors over the same examples and the same positions, as samples."""
    ta, tb = _activations(a, names[0]), _activations(b, names[1])
    _same_grid(ta, tb, names)
    return _samples(ta), _samples(tb)


def _similarity(s: Any, name: str = "similarity") -> np.ndarray:
    t = check_matrix(s, name, ndim=2)
    if t.shape[1] < 1:
        raise ShapeError(f"{name} must have at least one column; got shape {tuple(t.shape)}.")
    return t.to(torch.float64).numpy()


# -- similarities -------------------------------------------------------------------------------


def _standardise(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Columns z-scored (population std); returns (z, mean, scale). A constant column gets an
    infinite scale, so it becomes zero instead of NaN."""
    mean = x.mean(0)
    std = x.std(0, correction=0)
    # a unit that never changes (a dead ReLU) correlates with nothing: give it zero, not NaN
    scale = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.inf)
    return (x - mean) / scale, mean, scale


def _correlation(xa: Tensor, xb: Tensor) -> Tensor:
    za, _, _ = _standardise(xa)
    zb, _, _ = _standardise(xb)
    return (za.T @ zb / len(za)).clamp(-1.0, 1.0)


def correlation_matrix(a: Any, b: Any | None = None) -> Tensor:
    """Pearson correlation of every unit of ``a`` with every unit of ``b``.

    Parameters
    ----------
    a, b : array-like, shape (examples, units_a, *positions) and (examples, units_b, *positions)
        Activations of two layers on the same inputs. For conv layers (``[N, C, H, W]``) a unit is
        a channel and every (example, position) pair is one sample, as in Li et al. (2016); the
        positions of ``a`` and ``b`` must match. ``b=None`` gives the within-layer matrix.

    Returns
    -------
    Tensor, shape (units_a, units_b), float64
        ``corr(i, j) = cov(a_i, b_j) / (std(a_i) std(b_j))``. A constant unit (a dead ReLU)
        has correlation 0 with everything.

    Examples
    --------
    >>> a = torch.randn(200, 3)
    >>> c = correlation_matrix(a, torch.cat([2 * a[:, [1]] + 1, -a[:, [0]]], dim=1))
    >>> c.shape, round(float(c[1, 0]), 6), round(float(c[0, 1]), 6)
    (torch.Size([3, 2]), 1.0, -1.0)
    """
    xa, xb = _pair(a, a if b is None else b)
    return _correlation(xa, xb)


def _bin_units(x: Tensor, bins: int) -> Tensor:
    """Each column as bin indices, shaped (samples, units).

    A point mass at the column's minimum (its minimum shared by at least two samples: a ReLU's
    zeros, however few) always gets bin 0 to itself and the other values ``bins - 1``
    equal-population quantile bins, as in the authors' ``percentile_bins``; a column whose
    minimum is a single sample (a continuous unit) gets ``bins`` equal-population bins."""
    codes = torch.empty(x.shape, dtype=torch.long)
    for j, v in enumerate(x.T.contiguous()):
        low = v.min()
        at_low = v == low
        floor = bool(at_low.sum() >= 2) and not bool(at_low.all())
        rest = v[~at_low] if floor else v
        k = bins - 1 if floor else bins
        inner = torch.linspace(0, 1, k + 1, dtype=torch.float64)[1:-1]
        # numpy: torch.quantile refuses inputs over 16M samples
        edges = torch.unique(torch.from_numpy(np.quantile(rest.numpy(), inner.numpy())))
        # right=True: a value equal to an edge goes to the upper bin, so ties stay together
        c = torch.bucketize(v, edges, right=True)
        if floor:
            c = torch.where(at_low, 0, c + 1)
        codes[:, j] = c
    return codes


def mutual_information_matrix(
    a: Any, b: Any | None = None, *, bins: int = 10, bias_correction: bool = True
) -> Tensor:
    """Mutual information (nats) between every unit of ``a`` and every unit of ``b``.

    Each unit is discretised into ``bins`` equal-population bins. A point mass at the unit's
    minimum (its minimum value shared by two samples or more, e.g. a ReLU's zeros, whatever
    their share) always gets a bin of its own and the remaining values ``bins - 1``
    equal-population bins, as in the authors' ``percentile_bins``. The
    plug-in estimate ``sum p_ij log(p_ij / (p_i p_j))`` is biased upwards by about
    ``(B_a - 1)(B_b - 1) / (2 N)``; ``bias_correction`` subtracts the Miller-Madow term
    ``(B_ab - B_a - B_b + 1) / (2 N)`` with ``B`` the occupied bins (the authors' code mixes
    nats and bits in this term; this uses nats throughout).

    Parameters
    ----------
    a, b : array-like, shape (examples, units, *positions)
        As for :func:`correlation_matrix`.
    bins : int
        Bins per unit, at least 2.
    bias_correction : bool
        Subtract the Miller-Madow bias (the result can then be slightly negative).

    Returns
    -------
    Tensor, shape (units_a, units_b), float64

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(4000, 2, generator=g)
    >>> mi = mutual_information_matrix(x, torch.stack([x[:, 0], torch.randn(4000, generator=g)], 1))
    >>> bool(abs(mi[0, 0] - np.log(10)) < 0.01), bool(abs(mi[0, 1]) < 0.005)
    (True, True)
    """
    if not isinstance(bins, int) or bins < 2:
        raise InterpError(f"bins must be an integer >= 2; got {bins!r}.")
    xa, xb = _pair(a, a if b is None else b)
    n = len(xa)
    ca, cb = _bin_units(xa, bins), _bin_units(xb, bins)
    # joint counts of all unit pairs at once: one-hot codes, summed outer products over samples
    ua, ub = xa.shape[1], xb.shape[1]
    joint = torch.zeros(ua * bins, ub * bins, dtype=torch.float64)
    offset_a = torch.arange(ua) * bins
    offset_b = torch.arange(ub) * bins
    chunk = max(256, 2**22 // (max(ua, ub) * bins))  # one-hot blocks of at most ~32 MiB
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        rows = torch.arange(len(ca[sl]))[:, None]
        oa = torch.zeros(len(ca[sl]), ua * bins, dtype=torch.float64)
        oa[rows, ca[sl] + offset_a] = 1.0
        ob = torch.zeros(len(cb[sl]), ub * bins, dtype=torch.float64)
        ob[rows, cb[sl] + offset_b] = 1.0
        joint += oa.T @ ob
    p = rearrange(joint, "(i x) (j y) -> i j x y", x=bins, y=bins) / n
    pa = p.sum(3, keepdim=True)
    pb = p.sum(2, keepdim=True)
    ratio = torch.where(p > 0, p / (pa * pb), torch.ones_like(p))
    mi = (p * ratio.log()).sum((2, 3))
    if bias_correction:  # Miller-Madow on H(a) + H(b) - H(a, b), with occupied bins
        occupied = (p > 0).sum((2, 3))
        occupied_a = (pa > 0).sum((2, 3))
        occupied_b = (pb > 0).sum((2, 3))
        mi = mi - (occupied - occupied_a - occupied_b + 1).to(torch.float64) / (2 * n)
    return mi


# -- matchings ----------------------------------------------------------------------------------


def semi_matching(similarity: Any) -> Tensor:
    """Each row unit's best partner: ``argmax_j similarity[i, j]`` (several rows may share one).

    Examples
    --------
    >>> semi_matching(torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]]))
    tensor([1, 1, 0])
    """
    return torch.from_numpy(_similarity(similarity).argmax(1))


def bipartite_matching(similarity: Any) -> Tensor:
    """One-to-one matching that maximises the total similarity (Hungarian algorithm).

    Parameters
    ----------
    similarity : array-like, shape (units_a, units_b)

    Returns
    -------
    Tensor, shape (units_a,), int64
        The partner of each row unit; ``-1`` for rows left unmatched when ``units_a > units_b``.

    Examples
    --------
    >>> bipartite_matching(torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]]))
    tensor([ 1, -1,  0])
    """
    from scipy.optimize import linear_sum_assignment

    s = _similarity(similarity)
    rows, cols = linear_sum_assignment(s, maximize=True)
    partner = torch.full((s.shape[0],), -1, dtype=torch.long)
    partner[torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return partner


def _live_mean(similarity: Tensor, partner: Tensor, live: Tensor) -> float:
    """Mean of similarity[i, partner[i]] over the live, matched rows (NaN if there are none)."""
    rows = torch.nonzero(live & (partner >= 0)).flatten()
    if not len(rows):
        return float("nan")
    return float(similarity[rows, partner[rows]].mean())


# -- one-number summaries -----------------------------------------------------------------------


def linear_cka(a: Any, b: Any) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019), in [0, 1].

    ``||B^T A||_F^2 / (||A^T A||_F ||B^T B||_F)`` on column-centred samples x units matrices: 1
    when B is A rotated and rescaled (a permuted copy included), near 0 for unrelated codes.

    Examples
    --------
    >>> a = torch.randn(300, 6, dtype=torch.float64)
    >>> q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    >>> round(linear_cka(a, 3 * a @ q + 1), 6)
    1.0
    """
    xa, xb = _pair(a, b)
    xa, xb = xa - xa.mean(0), xb - xb.mean(0)
    cross = torch.linalg.matrix_norm(xb.T @ xa) ** 2
    norms = torch.linalg.matrix_norm(xa.T @ xa) * torch.linalg.matrix_norm(xb.T @ xb)
    return float(cross / norms) if norms > 0 else 0.0


def procrustes_distance(a: Any, b: Any) -> float:
    """Orthogonal Procrustes distance between two representations, in [0, sqrt(2)].

    Both samples x units matrices are column-centred and scaled to unit Frobenius norm; the
    distance is ``min_R ||A R - B||_F`` over orthogonal R (the narrower matrix is zero-padded),
    which equals ``sqrt(2 - 2 ||A^T B||_*)``. Its square is Ding et al.'s (2021) ``d_Proc``. It
    is 0 exactly when B is a rotation (for instance a permutation) of A, up to scale and shift.

    Examples
    --------
    >>> a = torch.randn(300, 6, dtype=torch.float64)
    >>> round(procrustes_distance(a, 2 * a[:, [3, 1, 5, 0, 2, 4]]), 6)
    0.0
    """
    xa, xb = _pair(a, b)
    xa, xb = xa - xa.mean(0), xb - xb.mean(0)
    na, nb = torch.linalg.matrix_norm(xa), torch.linalg.matrix_norm(xb)
    if na == 0 or nb == 0:
        raise InterpError("procrustes_distance needs representations that vary across samples.")
    nuclear = torch.linalg.matrix_norm((xa / na).T @ (xb / nb), ord="nuc")
    return float(torch.sqrt((2 - 2 * nuclear).clamp(min=0)))


# -- sparse prediction --------------------------------------------------------------------------


@dataclass(frozen=True)
class SparsePrediction:
    """L1-regularised linear maps from the units of A to those of B, one per ``alpha``.

    Attributes
    ----------
    curve : pandas.DataFrame
        One row per alpha: ``alpha``, ``loss`` (held-out mean squared error of the z-scored B
        units, so ~1 for a map that predicts nothing), ``train_loss``, ``nonzero`` (fraction of
        nonzero weights) and ``inputs_per_unit`` (mean number of A units each B unit uses).
    weights : Tensor, shape (alphas, units_b, units_a), float64
        The maps between z-scored units (``b_z ~ W a_z``).
    mean_a, scale_a, mean_b, scale_b : Tensor
        The z-scoring of each side (training samples; ``inf`` scale for a constant unit).
    """

    curve: pd.DataFrame
    weights: Tensor
    mean_a: Tensor
    scale_a: Tensor
    mean_b: Tensor
    scale_b: Tensor

    def coef(self, alpha_index: int = -1) -> tuple[Tensor, Tensor]:
        """The map at one alpha in the units of the activations: ``b ~ a @ W.T + c``.

        Returns
        -------
        (Tensor, Tensor)
            ``W`` shaped (units_b, units_a) and ``c`` shaped (units_b,).

        Examples
        --------
        >>> a = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> w, c = sparse_prediction(a, 3 * a[:, [1]] + 1, [0.0]).coef(0)
        >>> (w.round(decimals=6) + 0.0).tolist(), c.round(decimals=6).tolist()
        ([[0.0, 3.0]], [1.0])
        """
        w = self.weights[alpha_index] / self.scale_a[None, :]
        w = torch.where(torch.isfinite(self.scale_b)[:, None], w * self.scale_b[:, None], 0.0)
        return w, self.mean_b - w @ self.mean_a

    def mapping(self, alpha_index: int = -1, *, tol: float = 1e-8) -> dict[int, list[int]]:
        """The one-to-many mapping at one alpha: B unit -> the A units it reads, strongest first.

        Examples
        --------
        >>> a = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> fit = sparse_prediction(a, torch.stack([a[:, 2], a[:, 0] - 0.5 * a[:, 1]], 1), [0.05])
        >>> fit.mapping(0)
        {0: [2], 1: [0, 1]}
        """
        w = self.weights[alpha_index]
        out = {}
        for j in range(w.shape[0]):
            keep = torch.nonzero(w[j].abs() > tol).flatten()
            order = torch.argsort(w[j, keep].abs(), descending=True)
            out[j] = keep[order].tolist()
        return out


def sparse_prediction(
    a: Any,
    b: Any,
    alphas: Sequence[float] = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3),
    *,
    test_fraction: float = 0.25,
    max_samples: int = 20_000,
    seed: int = 0,
) -> SparsePrediction:
    """Predict each unit of B from the units of A at the same position, with an L1 penalty.

    Li et al.'s (2016) "few-to-one" mapping: a 1x1 convolution from A's channels to B's,
    trained with ``MSE + alpha ||W||_1``. Here both sides are z-scored per unit and each B unit
    is a lasso (``(1/2n)||b - a w||^2 + alpha ||w||_1``, scikit-learn's ``lasso_path``; alpha=0
    is ordinary least squares). Examples, not positions, are split into train and test.
    As alpha grows the maps get sparser and the held-out loss rises from the best linear fit
    towards 1.

    Parameters
    ----------
    a, b : array-like, shape (examples, units, *positions)
        As for :func:`correlation_matrix`.
    alphas : sequence of float
        Penalties, each >= 0.
    test_fraction : float
        Share of the examples held out for the loss.
    max_samples : int
        Training samples (example x position) kept at most, drawn at random.

    Returns
    -------
    SparsePrediction

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> a = torch.randn(400, 4, generator=g, dtype=torch.float64)
    >>> noise = 0.1 * torch.randn(400, 2, generator=g, dtype=torch.float64)
    >>> fit = sparse_prediction(a, a[:, [2, 0]] + noise, [0.0, 0.5])
    >>> fit.curve[["alpha", "inputs_per_unit"]].round(2).values.tolist()
    [[0.0, 4.0], [0.5, 1.0]]
    """
    from sklearn.linear_model import lasso_path

    ta, tb = _activations(a, "a"), _activations(b, "b")
    _same_grid(ta, tb, ("a", "b"))
    alphas_ = [float(x) for x in alphas]
    if not alphas_ or any(not np.isfinite(x) or x < 0 for x in alphas_):
        raise InterpError(f"alphas must be a non-empty sequence of numbers >= 0; got {alphas!r}.")
    if not 0 < test_fraction < 1:
        raise InterpError(f"test_fraction must be in (0, 1); got {test_fraction}.")
    n = ta.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 2:
        raise ShapeError(f"sparse_prediction needs at least 3 examples; got {n}.")
    test, train_ = order[:n_test], order[n_test:]
    xa, xb = _samples(ta[train_]), _samples(tb[train_])
    if len(xa) > max_samples:
        keep = torch.randperm(len(xa), generator=torch.Generator().manual_seed(seed + 1))
        xa, xb = xa[keep[:max_samples]], xb[keep[:max_samples]]
    za, mean_a, scale_a = _standardise(xa)
    zb, mean_b, scale_b = _standardise(xb)
    ya, yb = (_samples(ta[test]) - mean_a) / scale_a, (_samples(tb[test]) - mean_b) / scale_b
    x_np, y_np = za.numpy(), zb.numpy()
    weights = torch.zeros(len(alphas_), zb.shape[1], za.shape[1], dtype=torch.float64)
    positive = sorted({x for x in alphas_ if x > 0}, reverse=True)
    if positive:
        gram = x_np.T @ x_np
        # one lasso per B unit: a 2-D target would make lasso_path a multi-task (group) lasso
        coefs = np.stack(
            [
                lasso_path(
                    x_np,
                    y,
                    alphas=positive,
                    precompute=gram,
                    Xy=x_np.T @ y,
                    max_iter=10_000,
                    tol=1e-8,
                )[1]
                for y in y_np.T
            ]
        )  # (units_b, units_a, alphas)
        by_alpha = {x: torch.from_numpy(coefs[..., i].copy()) for i, x in enumerate(positive)}
    for i, x in enumerate(alphas_):
        if x == 0:
            w, *_ = np.linalg.lstsq(x_np, y_np, rcond=None)
            weights[i] = torch.from_numpy(w.T.copy())
        else:
            weights[i] = by_alpha[x]
    rows = []
    for i, x in enumerate(alphas_):
        w = weights[i]
        nz = w.abs() > 1e-10
        rows.append(
            {
                "alpha": x,
                "loss": float(((ya @ w.T - yb) ** 2).mean()),
                "train_loss": float(((za @ w.T - zb) ** 2).mean()),
                "nonzero": float(nz.double().mean()),
                "inputs_per_unit": float(nz.sum(1).double().mean()),
            }
        )
    return SparsePrediction(pd.DataFrame(rows), weights, mean_a, scale_a, mean_b, scale_b)


# -- spectral clustering ------------------------------------------------------------------------


def _spectral(joint: Tensor, n_groups: int, seed: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    if not isinstance(n_groups, int) or not 2 <= n_groups < len(joint):
        raise InterpError(
            f"n_groups must be an integer in 2..{len(joint) - 1} (the units of both layers "
            f"minus one); got {n_groups!r}."
        )
    affinity = joint.abs().numpy().copy()
    np.fill_diagonal(affinity, 1.0)
    # a floor keeps dead units from splitting the graph into disconnected pieces
    affinity = np.maximum(affinity, 1e-6)
    model = SpectralClustering(n_clusters=n_groups, affinity="precomputed", random_state=seed)
    return model.fit_predict(affinity)


def spectral_groups(a: Any, b: Any, n_groups: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Many-to-many groups: spectral clustering of the joint correlation matrix of A and B.

    The affinity is ``|C|`` of ``[[C_AA, C_AB], [C_BA, C_BB]]`` (all units of both layers). Units of
    the two networks that fall in one group span a shared subspace even when no single pair of
    units matches.

    Returns
    -------
    (Tensor, Tensor)
        Group labels of A's units and of B's units, int64.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> z = torch.randn(500, 2, generator=g)
    >>> noise = lambda k: 0.3 * torch.randn(500, k, generator=g)
    >>> ga, gb = spectral_groups(z[:, [0, 0, 1]] + noise(3), z[:, [1, 0]] + noise(2), 2)
    >>> bool(ga[0] == ga[1] == gb[1] and ga[2] == gb[0] and ga[0] != ga[2])
    True
    """
    xa, xb = _pair(a, b)
    labels = _spectral(_correlation(torch.cat([xa, xb], 1), torch.cat([xa, xb], 1)), n_groups, seed)
    labels_t = torch.from_numpy(labels).long()
    return labels_t[: xa.shape[1]], labels_t[xa.shape[1] :]


# -- the estimator ------------------------------------------------------------------------------


class _Moments:
    """Running means and centred co-moments of paired samples, in float64 (Chan et al.'s merge
    of batch statistics): all that correlations, linear CKA and the Procrustes distance need."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, xa: Tensor, xb: Tensor) -> None:
        n = len(xa)
        ma, mb = xa.mean(0), xb.mean(0)
        ca, cb = xa - ma, xb - mb
        aa, bb, ab = ca.T @ ca, cb.T @ cb, ca.T @ cb
        if self.n == 0:
            self.n, self.mean_a, self.mean_b, self.aa, self.bb, self.ab = n, ma, mb, aa, bb, ab
            return
        total = self.n + n
        da, db = ma - self.mean_a, mb - self.mean_b
        w = self.n * n / total
        self.aa += aa + w * torch.outer(da, da)
        self.bb += bb + w * torch.outer(db, db)
        self.ab += ab + w * torch.outer(da, db)
        self.mean_a += da * (n / total)
        self.mean_b += db * (n / total)
        self.n = total

    def _root(self, side: str) -> Tensor:
        """sqrt of each unit's sum of squared deviations; inf for a constant unit (as in
        :func:`_standardise`), so that its correlations are 0."""
        m, mean = (self.aa, self.mean_a) if side == "a" else (self.bb, self.mean_b)
        var = m.diagonal().clamp(min=0)
        live = (var / self.n).sqrt() > 1e-12 * (1 + mean.abs())
        return torch.where(live, var.sqrt(), torch.inf)

    def correlation(self) -> Tensor:
        return (self.ab / self._root("a")[:, None] / self._root("b")[None, :]).clamp(-1.0, 1.0)

    def within(self, side: str) -> Tensor:
        m, r = (self.aa, self._root("a")) if side == "a" else (self.bb, self._root("b"))
        return (m / r[:, None] / r[None, :]).clamp(-1.0, 1.0)

    def cka(self) -> float:
        norms = torch.linalg.matrix_norm(self.aa) * torch.linalg.matrix_norm(self.bb)
        return float(torch.linalg.matrix_norm(self.ab) ** 2 / norms) if norms > 0 else 0.0

    def procrustes(self) -> float:
        total = torch.sqrt(self.aa.trace().clamp(min=0) * self.bb.trace().clamp(min=0))
        if total == 0:
            raise InterpError("procrustes_distance needs representations that vary across samples.")
        nuclear = torch.linalg.matrix_norm(self.ab, ord="nuc") / total
        return float(torch.sqrt((2 - 2 * nuclear).clamp(min=0)))


def _run_once(
    hooked: Any, inputs: Tensor, sites: list[str], what: str, x_shape: tuple[int, ...]
) -> dict[str, Tensor]:
    """One forward pass of a :class:`~interp.ModuleModel`; the output of every site, which must
    fire exactly once (a module called twice would otherwise keep only its last call)."""
    model = hooked.model
    inputs = model_input(model, inputs)
    got: dict[str, list[Tensor]] = {s: [] for s in sites}

    def recorder(path: str):
        def record(t: Tensor, site: Any) -> None:
            got[path].append(t.detach().cpu())

        return record

    hooks = hooked.hooks({s: recorder(s) for s in got})
    with torch.no_grad(), hooks, explain_model_errors(model, inputs, f"x ({what})"):
        model(inputs)
    for path, calls in got.items():
        if len(calls) != 1:
            if not calls:
                raise InterpError(
                    f"Module {path!r} did not run in the forward pass of {what}; choose modules "
                    "the model calls."
                )
            raise InterpError(
                f"Module {path!r} ran {len(calls)} times in one forward pass of {what} (one "
                "module object called at several places, e.g. a ReLU shared by several layers); "
                "NeuronAlignment compares one activation per layer and will not pick a call. "
                "Give each call a module of its own (separate nn.ReLU instances), compare the "
                "layer that feeds the call you want instead (its pre-activations), or run the "
                "models yourself and fit dictionaries of activations. (NeuralCodes instead "
                f"splits such a module into blocks {path}#0, {path}#1, ...)"
            )
    return {path: calls[0] for path, calls in got.items()}


def _layer_pairs(layers: Sequence[Any]) -> list[tuple[str, str]]:
    """``layers`` as (path in A, path in B) pairs: a path (``str``) or a submodule index
    (``int``, the path ``str(i)``) stands for the same layer in both networks.

    Examples
    --------
    >>> _layer_pairs(["fc", 1, ("0", 2)])
    [('fc', 'fc'), ('1', '1'), ('0', '2')]
    """

    def path(p: Any) -> str | None:
        ok = isinstance(p, str) or (isinstance(p, int | np.integer) and not isinstance(p, bool))
        return str(p) if ok else None

    pairs = []
    for entry in layers:
        both = [path(p) for p in entry] if isinstance(entry, tuple | list) else [path(entry)] * 2
        if len(both) != 2 or None in both:
            raise InterpError(
                "layers must list module paths ('fc', '1'), submodule indices of a Sequential "
                f"(1) or (path_a, path_b) pairs of them; got {entry!r}."
            )
        pairs.append((both[0], both[1]))
    return pairs


class NeuronAlignment(BaseEstimator):
    """Convergent learning (Li et al. 2016): how the units of two networks correspond, per layer.

    Parameters
    ----------
    layers : sequence, optional
        What to compare. For models: module paths (``"1"`` is the output of submodule 1 of a
        ``Sequential``; the integer ``1`` means the same), or ``(path_a, path_b)`` pairs to
        compare two different layers. For dictionaries of activations: the keys to use
        (default: every key of ``a``).
    method : {"correlation", "mutual_information"}
        The similarity that the matchings maximise. Matched *correlations* are reported either way.
    bins : int
        Bins per unit for the mutual information.
    shuffle : bool
        Also compare A with B on shuffled examples (the images permuted, positions kept): the
        chance level of the matched correlation, reported as ``shuffled_*``.
    batch_size : int
        Examples per forward pass when ``fit`` runs models.
    unit_axis : int, optional
        The axis of every activation that holds the units (the other non-example axes are
        positions: each (example, position) pair is one sample). Default ``None``: axis 1 for
        2-D (examples, units), 4-D (N, C, H, W) and 5-D activations; 3-D activations are refused
        as ambiguous. Pass ``-1`` for per-token activations (examples, tokens, features) or
        channels-last layouts, ``1`` for (examples, channels, length).
    seed : int
        For the shuffle and the spectral clustering.
    progress : bool, optional
        A progress bar over batches of inputs; default only on a terminal.

    Attributes
    ----------
    layers_ : list of str
    correlation_ : dict of str to Tensor (units_a, units_b)
    similarity_ : dict of str to Tensor
        What the matchings maximise (the correlation or the mutual information).
    semi_matching_, matching_ : dict of str to Tensor (units_a,)
        Best partner of each unit of A, and the one-to-one (Hungarian) partner (-1: none).
    within_a_, within_b_ : dict of str to Tensor
        Correlations within each network (for :meth:`groups`); a zero diagonal entry marks a
        dead unit (constant over every sample), which :meth:`summary` leaves out of its means.
    shuffled_correlation_ : dict of str to Tensor
        Present when ``shuffle``.
    baseline_correlation_ : dict of str to Tensor
        A against the ``baseline`` network, when one is passed to :meth:`fit`.
    cka_, procrustes_ : dict of str to float
        Linear CKA and Procrustes distance of the two layers (``baseline_cka_``,
        ``baseline_procrustes_`` for the baseline network).
    n_samples_ : dict of str to int
        Samples per layer (examples x positions).

    Examples
    --------
    >>> net = cnn(seed=0)
    >>> copy = cnn(seed=0)
    >>> perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    >>> with torch.no_grad():  # the same network with its conv1 channels permuted
    ...     _ = copy[0].weight.copy_(net[0].weight[perm]), copy[0].bias.copy_(net[0].bias[perm])
    ...     _ = copy[3].weight.copy_(net[3].weight[:, perm])
    >>> x = digits().x_test[:100]
    >>> align = NeuronAlignment(layers=["1"]).fit(net, copy, x)
    >>> bool((perm[align.matching_["1"]] == torch.arange(8)).all())
    True
    >>> align.summary().loc["1", ["one_to_one", "cka", "procrustes"]].round(4).tolist()
    [1.0, 1.0, 0.0]
    """

    def __init__(
        self,
        layers: Sequence[str | tuple[str, str]] | None = None,
        *,
        method: str = "correlation",
        bins: int = 10,
        shuffle: bool = True,
        batch_size: int = 512,
        unit_axis: int | None = None,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        self.layers = layers
        self.method = method
        self.bins = bins
        self.shuffle = shuffle
        self.batch_size = batch_size
        self.unit_axis = unit_axis
        self.seed = seed
        self.progress = progress

    # -- fitting ----------------------------------------------------------------------------

    def fit(self, a: Any, b: Any, x: Any = None, *, baseline: Any = None) -> NeuronAlignment:
        """Compare network (or activations) ``a`` with ``b``, layer by layer.

        Models are run on ``x`` in batches of ``batch_size`` and only running sums are kept
        (float64 means and co-moments, merged batch by batch), so ``x`` can be large; the
        mutual-information method also keeps the activations of the compared layers. Floating
        ``x`` is cast to each model's parameter dtype (and moved to its device); integer ``x``
        (token ids) is passed unchanged. Each compared module must run exactly once per forward
        pass: a module called at several places (one ``nn.ReLU`` shared by several layers)
        raises :class:`~interp.InterpError`. A refit starts afresh: nothing learned by an
        earlier ``fit`` survives it.

        Parameters
        ----------
        a, b : nn.Module, dict of str to array-like, or array-like
            Two models run on ``x``; or activations per layer on the same inputs, each shaped
            (examples, units, *positions); or one layer's activations each.
        x : Tensor, optional
            The inputs, when ``a`` and ``b`` are models.
        baseline : same kind as ``b``, optional
            A third network (another seed, an untrained one, one with shuffled weights) or its
            activations, to set the matched correlations of ``a`` and ``b`` against.

        Returns
        -------
        self
        """
        reset_fitted(self)
        check_option("method", self.method, METHODS)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InterpError(f"batch_size must be a positive integer; got {self.batch_size!r}.")
        if self.unit_axis is not None and (
            not isinstance(self.unit_axis, int | np.integer)
            or isinstance(self.unit_axis, bool)
            or self.unit_axis == 0
        ):
            raise InterpError(
                "unit_axis must be None or a nonzero integer (axis 0 holds the examples); got "
                f"{self.unit_axis!r}."
            )
        g = torch.Generator().manual_seed(self.seed)
        roles = ["b"]
        if self.shuffle:
            roles.append("shuffled")
        if baseline is not None:
            roles.append("baseline")
        # a batch of models may hold a single example; arrays are one batch of at least two
        models = any(isinstance(m, nn.Module) for m in (a, b, baseline))
        if models:
            names, paths = self._check_models(a, b, x, baseline)
            batches = self._model_batches(a, b, baseline, x, names, paths, g)
        else:
            names, batches = self._array_batches(a, b, x, baseline, g)
        min_rows = 1 if models else 2
        moments = {name: {role: _Moments() for role in roles} for name in names}
        kept: dict[str, tuple[list[Tensor], list[Tensor]]] = {name: ([], []) for name in names}
        try:
            for batch in batches:
                for name in names:
                    ta = self._units(batch["a"][name], f"a[{name!r}]", min_rows)
                    for role in roles:
                        other = self._units(batch[role][name], f"{role}[{name!r}]", min_rows)
                        _same_grid(ta, other, (f"a[{name!r}]", f"{role}[{name!r}]"))
                        moments[name][role].update(_samples(ta), _samples(other))
                        if role == "b" and self.method == "mutual_information":
                            kept[name][0].append(ta)
                            kept[name][1].append(other)
        finally:
            if hasattr(batches, "close"):  # puts the models back in their training mode
                batches.close()
        attrs: dict[str, dict[str, Any]] = {
            key: {}
            for key in (
                "correlation_", "similarity_", "semi_matching_", "matching_", "within_a_",
                "within_b_", "cka_", "procrustes_", "n_samples_",
            )
        }  # fmt: skip
        for name in names:
            m = moments[name]["b"]
            corr = m.correlation()
            attrs["correlation_"][name] = corr
            attrs["within_a_"][name] = m.within("a")
            attrs["within_b_"][name] = m.within("b")
            sim = corr
            if self.method == "mutual_information":
                sim = mutual_information_matrix(
                    torch.cat(kept[name][0]), torch.cat(kept[name][1]), bins=self.bins
                )
            attrs["similarity_"][name] = sim
            attrs["semi_matching_"][name] = semi_matching(sim)
            attrs["matching_"][name] = bipartite_matching(sim)
            attrs["cka_"][name] = m.cka()
            attrs["procrustes_"][name] = m.procrustes()
            attrs["n_samples_"][name] = m.n
            if self.shuffle:
                attrs.setdefault("shuffled_correlation_", {})[name] = moments[name][
                    "shuffled"
                ].correlation()
            if baseline is not None:
                mc = moments[name]["baseline"]
                attrs.setdefault("baseline_correlation_", {})[name] = mc.correlation()
                attrs.setdefault("baseline_cka_", {})[name] = mc.cka()
                attrs.setdefault("baseline_procrustes_", {})[name] = mc.procrustes()
        for key, value in attrs.items():
            setattr(self, key, value)
        self.layers_ = list(names)
        return self

    def _units(self, x: Any, name: str, min_rows: int) -> Tensor:
        """Validated float64 activations shaped (examples, units, *positions)."""
        return _activations(x, name, min_rows, self.unit_axis)

    def _check_models(
        self, a: Any, b: Any, x: Any, baseline: Any
    ) -> tuple[list[str], list[tuple[str, str]]]:
        others = [("b", b)] + ([("baseline", baseline)] if baseline is not None else [])
        if not isinstance(a, nn.Module) or any(not isinstance(m, nn.Module) for _, m in others):
            kinds = ", ".join(type(m).__name__ for m in (a, b, baseline) if m is not None)
            raise InterpError(
                "fit compares models with models or activations with activations; got "
                f"{kinds}. Run the models yourself to mix them."
            )
        if x is None:
            raise InterpError("fit(model_a, model_b, x) needs the inputs x to run both models.")
        if not isinstance(x, Tensor) or x.ndim < 1 or len(x) < 2:
            raise ShapeError(
                "x must be a tensor of at least 2 inputs (examples first); got "
                f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}."
            )
        if not self.layers:
            raise InterpError(
                "NeuronAlignment(layers=[...]) must name the module paths to compare when "
                "fitting models, e.g. layers=['1', '4'] for the ReLUs of cnn()."
            )
        paths = _layer_pairs(self.layers)
        return [pa if pa == pb else f"{pa}|{pb}" for pa, pb in paths], paths

    def _model_batches(
        self,
        a: nn.Module,
        b: nn.Module,
        baseline: nn.Module | None,
        x: Tensor,
        names: list[str],
        paths: list[tuple[str, str]],
        g: torch.Generator,
    ) -> Iterator[dict[str, dict[str, Tensor]]]:
        from interp import ModuleModel

        perm = torch.randperm(len(x), generator=g)
        runs = {"a": (a, [pa for pa, _ in paths]), "b": (b, [pb for _, pb in paths])}
        if self.shuffle:
            runs["shuffled"] = (b, runs["b"][1])
        if baseline is not None:
            runs["baseline"] = (baseline, runs["b"][1])
        wrapped = {id(m): ModuleModel(m) for m, _ in runs.values()}
        modes = {id(m): (m, m.training) for m, _ in runs.values()}
        what = {"a": "model a", "b": "model b", "shuffled": "model b", "baseline": "the baseline"}
        starts = range(0, len(x), self.batch_size)
        try:
            for m, _ in modes.values():
                m.eval()
            for start in progress_bar(starts, desc="align", progress=self.progress):
                rows = torch.arange(start, min(start + self.batch_size, len(x)))
                batch = {}
                for role, (model, sites) in runs.items():
                    inputs = x[perm[rows]] if role == "shuffled" else x[rows]
                    acts = _run_once(wrapped[id(model)], inputs, sites, what[role], x.shape)
                    batch[role] = {n: acts[s] for n, s in zip(names, sites, strict=True)}
                yield batch
        finally:
            for m, training in modes.values():
                m.train(training)

    def _array_batches(
        self, a: Any, b: Any, x: Any, baseline: Any, g: torch.Generator
    ) -> tuple[list[str], list[dict[str, dict[str, Any]]]]:
        if x is not None:
            raise InterpError("x is only used with models; activations need no inputs.")
        sides = {"a": a, "b": b} | ({"baseline": baseline} if baseline is not None else {})
        mappings = [isinstance(v, Mapping) for v in sides.values()]
        if any(mappings) and not all(mappings):
            raise InterpError(
                "fit needs dictionaries of activations on every side (or arrays on every side); "
                f"got {', '.join(type(v).__name__ for v in sides.values())}."
            )
        if all(mappings):
            names = [str(k) for k in (self.layers or list(a))]
            for side, acts in sides.items():
                missing = [k for k in names if k not in acts]
                if missing:
                    raise InterpError(
                        f"Layers {missing} are not in the activations of {side}; it has "
                        f"{list(acts)}."
                    )
        else:
            names = [str(self.layers[0]) if self.layers else "layer"]
            sides = {side: {names[0]: v} for side, v in sides.items()}
        batch = {side: {n: acts[n] for n in names} for side, acts in sides.items()}
        if self.shuffle:
            batch["shuffled"] = {}
            for n in names:
                tb = _activations(batch["b"][n], f"b[{n!r}]")
                batch["shuffled"][n] = tb[torch.randperm(len(tb), generator=g)]
        return names, [batch]

    # -- results ----------------------------------------------------------------------------

    def summary(self) -> pd.DataFrame:
        """One row per layer: mean matched correlation against its baselines, CKA, Procrustes.

        Columns: ``units_a``, ``units_b``, ``dead_a``, ``dead_b`` (units constant over every
        sample, e.g. dead ReLUs: they correlate with nothing), ``semi`` (mean over A's live units
        of the correlation with its semi-matched partner), ``one_to_one`` (the same for the
        Hungarian partner, over A's live units that have one), ``overlap`` (fraction of A's live units
        whose two partners coincide), then ``shuffled_semi``, ``shuffled_one_to_one`` and
        ``baseline_semi``, ``baseline_one_to_one`` when computed (over the same units of A, each
        matched on its own correlations), ``cka``, ``procrustes`` (and ``baseline_cka``,
        ``baseline_procrustes``).
        """
        check_fitted(self, "correlation_")
        rows = []
        for name in self.layers_:
            corr = self.correlation_[name]
            live = self.within_a_[name].diagonal() > 0
            dead_b = int((self.within_b_[name].diagonal() == 0).sum())
            semi, one = self.semi_matching_[name], self.matching_[name]
            row = {
                "layer": name,
                "units_a": corr.shape[0],
                "units_b": corr.shape[1],
                "dead_a": int((~live).sum()),
                "dead_b": dead_b,
                "semi": _live_mean(corr, semi, live),
                "one_to_one": _live_mean(corr, one, live),
                "overlap": float((semi == one)[live].double().mean()) if live.any() else np.nan,
            }
            for prefix in ("shuffled", "baseline"):
                other = getattr(self, f"{prefix}_correlation_", None)
                if other is not None:
                    c = other[name]
                    row[f"{prefix}_semi"] = _live_mean(c, semi_matching(c), live)
                    row[f"{prefix}_one_to_one"] = _live_mean(c, bipartite_matching(c), live)
            row["cka"] = self.cka_[name]
            row["procrustes"] = self.procrustes_[name]
            if hasattr(self, "baseline_cka_"):
                row["baseline_cka"] = self.baseline_cka_[name]
                row["baseline_procrustes"] = self.baseline_procrustes_[name]
            rows.append(row)
        return pd.DataFrame(rows).set_index("layer")

    def _layer(self, layer: str | None) -> str:
        check_fitted(self, "correlation_")
        if layer is None:
            if len(self.layers_) > 1:
                raise InterpError(f"Name a layer: this alignment has {self.layers_}.")
            return self.layers_[0]
        if layer not in self.correlation_:
            raise InterpError(f"Unknown layer {layer!r}; this alignment has {self.layers_}.")
        return layer

    def order(self, layer: str | None = None) -> tuple[Tensor, Tensor]:
        """Row and column orders that put the one-to-one matching on the diagonal of C_AB.

        Rows are A's matched units by decreasing matched correlation, then the unmatched ones;
        columns are their partners, then B's unmatched units. ``C[rows][:, cols]`` is the
        paper's reordered correlation matrix.
        """
        name = self._layer(layer)
        corr, partner = self.correlation_[name], self.matching_[name]
        matched = torch.nonzero(partner >= 0).flatten()
        value = corr[matched, partner[matched]]
        rows = matched[torch.argsort(value, descending=True)]
        rows = torch.cat([rows, torch.nonzero(partner < 0).flatten()])
        cols = partner[rows[: len(matched)]]
        taken = torch.zeros(corr.shape[1], dtype=torch.bool)
        taken[cols] = True
        return rows, torch.cat([cols, torch.nonzero(~taken).flatten()])

    def groups(self, n_groups: int, layer: str | None = None) -> tuple[Tensor, Tensor]:
        """Spectral groups of the layer's joint correlation matrix (see :func:`spectral_groups`)."""
        name = self._layer(layer)
        joint = torch.cat(
            [
                torch.cat([self.within_a_[name], self.correlation_[name]], 1),
                torch.cat([self.correlation_[name].T, self.within_b_[name]], 1),
            ]
        )
        labels = torch.from_numpy(_spectral(joint, n_groups, self.seed)).long()
        ua = self.correlation_[name].shape[0]
        return labels[:ua], labels[ua:]

    def to_graph(self, layer: str | None = None, top: int | None = None):
        """The matching as a bipartite :class:`~interp.CircuitGraph`.

        Nodes ``a:{layer}.{unit}`` and ``b:{layer}.{unit}``, scored by each unit's best
        correlation with the other network; edges ``a -> b`` scored by their correlation, the
        one-to-one matching in the circuit (``in_graph``; matched units too).

        Parameters
        ----------
        layer : str, optional
            One layer; default: every layer (one bipartite block each).
        top : int, optional
            Keep only each A unit's ``top`` most correlated edges (the matched edge always stays).

        Examples
        --------
        >>> a = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> graph = NeuronAlignment(layers=["h"]).fit(a, a[:, [2, 0, 1]]).to_graph()
        >>> [e.name for e in graph.edges.in_graph()]
        ['a:h.0->b:h.1', 'a:h.1->b:h.2', 'a:h.2->b:h.0']
        """
        from interp import CircuitGraph

        check_fitted(self, "correlation_")
        names = self.layers_ if layer is None else [self._layer(layer)]
        if top is not None and (not isinstance(top, int) or top < 1):
            raise InterpError(f"top must be a positive integer or None; got {top!r}.")
        nodes: list[str] = []
        node_scores: list[float] = []
        node_in: list[bool] = []
        edges, scores, edge_in = [], [], []
        for name in names:
            corr, partner = self.correlation_[name], self.matching_[name]
            ua, ub = corr.shape
            a_nodes = [f"a:{name}.{i}" for i in range(ua)]
            b_nodes = [f"b:{name}.{j}" for j in range(ub)]
            nodes += a_nodes + b_nodes
            node_scores += corr.max(1).values.tolist() + corr.max(0).values.tolist()
            matched_b = set(partner[partner >= 0].tolist())
            node_in += (partner >= 0).tolist() + [j in matched_b for j in range(ub)]
            keep = corr.argsort(1, descending=True)[:, : top or ub]
            for i in range(ua):
                cols = set(keep[i].tolist()) | ({int(partner[i])} if partner[i] >= 0 else set())
                for j in sorted(cols):
                    edges.append((a_nodes[i], b_nodes[j]))
                    scores.append(float(corr[i, j]))
                    edge_in.append(j == int(partner[i]))
        return CircuitGraph(
            nodes,
            edges,
            node_scores=node_scores,
            node_in_graph=node_in,
            edge_scores=scores,
            edge_in_graph=edge_in,
            method="neuron-alignment",
            metric=self.method,
            meta={"kind": "neuron-matching", "layers": list(names)},
            score_dtype=torch.float64,
        )
