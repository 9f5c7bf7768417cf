"""The interaction basis (Bushnaq et al. 2024, arXiv 2405.10927 and 2405.10928).

A basis for the activations of every layer of a network, computed backwards from the output:
whiten the activation Gram matrix (dropping linearly dependent activations), eigendecompose the
Gram matrix of the Jacobians that carry the whitened activations to the next layer's basis
(dropping directions the rest of the network ignores), and scale each direction by the square root
of its eigenvalue. See ``specs/interaction_basis.md`` (§1.5, §2.3-§2.5) for the algorithm.

Conventions (those of the reference implementation ``rib``):

- **Node layers** and **folded biases**: see :mod:`analysis._interaction_sections`;
- **Row vectors**: ``f_hat = [f, 1] @ C`` and ``[f, 1] ~ f_hat @ C_pinv``; ``C`` is
  (width + 1, kept).
- All linear algebra runs in float64; truncation thresholds are *relative* to the largest
  eigenvalue and the absolute values used are reported by :meth:`InteractionBasis.summary`.

The package splits into the sections (:mod:`~analysis._interaction_sections`), the linear algebra
(:mod:`~analysis._interaction_spectral`), this estimator, and its evaluation (edge concentration,
modularity, ablations: :mod:`~analysis._interaction_eval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from interp import InterpError, ShapeError, check_option, progress_bar

from ._base import check_fitted, check_matrix, reset_fitted
from ._interaction_eval import NORMS, BasisEvaluation
from ._interaction_sections import F64, Section, _compose, _fold_model_and_data, _forward, _with_one
from ._interaction_spectral import (
    _batches,
    _eigh_desc,
    _gram_basis,
    _keep,
    _vjp_rows,
    jacobian_gram,
)

__all__ = ["InteractionBasis", "pca_basis", "neuron_basis", "compare_bases"]

BASES = ("interaction", "pca", "neuron")
JACOBIANS = ("next", "output")


class InteractionBasis(BasisEvaluation, BaseEstimator):
    """The (local) interaction basis of every node layer of a network, and its interaction graph.

    Parameters
    ----------
    basis : {"interaction", "pca", "neuron"}
        ``"interaction"`` is the Jacobian formula (spec §1.5, rib's ``jacobian``); ``"pca"`` the
        eigenbasis of the Gram matrix (centred with ``centre=True``), orthonormal and unscaled;
        ``"neuron"`` the identity (the baselines of the comparisons).
    truncation : float or (float, float)
        Relative thresholds: Gram eigenvalues below ``truncation * max`` and interaction
        eigenvalues ``Lambda`` below ``truncation * max`` are dropped (one number for both, or a
        pair ``(gram, lambda)``), each in (0, 1) and floored at ``d * eps`` (float64 rounding)
        for a matrix of size ``d``. The absolute values used are in :meth:`summary`.
    centre : bool
        Centre the activations; the constant direction is then index 0 of every layer but the
        output, never rotated, and every other direction has mean 0 on the data.
    jacobian : {"next", "output"}
        Jacobians to the next layer's basis (the *local* interaction basis), or straight to the
        output (rib's ``naive_gradient_flow``).
    rotate_final : bool
        Rotate the output layer into the eigenbasis of its Gram matrix (orthogonal); otherwise the
        output stays in its own coordinates (``C`` is the identity).
    n_sources : int, optional
        Random ±1 sources for the Jacobian Gram matrices when a layer's target is wider than
        this (see :func:`jacobian_gram`); ``None`` is exact.
    edges : bool
        Compute the interaction graph's edges in :meth:`fit` (needed by :meth:`to_graph`,
        :meth:`edge_concentration`, :meth:`modularity` and edge ablation).
    batch_size, seed, progress
        Batching of the ``torch.func`` calls, the seed of the stochastic sources, tqdm bars.

    Attributes
    ----------
    C_, C_pinv_ : list of tensors
        Per node layer: ``C`` (width + 1, kept) and its pseudo-inverse (kept, width + 1); the
        output layer has no constant entry.
    lambdas_ : list of tensors
        Per node layer, ``Lambda`` of the kept directions (``"pca"``: Gram eigenvalues;
        ``"neuron"``: second moments).
    kept_ : list of int
        Directions kept per node layer (including the constant direction when centred).
    gram_rank_ : list of int
        Rank of the Gram matrix (non-constant directions when centred) per node layer.
    constant_ : list of int or None
        Index of the constant direction per node layer (``None`` when there is none).
    edges_ : list of tensors
        ``E[l]`` (kept of layer l + 1, kept of layer l): mean squared integrated-gradient
        attributions (spec §2.4, ``squared``), when ``edges=True``.
    thresholds_ : pandas.DataFrame
        The absolute thresholds used per layer.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> ib = InteractionBasis().fit(net, torch.randn(200, 4))
    >>> ib.kept_
    [5, 3, 3]
    >>> f_hat = ib.transform(1, ib.node_activations(torch.randn(200, 4))[1])
    >>> f_hat.shape
    torch.Size([200, 3])
    """

    def __init__(
        self,
        basis: str = "interaction",
        *,
        truncation: float | tuple[float, float] = 1e-10,
        centre: bool = False,
        jacobian: str = "next",
        rotate_final: bool = False,
        n_sources: int | None = None,
        edges: bool = True,
        batch_size: int = 512,
        seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        self.basis = basis
        self.truncation = truncation
        self.centre = centre
        self.jacobian = jacobian
        self.rotate_final = rotate_final
        self.n_sources = n_sources
        self.edges = edges
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress

    # -- fitting ------------------------------------------------------------------------------

    def _check_params(self) -> tuple[float, float]:
        check_option("basis", self.basis, BASES)
        check_option("jacobian", self.jacobian, JACOBIANS)
        tol = self.truncation
        pair = tuple(tol) if isinstance(tol, tuple | list) else (tol, tol)
        if len(pair) != 2 or not all(isinstance(t, int | float) and 0 < t < 1 for t in pair):
            raise InterpError(
                "truncation must be a relative threshold in (0, 1) or a pair (gram, lambda) of "
                f"them; got {tol!r}. A threshold of 0 would keep numerically null directions."
            )
        if self.n_sources is not None and self.n_sources < 1:
            raise InterpError(
                f"n_sources must be a positive integer or None; got {self.n_sources}."
            )
        return float(pair[0]), float(pair[1])

    def fit(self, model: nn.Module | Sequence[Section], x: Any) -> InteractionBasis:
        """Compute the basis of every node layer (backwards from the output) and the edges.

        Parameters
        ----------
        model : nn.Sequential or sequence of callables
            See :func:`fold_sections`. The model is copied to float64; it is not modified.
        x : array-like (N, d_0)
            The data set (inputs of the first section).

        Returns
        -------
        self
        """
        reset_fitted(self)  # a refit never mixes the previous model's state with the new one
        tol_gram, tol_lambda = self._check_params()
        self.sections_, x = _fold_model_and_data(model, x)
        self.n_layers_ = len(self.sections_) + 1
        fa = self._folded_activations(x)
        last = self.n_layers_ - 1
        self.widths_ = [a.shape[1] - 1 for a in fa[:-1]] + [fa[-1].shape[1]]
        n_out = fa[-1].shape[1]
        self.C_: list[Tensor] = [torch.empty(0)] * self.n_layers_
        self.C_pinv_: list[Tensor] = [torch.empty(0)] * self.n_layers_
        self.lambdas_: list[Tensor] = [torch.empty(0)] * self.n_layers_
        self.gram_rank_: list[int] = [0] * self.n_layers_
        self.constant_: list[int | None] = [None] * self.n_layers_
        self.means_: list[Tensor | None] = [None] * self.n_layers_
        rows: list[dict[str, Any]] = [{}] * self.n_layers_

        out_gram = fa[-1].T @ fa[-1] / len(x)
        if self.rotate_final:
            vals, vecs = _eigh_desc(out_gram)
            self.C_[last], self.C_pinv_[last], self.lambdas_[last] = vecs, vecs.T.clone(), vals
        else:
            eye = torch.eye(n_out, dtype=F64)
            self.C_[last], self.C_pinv_[last] = eye, eye.clone()
            self.lambdas_[last] = torch.diagonal(out_gram).clone()
        self.gram_rank_[last] = int(torch.linalg.matrix_rank(out_gram, rtol=max(tol_gram, 1e-15)))
        rows[last] = {
            "layer": last,
            "width": n_out,
            "gram_rank": self.gram_rank_[last],
            "kept": n_out,
            "gram_threshold": np.nan,
            "lambda_threshold": np.nan,
        }

        for layer in progress_bar(
            range(last - 1, -1, -1), desc=f"{self.basis} basis", progress=self.progress
        ):
            rows[layer] = self._fit_layer(layer, fa[layer], tol_gram, tol_lambda)
        self.kept_ = [c.shape[1] for c in self.C_]
        self.thresholds_ = pd.DataFrame(rows)
        if self.edges:
            self.edges_ = [
                self._edges(layer, fa[layer])
                for layer in progress_bar(range(last), desc="edges", progress=self.progress)
            ]
        return self

    def _folded_activations(self, x: Tensor) -> list[Tensor]:
        return _forward(self.sections_, x)

    def _target(self, layer: int) -> Section:
        """The function whose Jacobian defines layer ``layer``'s basis."""
        last = self.n_layers_ - 1
        if self.jacobian == "output":
            fns, c = self.sections_[layer:], self.C_[last]
        else:
            fns, c = [self.sections_[layer]], self.C_[layer + 1]
        run = _compose(fns)
        return lambda f: run(f) @ c

    def _fit_layer(self, layer: int, fa: Tensor, tol_gram: float, tol_lambda: float) -> dict:
        centre = self.centre and self.basis != "neuron"
        n, d_aug = fa.shape
        if self.basis == "neuron":
            eye = torch.eye(d_aug, dtype=F64)
            self.C_[layer], self.C_pinv_[layer] = eye, eye.clone()
            self.lambdas_[layer] = (fa**2).mean(0)
            self.constant_[layer] = d_aug - 1
            rank = int(torch.linalg.matrix_rank(fa.T @ fa / n, rtol=max(tol_gram, 1e-15)))
            self.gram_rank_[layer] = rank
            return {
                "layer": layer,
                "width": d_aug - 1,
                "gram_rank": rank,
                "kept": d_aug,
                "gram_threshold": np.nan,
                "lambda_threshold": np.nan,
            }
        gb = _gram_basis(fa, centre, tol_gram)
        self.gram_rank_[layer] = gb.rank
        self.means_[layer] = gb.mean
        self.constant_[layer] = 0 if gb.n_masked else None
        row = {
            "layer": layer,
            "width": d_aug - 1,
            "gram_rank": gb.rank,
            "gram_threshold": gb.cut,
            "lambda_threshold": np.nan,
        }
        if self.basis == "pca":
            self.C_[layer], self.C_pinv_[layer], self.lambdas_[layer] = gb.w, gb.w_pinv, gb.d
            return {**row, "kept": gb.w.shape[1]}
        # whiten, then the Jacobian Gram in whitened coordinates: M = R_pinv M' R_pinv^T
        r = gb.w / gb.d.sqrt()
        r_pinv = gb.d.sqrt()[:, None] * gb.w_pinv
        m_prime = jacobian_gram(
            self._target(layer),
            fa,
            n_sources=self.n_sources,
            batch_size=self.batch_size,
            seed=self.seed + layer,
            progress=False,
        )
        m = r_pinv @ m_prime @ r_pinv.T
        k0 = gb.n_masked
        vals, vecs = _eigh_desc(m[k0:, k0:])
        keep, cut = _keep(vals, tol_lambda)
        v = torch.zeros(m.shape[0], k0 + int(keep.sum()), dtype=F64)
        v[k0:, k0:] = vecs[:, keep]
        lam = vals[keep]
        if k0:
            v[0, 0] = 1
            m00 = m[0, 0].abs()
            # the constant direction keeps its Lambda; a constant nothing reads is scaled by 1
            lam = torch.cat([m00[None] if m00 > cut else torch.ones(1, dtype=F64), lam])
        self.C_[layer] = r @ v * lam.sqrt()
        self.C_pinv_[layer] = (v.T @ r_pinv) / lam.sqrt()[:, None]
        self.lambdas_[layer] = lam
        return {**row, "kept": v.shape[1], "lambda_threshold": cut}

    # -- using the basis ----------------------------------------------------------------------

    def _check_layer(self, layer: int) -> int:
        check_fitted(self, "C_")
        if not isinstance(layer, int | np.integer) or not -self.n_layers_ <= layer < self.n_layers_:
            raise InterpError(
                f"layer must be a node-layer index in 0..{self.n_layers_ - 1}; got {layer!r}."
            )
        return int(layer) % self.n_layers_

    def _fold(self, layer: int, a: Any, name: str = "activations") -> Tensor:
        a = check_matrix(a, name, dtype=F64)
        if a.shape[1] != self.widths_[layer]:
            raise ShapeError(
                f"{name} of node layer {layer} must have {self.widths_[layer]} columns; got "
                f"{a.shape[1]}. Use node_activations(x)[{layer}]."
            )
        return a if layer == self.n_layers_ - 1 else _with_one(a)

    def node_activations(self, x: Any) -> list[Tensor]:
        """The raw activations (N, width) of every node layer for inputs ``x``, in float64."""
        check_fitted(self, "C_")
        x = self._fold(0, x, "x")[:, :-1]
        fa = self._folded_activations(x)
        return [a[:, :-1] for a in fa[:-1]] + [fa[-1]]

    def transform(self, layer: int, activations: Any) -> Tensor:
        """Activations of node layer ``layer`` (N, width) in the basis: (N, kept_[layer]).

        The constant 1 is appended for you (and the mean removed when centred).
        """
        layer = self._check_layer(layer)
        return self._fold(layer, activations) @ self.C_[layer]

    def inverse_transform(self, layer: int, f_hat: Any) -> Tensor:
        """Back from the basis to the layer's own coordinates (exact on the kept span)."""
        layer = self._check_layer(layer)
        f_hat = check_matrix(f_hat, "f_hat", dtype=F64)
        if f_hat.shape[1] != self.kept_[layer]:
            raise ShapeError(
                f"f_hat of node layer {layer} must have {self.kept_[layer]} columns; got "
                f"{f_hat.shape[1]}."
            )
        a = f_hat @ self.C_pinv_[layer]
        return a if layer == self.n_layers_ - 1 else a[:, :-1]

    def _local(self, layer: int, fa: Tensor) -> Section:
        """``f_hat^l -> f_hat^{l+1}`` near the data points ``fa`` (a batch, bias folded).

        Moves in the basis are added to the data point itself, so values and gradients are
        those at the data. (rib evaluates at the reconstruction ``f_hat C_pinv``; the two differ
        only where dropping the truncated directions would switch a ReLU.)
        """
        section, c_pinv, c_next = self.sections_[layer], self.C_pinv_[layer], self.C_[layer + 1]
        h0 = fa @ self.C_[layer]
        return lambda h: section(fa + (h - h0) @ c_pinv) @ c_next

    def jacobians(self, layer: int, activations: Any) -> Tensor:
        """Jacobians ``J_hat[x, i, j] = d f_hat^{l+1}_i / d f_hat^l_j`` between consecutive bases.

        Taken at the data points. For the interaction basis (``jacobian="next"``)
        ``E_x[J_hat^T J_hat]`` is the identity on the fitted data (spec §3, P2).

        Returns
        -------
        tensor (N, kept_[layer + 1], kept_[layer])
        """
        return self._jacobians(layer, activations, times_input=False)

    def attributions(self, layer: int, activations: Any) -> Tensor:
        """Attributions ``A[x, i, j]`` of direction i of layer + 1 to direction j of ``layer``.

        The gradient rule (gradient times input, spec §2.4), exact integrated gradients for
        bias-folded ReLU and linear sections: ``sum_j A[x, i, j] = f_hat^{l+1}_i(x)`` (the
        truncated directions carry no gradient at the data, so nothing is lost).

        Returns
        -------
        tensor (N, kept_[layer + 1], kept_[layer])
        """
        return self._jacobians(layer, activations, times_input=True)

    def _jacobians(self, layer: int, activations: Any, times_input: bool) -> Tensor:
        layer = self._check_layer(layer)
        if layer == self.n_layers_ - 1:
            raise InterpError("The output layer has no next layer; use 0..n_layers_ - 2.")
        fa = self._fold(layer, activations)
        h = fa @ self.C_[layer]
        out = []
        size = _batches(len(h), h.shape[1], self.kept_[layer + 1], self.batch_size)
        g = torch.Generator().manual_seed(self.seed)
        for start in range(0, len(h), size):
            hb = h[start : start + size]
            rows = _vjp_rows(self._local(layer, fa[start : start + size]), hb, None, g)
            out.append((rows * hb[None] if times_input else rows).permute(1, 0, 2))
        return torch.cat(out)

    def _edges(self, layer: int, fa: Tensor) -> Tensor:
        h = fa @ self.C_[layer]
        k_out = self.kept_[layer + 1]
        e = torch.zeros(k_out, h.shape[1], dtype=F64)
        size = _batches(len(h), h.shape[1], k_out, self.batch_size)
        g = torch.Generator().manual_seed(self.seed)
        for start in range(0, len(h), size):
            hb = h[start : start + size]
            rows = _vjp_rows(self._local(layer, fa[start : start + size]), hb, None, g)
            e += ((rows * hb[None]) ** 2).sum(1)
        return e / len(h)

    def summary(self) -> pd.DataFrame:
        """Per node layer: width, Gram rank, directions kept, the absolute thresholds used and
        the largest and smallest kept ``Lambda``."""
        check_fitted(self, "C_")
        frame = self.thresholds_.sort_values("layer").reset_index(drop=True)
        frame.insert(0, "basis", self.basis)
        frame["lambda_max"] = [float(v.max()) if len(v) else np.nan for v in self.lambdas_]
        frame["lambda_min"] = [float(v.min()) if len(v) else np.nan for v in self.lambdas_]
        return frame

    # -- the interaction graph ----------------------------------------------------------------

    def _check_edges(self) -> None:
        check_fitted(self, "C_")
        if not hasattr(self, "edges_"):
            raise InterpError(
                f"This {type(self).__name__} was fitted with edges=False; refit with edges=True "
                "to build its interaction graph."
            )

    def node_names(self, layer: int) -> list[str]:
        """``L{layer}.d{i}`` for every kept direction ``i`` (column ``i`` of ``C_[layer]``)."""
        layer = self._check_layer(layer)
        return [f"L{layer}.d{i}" for i in range(self.kept_[layer])]

    def edge_mask(self, layer: int, include_constant: bool = False) -> Tensor:
        """Which entries of ``edges_[layer]`` count: all, or all but the constant directions'."""
        self._check_edges()
        layer = self._check_layer(layer)
        e = self.edges_[layer]
        mask = torch.ones_like(e, dtype=torch.bool)
        if not include_constant:
            for axis, idx in ((1, self.constant_[layer]), (0, self.constant_[layer + 1])):
                if idx is not None:
                    mask.select(axis, idx).fill_(False)
        return mask

    def to_graph(self, *, top: int | None = None):
        """The interaction graph as a :class:`~interp.CircuitGraph`.

        Nodes ``L{l}.d{i}`` score ``Lambda_i``; the edge ``L{l}.d{j} -> L{l+1}.d{i}`` scores
        ``E[l][i, j]``. ``top`` keeps that many strongest edges in the circuit mask.

        Examples
        --------
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> graph = InteractionBasis().fit(net, torch.randn(50, 3)).to_graph()
        >>> len(graph.nodes), len(graph.edges)
        (8, 12)
        """
        from interp import CircuitGraph

        self._check_edges()
        names: list[str] = []
        scores: list[float] = []
        for layer in range(self.n_layers_):
            names += self.node_names(layer)
            scores += self.lambdas_[layer].tolist()
        edges, edge_scores = [], []
        for layer, e in enumerate(self.edges_):
            src, dst = self.node_names(layer), self.node_names(layer + 1)
            for i in range(e.shape[0]):
                for j in range(e.shape[1]):
                    edges.append((src[j], dst[i]))
            edge_scores.append(e.reshape(-1))
        graph = CircuitGraph(
            names,
            edges,
            node_scores=scores,
            edge_scores=torch.cat(edge_scores),
            method=f"{self.basis}-basis",
            metric="mean squared attribution",
            meta={
                "kind": "interaction graph",
                "basis": self.basis,
                "centre": self.centre,
                "jacobian": self.jacobian,
                "kept": self.kept_,
                "constant": self.constant_,
            },
            score_dtype=F64,
        )
        return graph if top is None else graph.top(top, prune=False)


# -- baselines and comparison -------------------------------------------------------------------


def pca_basis(model: nn.Module | Sequence[Section], x: Any, **kwargs: Any) -> InteractionBasis:
    """The PCA baseline: an :class:`InteractionBasis` with ``basis="pca"``, fitted.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> pca = pca_basis(net, torch.randn(50, 3), centre=True)
    >>> bool(torch.allclose(pca.C_pinv_[1] @ pca.C_[1], torch.eye(pca.kept_[1], dtype=torch.float64)))
    True
    """
    return InteractionBasis("pca", **kwargs).fit(model, x)


def neuron_basis(model: nn.Module | Sequence[Section], x: Any, **kwargs: Any) -> InteractionBasis:
    """The neuron baseline: an :class:`InteractionBasis` with ``basis="neuron"``, fitted.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> neuron_basis(net, torch.randn(50, 3)).kept_
    [4, 5, 2]
    """
    return InteractionBasis("neuron", **kwargs).fit(model, x)


def compare_bases(
    *fitted: InteractionBasis,
    fractions: Sequence[float] = (0.9, 0.99),
    resolution: float = 1.0,
    seed: int = 0,
    norm: str = "none",
) -> pd.DataFrame:
    """Edge-mass concentration and modularity of several fitted bases, side by side.

    Returns
    -------
    pandas.DataFrame
        One row per basis and pair of layers: ``basis, edges, kept_in, kept_out, n_edges,
        edges_90%, edges_99%, modularity``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> net, x = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), torch.randn(80, 3)
    >>> frame = compare_bases(InteractionBasis().fit(net, x), pca_basis(net, x))
    >>> list(frame.basis)
    ['interaction', 'interaction', 'pca', 'pca']
    """
    check_option("norm", norm, NORMS)
    frames = []
    for est in fitted:
        if not isinstance(est, InteractionBasis):
            raise InterpError(
                f"compare_bases takes fitted InteractionBasis objects; got {type(est).__name__}."
            )
        frame = est.edge_concentration(fractions)
        frame.insert(2, "kept_in", est.kept_[:-1])
        frame.insert(3, "kept_out", est.kept_[1:])
        frame["modularity"] = est.modularity(resolution=resolution, seed=seed, norm=norm).q
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
