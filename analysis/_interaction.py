"""The interaction basis (Bushnaq et al. 2024, arXiv 2405.10927 and 2405.10928).

A basis for the activations of every layer of a network, computed backwards from the output:
whiten the activation Gram matrix (dropping linearly dependent activations), eigendecompose the
Gram matrix of the Jacobians that carry the whitened activations to the next layer's basis
(dropping directions the rest of the network ignores), and scale each direction by the square root
of its eigenvalue. See ``specs/interaction_basis.md`` (§1.5, §2.3-§2.5) for the algorithm.

Conventions (those of the reference implementation ``rib``):

- **Node layers** are the inputs of the network's sections: for an ``nn.Sequential`` MLP, layer 0
  is the input, layer ``l`` the input of the ``l``-th ``Linear`` and the last layer the output.
- **Biases are folded**: every node layer but the output gets a trailing constant 1, and each
  section multiplies its bias by that entry, so a ReLU section is positively 1-homogeneous.
- **Row vectors**: ``f_hat = [f, 1] @ C`` and ``[f, 1] ~ f_hat @ C_pinv``; ``C`` is
  (width + 1, kept).
- All linear algebra runs in float64; truncation thresholds are *relative* to the largest
  eigenvalue and the absolute values used are reported by :meth:`InteractionBasis.summary`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from interp import InterpError, ShapeError, progress_bar

from ._base import check_fitted, check_labels, check_matrix, reset_fitted

__all__ = [
    "InteractionBasis",
    "Modules",
    "pca_basis",
    "neuron_basis",
    "compare_bases",
    "jacobian_gram",
    "fold_sections",
    "transformer_mlp",
]

Section = Callable[[Tensor], Tensor]
F64 = torch.float64
# smallest constant entry a perspective section accepts (c h(f / c) divides by it)
MIN_CONSTANT = 1e-6


# -- sections with folded biases ----------------------------------------------------------------


def _parameter_free(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is None


def _split_sequential(model: nn.Sequential) -> list[tuple[nn.Linear, nn.Module]]:
    """(Linear, the parameter-free modules after it) for every Linear of an MLP."""
    groups: list[list[nn.Module]] = []
    for i, module in enumerate(model.children()):
        if isinstance(module, nn.Linear):
            groups.append([module])
        elif not _parameter_free(module):
            raise InterpError(
                f"Module {i} ({type(module).__name__}) has parameters but is not a Linear; an "
                "nn.Sequential model must be Linear layers and parameter-free activations. "
                "Pass a list of section callables instead."
            )
        elif not groups:
            raise InterpError(
                f"Module {i} ({type(module).__name__}) comes before the first Linear; the first "
                "module must be a Linear (flatten the inputs yourself, e.g. x.reshape(len(x), -1))."
            )
        else:
            groups[-1].append(module)
    if not groups:
        raise InterpError("The nn.Sequential model has no Linear layer.")
    return [(g[0], nn.Sequential(*g[1:])) for g in groups]


class _FoldedLinear:
    """``[f, c] -> [act(f W^T + c b), c]``: a Linear section with its bias folded."""

    def __init__(self, linear: nn.Linear, rest: nn.Module, last: bool) -> None:
        self.weight = linear.weight.detach().to(F64)
        bias = linear.bias
        self.bias = (
            torch.zeros(len(self.weight), dtype=F64) if bias is None else bias.detach().to(F64)
        )
        self.rest = copy.deepcopy(rest).to(F64).eval()
        self.last = last
        self.width = self.weight.shape[1]

    def pre(self, f: Tensor) -> Tensor:
        return f[:, :-1] @ self.weight.T + f[:, -1:] * self.bias

    def post(self, p: Tensor, c: Tensor) -> Tensor:
        """The section's output from its pre-activations ``p`` and constant entries ``c``."""
        out = self.rest(p)
        return out if self.last else torch.cat([out, c], dim=1)

    def __call__(self, f: Tensor) -> Tensor:
        return self.post(self.pre(f), f[:, -1:])


class _FoldedCallable:
    """``[f, c] -> [c h(f / c), c]``: the perspective of a section, which folds any bias.

    At ``c = 1`` it is ``h`` itself; for affine maps followed by ReLU it equals the explicit
    folding of :class:`_FoldedLinear` for ``c > 0`` (both are 1-homogeneous in ``[f, c]``). It
    divides by ``c`` and is not that folding for ``c < 0``, so a constant entry at or below
    ``MIN_CONSTANT`` (an ablation of an uncentred basis can cause one) raises :class:`InterpError`.
    """

    def __init__(self, fn: Section, last: bool) -> None:
        if isinstance(fn, nn.Module):
            fn = copy.deepcopy(fn).to(F64).eval().requires_grad_(False)
        self.fn = fn
        self.last = last
        self.width = None

    def __call__(self, f: Tensor) -> Tensor:
        c = f[:, -1:]
        if len(c) and bool((c <= MIN_CONSTANT).any()):
            raise InterpError(
                f"A section given as a callable got a constant (bias) entry of "
                f"{float(c.min()):.3g}; its bias is folded through the perspective c h(f / c), "
                f"which needs c > {MIN_CONSTANT:g}. Ablating directions of an uncentred basis "
                "moves the constant: fit with centre=True (the constant direction is then never "
                "ablated), or pass nn.Linear / nn.Sequential sections, which fold their bias "
                "explicitly."
            )
        out = c * self.fn(f[:, :-1] / c)
        return out if self.last else torch.cat([out, c], dim=1)


def fold_sections(model: nn.Module | Sequence[Section]) -> list[Section]:
    """The sections of ``model`` with biases folded, in float64.

    Parameters
    ----------
    model : nn.Sequential or sequence of callables
        An MLP (``Linear`` layers and parameter-free activations; it is split before every
        ``Linear``), or the sections themselves, each mapping a batch of one node layer's
        activations (B, d_l) to the next (B, d_{l+1}). A section that is a ``Linear`` or an
        ``nn.Sequential`` starting with one is folded explicitly; any other callable through its
        perspective ``c h(f / c)`` (exact for ReLU/affine sections, and at ``c = 1`` always).

    Returns
    -------
    list of callables
        Each maps (B, d_l + 1) to (B, d_{l+1} + 1), carrying the constant last entry through;
        the last one maps to the output (no constant).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> sections = fold_sections(net)
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> h = sections[0](torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1))
    >>> bool(torch.allclose(sections[1](h), net(x)))
    True
    """
    if isinstance(model, nn.Sequential) and all(
        isinstance(m, nn.Linear) or _parameter_free(m) for m in model.children()
    ):
        pairs = _split_sequential(model)
        return [
            _FoldedLinear(lin, rest, i == len(pairs) - 1) for i, (lin, rest) in enumerate(pairs)
        ]
    if isinstance(model, nn.Module) or not isinstance(model, Sequence) or not len(model):
        raise InterpError(
            "model must be an nn.Sequential MLP (Linear layers and parameter-free activations) "
            f"or a non-empty list of section callables; got {type(model).__name__}."
        )
    folded: list[Section] = []
    for i, fn in enumerate(model):
        last = i == len(model) - 1
        if not callable(fn):
            raise InterpError(f"Section {i} is not callable; got {type(fn).__name__}.")
        if isinstance(fn, nn.Linear):
            folded.append(_FoldedLinear(fn, nn.Identity(), last))
        elif (
            isinstance(fn, nn.Sequential)
            and len(fn)
            and isinstance(fn[0], nn.Linear)
            and all(_parameter_free(m) for m in list(fn)[1:])
        ):
            folded.append(_FoldedLinear(fn[0], nn.Sequential(*list(fn)[1:]), last))
        else:
            folded.append(_FoldedCallable(fn, last))
    return folded


def _ones(n: int) -> Tensor:
    return torch.ones(n, 1, dtype=F64)


def _with_one(a: Tensor) -> Tensor:
    return torch.cat([a, _ones(len(a))], dim=1)


def _compose(fns: Sequence[Section]) -> Section:
    def run(f: Tensor) -> Tensor:
        for fn in fns:
            f = fn(f)
        return f

    return run


def _forward(sections: Sequence[Section], x: Tensor) -> list[Tensor]:
    """Folded activations ``[f, 1]`` of every node layer for inputs ``x`` (the output: ``f``)."""
    with torch.no_grad():
        f = _with_one(x)
        acts = [f]
        for section in sections:
            f = section(f)
            acts.append(f)
    return acts


# -- Jacobian Gram matrices ---------------------------------------------------------------------


def _vjp_rows(fn: Section, xb: Tensor, n_sources: int | None, g: torch.Generator) -> Tensor:
    """Rows ``phi^T J(x)`` for one batch: (sources, B, d_in); one-hot sources give J exactly."""
    out, vjp_fn = torch.func.vjp(fn, xb)
    d_out = out.shape[1]
    if n_sources is None or n_sources >= d_out:
        eye = torch.eye(d_out, dtype=out.dtype)
        cot = eye[:, None, :].expand(d_out, len(xb), d_out)
    else:
        signs = torch.randint(0, 2, (n_sources, len(xb), d_out), generator=g).to(out.dtype)
        cot = (2 * signs - 1) / math.sqrt(n_sources)
    (rows,) = torch.func.vmap(vjp_fn)(cot)
    # sections that close over trainable parameters would otherwise carry their autograd graph
    return rows.detach()


def _batches(n: int, width: int, sources: int, batch_size: int) -> int:
    # keep one batch's rows (sources x B x width doubles) under ~64 MB
    return max(1, min(batch_size, (8 * 2**20) // max(1, sources * width)))


def jacobian_gram(
    fn: Section,
    x: Tensor,
    *,
    n_sources: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    progress: bool | None = None,
) -> Tensor:
    """The Jacobian Gram matrix ``E_x[J(x)^T J(x)]`` of a batched function, in float64.

    Parameters
    ----------
    fn : callable
        Maps a batch (B, d_in) to (B, d_out), each row depending only on its own input row.
    x : tensor (N, d_in)
        The data points.
    n_sources : int, optional
        ``None`` (default) uses the exact Jacobian (one vector-Jacobian product per output).
        An integer ``R`` smaller than d_out uses ``R`` random ±1 stochastic sources ``phi``,
        ``E_phi[J^T phi phi^T J] / R = J^T J``: unbiased, for wide outputs.
    batch_size : int
        Data points per ``torch.func`` call (reduced automatically to bound memory).

    Returns
    -------
    tensor (d_in, d_in), float64

    Examples
    --------
    >>> w = torch.tensor([[1.0, 2.0], [0.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    >>> m = jacobian_gram(lambda x: x @ w.T, torch.randn(10, 2, dtype=torch.float64))
    >>> bool(torch.allclose(m, w.T @ w))
    True
    """
    x = check_matrix(x, "x", dtype=F64)
    g = torch.Generator().manual_seed(seed)
    d_in = x.shape[1]
    total = torch.zeros(d_in, d_in, dtype=F64)
    with torch.no_grad():
        d_out = fn(x[:1]).shape[1]
    sources = d_out if n_sources is None else min(n_sources, d_out)
    size = _batches(len(x), d_in, sources, batch_size)
    for start in progress_bar(range(0, len(x), size), desc="jacobian gram", progress=progress):
        rows = _vjp_rows(fn, x[start : start + size], n_sources, g)
        total += torch.einsum("sbi,sbj->ij", rows, rows)
    return total / len(x)


# -- eigendecompositions ------------------------------------------------------------------------


def _eigh_desc(m: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (absolute, descending) and eigenvectors of a symmetric float64 matrix."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    vals = vals.abs()
    order = torch.argsort(vals, descending=True)
    return vals[order], vecs[:, order]


def _keep(vals: Tensor, tol: float) -> tuple[Tensor, float]:
    """Eigenvalues above ``tol * max`` (``tol`` floored at ``len(vals) * eps``, float64 noise)."""
    top = float(vals.max()) if len(vals) else 0.0
    cut = max(tol, len(vals) * torch.finfo(F64).eps) * top
    return (vals > cut) if top > 0 else torch.zeros(len(vals), dtype=torch.bool), cut


@dataclass
class _GramBasis:
    w: Tensor  # (d_aug, k): orthonormal directions (centring folded in)
    w_pinv: Tensor  # (k, d_aug)
    d: Tensor  # (k,) Gram eigenvalues (centred: variances; 1 for the constant)
    rank: int  # non-constant directions kept
    cut: float  # absolute threshold used
    n_masked: int  # 1 when the constant direction is index 0
    mean: Tensor | None


def _gram_basis(fa: Tensor, centre: bool, tol: float) -> _GramBasis:
    """Eigenbasis of the (optionally centred) Gram matrix of bias-folded activations ``fa``."""
    n, d_aug = fa.shape
    if not centre:
        vals, vecs = _eigh_desc(fa.T @ fa / n)
        keep, cut = _keep(vals, tol)
        u = vecs[:, keep]
        return _GramBasis(u, u.T.clone(), vals[keep], int(keep.sum()), cut, 0, None)
    mean = fa[:, :-1].mean(0)
    xc = fa[:, :-1] - mean
    vals, vecs = _eigh_desc(xc.T @ xc / n)
    keep, cut = _keep(vals, tol)
    u = vecs[:, keep]
    k = u.shape[1]
    # x @ Y = [f - c mu, c]; the constant direction e_last is index 0 and is never rotated
    w = torch.zeros(d_aug, k + 1, dtype=F64)
    w[-1, 0] = 1
    w[:-1, 1:] = u
    w[-1, 1:] = -mean @ u
    w_pinv = torch.zeros(k + 1, d_aug, dtype=F64)
    w_pinv[0, :-1] = mean
    w_pinv[0, -1] = 1
    w_pinv[1:, :-1] = u.T
    d = torch.cat([torch.ones(1, dtype=F64), vals[keep]])
    return _GramBasis(w, w_pinv, d, k, cut, 1, mean)


# -- results -------------------------------------------------------------------------------------


@dataclass
class Modules:
    """Communities of an interaction graph and their Newman modularity.

    Attributes
    ----------
    q : float
        Newman modularity ``Q = (1/2m) sum_ij [A_ij - k_i k_j / 2m] delta(c_i, c_j)`` of the
        partition (at resolution 1, whatever resolution found the partition).
    communities : list of list of str
        Node names per module, largest module first.
    assignment : dict
        Node name -> module index.
    """

    q: float
    communities: list[list[str]]
    assignment: dict[str, int] = field(repr=False)

    def frame(self) -> pd.DataFrame:
        """One row per node: ``node, layer, direction, module``."""
        rows = []
        for name, module in self.assignment.items():
            layer, direction = name.split(".")
            rows.append(
                {
                    "node": name,
                    "layer": int(layer[1:]),
                    "direction": int(direction[1:]),
                    "module": module,
                }
            )
        return pd.DataFrame(rows)


# -- the estimator ------------------------------------------------------------------------------

BASES = ("interaction", "pca", "neuron")


class InteractionBasis:
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
        if self.basis not in BASES:
            raise InterpError(f"basis must be one of {BASES}; got {self.basis!r}.")
        if self.jacobian not in ("next", "output"):
            raise InterpError(f"jacobian must be 'next' or 'output'; got {self.jacobian!r}.")
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
        x = check_matrix(x, "x", dtype=F64, min_rows=2)
        self.sections_ = fold_sections(model)
        width = getattr(self.sections_[0], "width", None)
        if width is not None and x.shape[1] != width:
            raise ShapeError(
                f"x has {x.shape[1]} features but the first layer of the model reads {width}; "
                "pass the inputs of the first Linear."
            )
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

    def _module_hat(self, layer: int) -> Section:
        """``f_hat^l -> f_hat^{l+1}``: the section between two layers, in their bases."""
        section, c_pinv, c_next = self.sections_[layer], self.C_pinv_[layer], self.C_[layer + 1]
        return lambda h: section(h @ c_pinv) @ c_next

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

    def edge_concentration(
        self, fractions: Sequence[float] = (0.9, 0.99), *, include_constant: bool = False
    ) -> pd.DataFrame:
        """How many of the strongest edges hold a fraction of each layer's total edge mass.

        Parameters
        ----------
        fractions : sequence of float
            Fractions of ``sum E`` (0.9 and 0.99 in spec §2.8).
        include_constant : bool
            Count the edges of the constant directions (left out by default, as for modularity).

        Returns
        -------
        pandas.DataFrame
            One row per pair of layers: ``basis, edges, n_edges, edges_90%, edges_99%, ...``.
        """
        self._check_edges()
        rows = []
        for layer, e in enumerate(self.edges_):
            values = e[self.edge_mask(layer, include_constant)]
            row = {
                "basis": self.basis,
                "edges": f"L{layer}->L{layer + 1}",
                "n_edges": int(values.numel()),
            }
            row.update(
                {f"edges_{round(100 * f, 3):g}%": _edges_holding(values, f) for f in fractions}
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def modularity(
        self,
        *,
        resolution: float = 1.0,
        seed: int = 0,
        norm: str = "none",
        nodes_per_layer: int | None = None,
    ) -> Modules:
        """Modules of the interaction graph (Louvain) and their Newman modularity ``Q``.

        Constant directions are left out (spec §1.4). The graph is undirected, weighted by the
        edges ``E`` (``norm="sqrt"``: ``sqrt(E)``; ``"layer"``: ``E / sum E`` per pair of
        layers). ``nodes_per_layer`` keeps only the most important directions of each layer.
        Community detection is networkx's Louvain method at ``resolution``, seeded.
        """
        import networkx as nx

        self._check_edges()
        if norm not in ("none", "sqrt", "layer"):
            raise InterpError(f"norm must be 'none', 'sqrt' or 'layer'; got {norm!r}.")
        graph = nx.Graph()
        for layer in range(self.n_layers_):
            graph.add_nodes_from(self._module_nodes(layer, nodes_per_layer))
        for layer, e in enumerate(self.edges_):
            w = e.sqrt() if norm == "sqrt" else e
            if norm == "layer":
                w = w / w[self.edge_mask(layer, False)].sum().clamp_min(1e-300)
            src = self._module_nodes(layer, nodes_per_layer)
            dst = self._module_nodes(layer + 1, nodes_per_layer)
            for i_name in dst:
                i = int(i_name.split(".d")[1])
                for j_name in src:
                    weight = float(w[i, int(j_name.split(".d")[1])])
                    if weight > 0:
                        graph.add_edge(j_name, i_name, weight=weight)
        communities = nx.community.louvain_communities(
            graph, weight="weight", resolution=resolution, seed=seed
        )
        communities = sorted(
            (sorted(c, key=_node_key) for c in communities),
            key=lambda c: (-len(c), _node_key(c[0])),
        )
        q = float(nx.community.modularity(graph, communities, weight="weight"))
        assignment = {name: k for k, c in enumerate(communities) for name in c}
        return Modules(q, communities, assignment)

    def _module_nodes(self, layer: int, nodes_per_layer: int | None) -> list[str]:
        names = self.node_names(layer)
        const = self.constant_[layer]
        keep = [n for i, n in enumerate(names) if i != const]
        return keep if nodes_per_layer is None else keep[:nodes_per_layer]

    # -- ablations ----------------------------------------------------------------------------

    def ablation_curve(
        self,
        x: Any,
        y: Any = None,
        *,
        layer: int,
        kind: str = "node",
        schedule: Sequence[int] | None = None,
        metric: str | Callable[[Tensor, Tensor | None], float] = "accuracy",
    ) -> pd.DataFrame:
        """Score of the network when only some directions (or edges) of one layer are kept.

        Parameters
        ----------
        x, y : array-like
            Inputs (N, d_0) and labels (for ``"accuracy"`` and ``"loss"``).
        layer : int
            ``kind="node"``: the node layer whose directions are ablated (smallest ``Lambda``
            first; the constant direction is always kept and counted). ``kind="edge"``: the
            edges from ``layer`` to ``layer + 1`` (weakest first; edges of constant directions
            are always kept and not counted).
        schedule : sequence of int, optional
            Numbers of directions (edges) kept; default: about 30 counts, log-spaced.
        metric : "accuracy", "loss" or callable
            ``metric(output, y) -> float``.

        Returns
        -------
        pandas.DataFrame
            ``basis, kind, layer, n_kept, score``.
        """
        layer = self._check_layer(layer)
        if kind not in ("node", "edge"):
            raise InterpError(f"kind must be 'node' or 'edge'; got {kind!r}.")
        if kind == "edge":
            self._check_edges()
            if layer == self.n_layers_ - 1:
                raise InterpError("Edges leave layers 0..n_layers_ - 2; the output has none.")
        x = self._fold(0, x, "x")
        score = _metric(metric, y, len(x))
        fa = self._folded_activations(x[:, :-1])
        if kind == "node":
            total = self.kept_[layer]
        else:
            total = int(self.edge_mask(layer, False).sum())
        counts = _schedule(total) if schedule is None else sorted({int(s) for s in schedule})
        if any(not 0 <= c <= total for c in counts):
            raise InterpError(f"schedule counts must lie in 0..{total}; got {counts}.")
        rows = []
        with torch.no_grad():
            for n in progress_bar(counts, desc=f"{kind} ablation", progress=self.progress):
                if n == total:
                    out = fa[-1]
                elif kind == "node":
                    out = self._run_from(layer, self._ablate_nodes(layer, fa[layer], n))
                else:
                    out = self._run_from(layer + 1, self._ablate_edges(layer, fa[layer], n))
                rows.append(
                    {
                        "basis": self.basis,
                        "kind": kind,
                        "layer": layer,
                        "n_kept": n,
                        "score": score(out),
                    }
                )
        return pd.DataFrame(rows)

    def edges_required(
        self,
        x: Any,
        y: Any = None,
        *,
        layer: int,
        tolerance: float = 1e-3,
        metric: str | Callable[[Tensor, Tensor | None], float] = "accuracy",
    ) -> int:
        """Fewest edges from ``layer`` to ``layer + 1`` that keep the score within ``tolerance``.

        Bisection over the number of strongest edges kept (rib's ``bisect`` schedule, spec §2.5):
        the result ``n`` scores at least ``base - tolerance`` and ``n - 1`` does not (for a loss,
        lower is better: at most ``base + tolerance``). Edges of constant directions are always
        kept and not counted.
        """
        layer = self._check_layer(layer)
        self._check_edges()
        if layer == self.n_layers_ - 1:
            raise InterpError("Edges leave layers 0..n_layers_ - 2; the output has none.")
        xf = self._fold(0, x, "x")
        score = _metric(metric, y, len(xf))
        fa = self._folded_activations(xf[:, :-1])
        total = int(self.edge_mask(layer).sum())
        base = score(fa[-1])
        sign = -1.0 if metric == "loss" else 1.0

        def good(n: int) -> bool:
            if n == total:
                return True
            with torch.no_grad():
                out = self._run_from(layer + 1, self._ablate_edges(layer, fa[layer], n))
            return sign * (score(out) - base) >= -tolerance

        lo, hi = 0, total  # good(hi) holds
        if good(0):
            return 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if good(mid) else (mid, hi)
        return hi

    def _run_from(self, layer: int, f: Tensor) -> Tensor:
        return _compose(self.sections_[layer:])(f)

    def _order(self, layer: int) -> Tensor:
        """Directions by importance: the constant first, then by decreasing Lambda."""
        lam = self.lambdas_[layer].clone()
        const = self.constant_[layer]
        if const is not None:
            lam[const] = math.inf
        return torch.argsort(lam, descending=True, stable=True)

    def _ablate_nodes(self, layer: int, fa: Tensor, n: int) -> Tensor:
        mask = torch.zeros(self.kept_[layer], dtype=F64)
        mask[self._order(layer)[:n]] = 1
        return (fa @ self.C_[layer] * mask) @ self.C_pinv_[layer]

    def _ablate_edges(self, layer: int, fa: Tensor, n: int) -> Tensor:
        e = self.edges_[layer]
        free = self.edge_mask(layer, False)
        keep = ~free  # constant edges always kept
        ranked = torch.argsort(torch.where(free, e, -math.inf).reshape(-1), descending=True)
        keep.view(-1)[ranked[:n]] = True
        h = fa @ self.C_[layer]
        k_out = self.kept_[layer + 1]
        out = torch.empty(len(h), k_out, dtype=F64)
        fn = self._module_hat(layer)
        for i in range(k_out):  # output direction i sees only its kept inputs
            out[:, i] = fn(h * keep[i].to(F64))[:, i]
        return out @ self.C_pinv_[layer + 1]


def _node_key(name: str) -> tuple[int, int]:
    layer, direction = name.split(".")
    return int(layer[1:]), int(direction[1:])


def _edges_holding(values: Tensor, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise InterpError(f"fractions must lie in (0, 1]; got {fraction}.")
    total = values.sum()
    if values.numel() == 0 or total <= 0:
        return 0
    cumulative = torch.cumsum(torch.sort(values.reshape(-1), descending=True).values, 0)
    # the tiny slack keeps fraction=1 from failing on rounding in the last bits
    return int(torch.searchsorted(cumulative, fraction * total * (1 - 1e-12))) + 1


def _schedule(total: int, steps: int = 30) -> list[int]:
    counts = np.unique(np.round(np.geomspace(1, max(total, 1), steps)).astype(int))
    return sorted({0, *counts.tolist(), total})


def _metric(metric: Any, y: Any, n: int) -> Callable[[Tensor], float]:
    if callable(metric):
        return lambda out: float(metric(out, y))
    if metric not in ("accuracy", "loss"):
        raise InterpError(f"metric must be 'accuracy', 'loss' or a callable; got {metric!r}.")
    if y is None:
        raise InterpError(f"metric={metric!r} needs labels y; pass y or a callable metric.")
    labels = check_labels(y, n)
    if metric == "accuracy":
        return lambda out: float((out.argmax(-1) == labels).double().mean())
    return lambda out: float(nn.functional.cross_entropy(out, labels))


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


# -- transformer MLP sites ----------------------------------------------------------------------


class _MLPHidden(nn.Module):
    """``m{L}.in -> m{L}.post``: the block's MLP norm, input projection and activation."""

    def __init__(self, norm: nn.Module, up: nn.Module, act: Callable, gate: nn.Module | None):
        super().__init__()
        self.norm, self.up, self.gate = norm, up, gate
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        if self.gate is None:
            return self.act(self.up(h))
        return self.act(self.gate(h)) * self.up(h)


class _WithResidual(nn.Module):
    """``r -> [r, hidden(r)]`` (concatenated node layer) or ``[r, h] -> r + out(h)``."""

    def __init__(self, inner: nn.Module, d_model: int, into: bool) -> None:
        super().__init__()
        self.inner, self.d_model, self.into = inner, d_model, into

    def forward(self, x: Tensor) -> Tensor:
        if self.into:
            return torch.cat([x, self.inner(x)], dim=-1)
        return x[:, : self.d_model] + self.inner(x[:, self.d_model :])


def transformer_mlp(
    model: Any, prompts: Any, layer: int, *, residual: bool = False
) -> tuple[list[nn.Module], Tensor, list[str]]:
    """The MLP of one transformer block as sections for :meth:`InteractionBasis.fit`.

    Parameters
    ----------
    model : TransformerModel
        A loaded model (``interp.load_model``); GPT-2 style (``act(W_in x)``) and gated
        (``act(W_gate x) * W_in x``) MLPs after a norm, in sequential blocks.
    prompts : str or list of str or token tensor
        The data set: every (prompt, position) pair is one data point.
    layer : int
        The block.
    residual : bool
        ``False``: node layers ``m{L}.in`` (the MLP's input, before its norm), ``m{L}.post``
        (the hidden layer) and ``m{L}`` (the MLP's output). ``True``: the residual stream
        around the MLP, ``r{L}.mid``, then ``r{L}.mid`` and ``m{L}.post`` concatenated, then
        ``r{L}.post`` (the skip connection passes through the middle node layer).

    Returns
    -------
    sections : list of nn.Module
        Two sections (float64 copies of the model's modules), checked against the model's own
        activations at the sites on ``prompts``.
    x : tensor (prompts * positions, d_model), float64
        The first node layer's activations, one row per (prompt, position).
    sites : list of str
        The node layers' site names.

    Examples
    --------
    >>> from interp import load_model
    >>> sections, x, sites = transformer_mlp(load_model("tiny-gpt2"), ["Mary and John"], 0)
    >>> sites, tuple(x.shape)
    (['m0.in', 'm0.post', 'm0'], (4, 64))
    """
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "bridge"):
        raise InterpError(
            f"transformer_mlp needs a loaded transformer (interp.load_model); got "
            f"{type(model).__name__}."
        )
    if not 0 <= layer < spec.n_layers:
        raise InterpError(f"layer must be in 0..{spec.n_layers - 1}; got {layer}.")
    if spec.parallel_attn_mlp:
        raise InterpError("transformer_mlp needs sequential blocks (attention, then the MLP).")
    block = model.bridge.blocks[layer]
    mlp = block.mlp
    children = dict(mlp.named_children())
    original = getattr(mlp, "_original_component", None)
    act = getattr(original, "act", None) or getattr(original, "act_fn", None)
    if "in" not in children or "out" not in children or act is None:
        raise InterpError(
            f"Block {layer}'s MLP ({type(original).__name__}) has no in/out projections and "
            "activation that transformer_mlp recognises."
        )
    hidden = _MLPHidden(block.ln2, children["in"], act, children.get("gate"))
    sections: list[nn.Module] = [hidden, children["out"]]
    names = [f"m{layer}.in", f"m{layer}.post", f"m{layer}"]
    if residual:
        sections = [
            _WithResidual(hidden, spec.d_model, True),
            _WithResidual(children["out"], spec.d_model, False),
        ]
        names = [f"r{layer}.mid", f"r{layer}.mid+m{layer}.post", f"r{layer}.post"]
    sections = [copy.deepcopy(s).to(F64).eval().requires_grad_(False) for s in sections]
    sites = [f"r{layer}.mid", f"m{layer}.in", f"m{layer}.post", f"m{layer}", f"r{layer}.post"]
    _, cache = model.run_with_cache(prompts, sites)
    flat = {k: cache[k].reshape(-1, cache[k].shape[-1]).to(F64) for k in sites}
    x = flat[f"r{layer}.mid"] if residual else flat[f"m{layer}.in"]
    wanted = [flat[f"m{layer}.post"], flat[f"m{layer}"]]
    if residual:
        wanted = [torch.cat([x, wanted[0]], 1), flat[f"r{layer}.post"]]
    with torch.no_grad():
        got = sections[0](x)
        for k, (value, target) in enumerate(((got, wanted[0]), (sections[1](got), wanted[1]))):
            err = float((value - target).abs().max())
            if err > 1e-3 * (1 + float(target.abs().max())):
                raise InterpError(
                    f"transformer_mlp rebuilt block {layer}'s MLP but section {k} misses the "
                    f"model's activations at {names[k + 1]!r} by {err:.2g}; this architecture's "
                    "MLP is not supported. Pass your own sections to InteractionBasis.fit."
                )
    return sections, x, names
