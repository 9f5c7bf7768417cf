"""Degeneracy diagnostics of a network on a data set (Bushnaq et al. 2024, arXiv 2405.10927, §3).

Three internal structures make parameters free (spec ``specs/interaction_basis.md`` §1.2):

1. **linearly dependent activations**: null directions of the activation Gram matrix
   ``G = E[f f^T]`` (biases folded: the constant 1 is a unit), from dead, constant and duplicated
   units;
2. **linearly dependent gradients**: null directions of the Jacobian Gram matrix
   ``M = E[J^T J]`` of the output with respect to a layer;
3. **synchronised nonlinearities**: groups of ReLUs that are on for exactly the same examples
   (``k`` of them act linearly as a block, ``k(k - 1)`` extra free directions).

Per weight matrix ``W`` (bias included) reading node layer ``l`` and writing the pre-activations
``p`` of the next, the Gauss-Newton Hessian of the behavioural loss has rank at most
``rank(M_p) * rank(G_l)``: the *degeneracy-corrected* parameter count, next to the raw count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from interp import InterpError

from ._interaction_sections import (
    F64,
    Section,
    _compose,
    _fold_model_and_data,
    _FoldedLinear,
    _forward,
)
from ._interaction_spectral import _eigh_desc, _keep, jacobian_gram

__all__ = ["DegeneracyReport", "degeneracy_report", "synchronised_groups"]


SYNC_COLUMNS = ("sync_groups", "sync_units", "largest_group", "sync_extra", "near_groups")


def _rank(vals: Tensor, tol: float) -> int:
    return int(_keep(vals, tol)[0].sum())


def synchronised_groups(firing: Any, *, hamming: float = 0.0, min_size: int = 2) -> list[list[int]]:
    """Groups of units whose firing patterns agree (exactly, or up to a Hamming distance).

    Parameters
    ----------
    firing : array-like of bool (N, units)
        ``firing[x, i]`` is true when unit i is on for example x (e.g. ``pre > 0``).
    hamming : float
        ``0`` groups identical columns. A positive value joins units whose patterns differ on at
        most ``hamming * N`` examples, and groups the connected components of that relation.
    min_size : int
        Smallest group reported.

    Units that never fire are left out (they are dead, a Gram-matrix degeneracy).

    Returns
    -------
    list of list of int
        Unit indices per group, largest group first.

    Examples
    --------
    >>> on = torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0], [1, 1, 1, 1]]).bool()
    >>> synchronised_groups(on)
    [[0, 1, 3]]
    >>> synchronised_groups(on, hamming=0.7)
    [[0, 1, 2, 3]]
    """
    p = torch.as_tensor(np.asarray(firing)).bool()
    if p.ndim != 2:
        raise InterpError(
            f"firing must be a 2-D (examples, units) array; got shape {tuple(p.shape)}."
        )
    if not 0 <= hamming < 1:
        raise InterpError(f"hamming is a fraction of the examples, in [0, 1); got {hamming}.")
    from scipy.sparse.csgraph import connected_components

    alive = torch.nonzero(p.any(0)).flatten().numpy()
    if not len(alive):
        return []
    q = p[:, alive].double()
    # Hamming distance between every pair of columns
    dist = q.T @ (1 - q) + (1 - q).T @ q
    linked = (dist <= hamming * len(p)).numpy()
    _, component = connected_components(linked, directed=False)
    found = [alive[component == c].tolist() for c in np.unique(component)]
    return sorted((g for g in found if len(g) >= min_size), key=lambda g: (-len(g), g[0]))


@dataclass
class DegeneracyReport:
    """The degeneracy diagnostics of a network on a data set; see :func:`degeneracy_report`.

    Attributes
    ----------
    frame : pandas.DataFrame
        One row per node layer (input, hidden layers, output). Columns: ``layer, width, gram_rank``
        (bias unit included), ``gram_null, dead, constant, duplicated, jacobian_rank,
        jacobian_null`` (the Jacobian of the output with respect to the layer, bias included),
        ``sync_groups, sync_units, largest_group, sync_extra`` (sum of ``k(k - 1)``),
        ``near_groups``; and for the weight matrix that reads the layer: ``params`` (raw count),
        ``pre_jacobian_rank`` (rank of ``M_p`` at its output) and ``params_bound``
        (``gram_rank * pre_jacobian_rank``; for a Linear without a bias, which does not read the
        constant unit, the rank of the layer's units alone replaces ``gram_rank``, so the bound
        never exceeds ``params``).
    gram_spectra, jacobian_spectra : list of tensors
        Eigenvalues (descending) per node layer.
    gram_null, jacobian_null : list of tensors
        Null directions per node layer, as columns (width + 1, nullity).
    groups, near_groups : list of list of list of int
        Synchronised ReLU groups per node layer (empty for the input and the output).
    tolerance : float
        The relative threshold of every rank.
    """

    frame: pd.DataFrame
    gram_spectra: list[Tensor] = field(repr=False)
    jacobian_spectra: list[Tensor] = field(repr=False)
    gram_null: list[Tensor] = field(repr=False)
    jacobian_null: list[Tensor] = field(repr=False)
    groups: list[list[list[int]]] = field(repr=False)
    near_groups: list[list[list[int]]] = field(repr=False)
    tolerance: float = 1e-10

    @property
    def params(self) -> int:
        """Raw parameter count of the weight matrices and biases."""
        return int(self.frame["params"].sum())

    @property
    def params_bound(self) -> int:
        """Degeneracy-corrected count: the sum of the per-matrix rank bounds."""
        return int(self.frame["params_bound"].sum())

    def plot(self, axes: Any = None) -> Any:
        """Three panels: Gram and Jacobian spectra, parameter counts, synchronised groups.

        Returns the matplotlib figure.
        """
        import matplotlib.pyplot as plt

        if axes is None:
            fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
        else:
            fig = axes[0].figure
        ax = axes[0]
        for layer, (g, j) in enumerate(zip(self.gram_spectra, self.jacobian_spectra, strict=True)):
            line = ax.semilogy(_normalised(g), label=f"G, layer {layer}")[0]
            if len(j):
                ax.semilogy(_normalised(j), ls="--", color=line.get_color())
        ax.axhline(self.tolerance, color="grey", lw=0.8)
        ax.set(
            xlabel="eigenvalue index",
            ylabel="eigenvalue / max",
            title="Gram (solid) and Jacobian (dashed) spectra",
        )
        ax.legend(fontsize=7)
        weights = self.frame.dropna(subset=["params"])
        pos = np.arange(len(weights))
        ax = axes[1]
        ax.bar(pos - 0.2, weights["params"], 0.4, label="raw")
        ax.bar(pos + 0.2, weights["params_bound"], 0.4, label="rank(G) rank(M)")
        ax.set_xticks(pos, [f"W{i}" for i in range(len(weights))])
        ax.set(ylabel="parameters", title="per weight matrix")
        ax.legend(fontsize=7)
        ax = axes[2]
        for layer, (groups, near) in enumerate(zip(self.groups, self.near_groups, strict=True)):
            ax.scatter(
                [layer] * len(groups),
                [len(g) for g in groups],
                color="C0",
                alpha=0.6,
                label="exact" if layer == 1 else None,
            )
            ax.scatter(
                [layer] * len(near),
                [len(g) for g in near],
                facecolors="none",
                edgecolors="C1",
                label="near" if layer == 1 else None,
            )
        if not any(self.groups) and not any(self.near_groups):
            ax.text(0.5, 0.5, "no groups of 2 or more", ha="center", transform=ax.transAxes)
        else:
            ax.legend(fontsize=7)
        ax.set(xlabel="node layer", ylabel="group size", title="synchronised ReLU groups")
        ax.set_xticks(range(len(self.groups)))
        fig.tight_layout()
        return fig


def _normalised(v: Tensor) -> np.ndarray:
    top = float(v.max()) if len(v) else 1.0
    return (v / (top if top > 0 else 1.0)).clamp_min(1e-300).numpy()


def _unit_stats(a: Tensor) -> tuple[int, int, int]:
    """Dead (always 0), constant (non-zero constant) and duplicated (a multiple of an earlier
    non-constant unit) units of activations ``a`` (N, width)."""
    span = a.max(0).values - a.min(0).values
    zero = (a == 0).all(0)
    const = (span == 0) & ~zero
    live = torch.nonzero(span > 0).flatten()
    duplicated = 0
    if len(live) > 1:
        u = a[:, live] / a[:, live].norm(dim=0)
        cos = (u.T @ u).abs()
        close = torch.triu(cos > 1 - 1e-12, 1)
        duplicated = int(close.any(0).sum())
    return int(zero.sum()), int(const.sum()), duplicated


def degeneracy_report(
    model: nn.Module | Sequence[Section],
    x: Any,
    *,
    tolerance: float = 1e-10,
    hamming: float = 0.01,
    n_sources: int | None = None,
    batch_size: int = 512,
    progress: bool | None = None,
) -> DegeneracyReport:
    """Degeneracy diagnostics of an MLP on a data set, per layer (see the module docstring).

    Parameters
    ----------
    model : nn.Sequential or sequence of callables
        What :meth:`InteractionBasis.fit <analysis.InteractionBasis.fit>` reads (see
        :func:`~analysis.fold_sections`): an MLP of ``Linear`` layers and parameter-free
        activations (ReLU for the synchronisation groups; a unit is "on" when its
        pre-activation is positive), or its sections. Copied to float64. A section that is
        neither a ``Linear`` nor an ``nn.Sequential`` starting with one has no weight matrix
        or pre-activations to read: the parameter columns of the layer it reads and the
        synchronisation columns of the layer it writes are missing (``<NA>``).
    x : array-like (N, d_0)
        The data set.
    tolerance : float
        Relative eigenvalue threshold of every rank (``eigenvalue > tolerance * max``).
    hamming : float
        Near-synchronised groups differ on at most this fraction of the examples.
    n_sources : int, optional
        Stochastic sources for the Jacobians of wide outputs (see
        :func:`~analysis.jacobian_gram`).

    Returns
    -------
    DegeneracyReport

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     net[0].weight[1] = net[0].weight[0]  # a duplicated unit
    ...     net[0].bias[1] = net[0].bias[0]
    >>> report = degeneracy_report(net, torch.randn(100, 3))
    >>> report.frame[["layer", "width", "gram_rank", "duplicated", "sync_groups"]]
       layer  width  gram_rank  duplicated  sync_groups
    0      0      3          4           0            0
    1      1      4          4           1            1
    2      2      2          2           0            0
    """
    sections, x = _fold_model_and_data(model, x)
    n = len(x)
    folded = _forward(sections, x)
    with torch.no_grad():
        # pre-activations of the sections that have them (a Linear, then activations)
        pres = [
            s.pre(f) if isinstance(s, _FoldedLinear) else None
            for s, f in zip(sections, folded[:-1], strict=True)
        ]
    n_layers = len(folded)
    rows = []
    gram_spectra, jac_spectra, gram_null, jac_null = [], [], [], []
    groups_all, near_all = [], []

    for layer in range(n_layers):
        fa = folded[layer]
        last = layer == n_layers - 1
        raw = fa if last else fa[:, :-1]
        vals, vecs = _eigh_desc(fa.T @ fa / n)
        g_rank = _rank(vals, tolerance)
        gram_spectra.append(vals)
        gram_null.append(vecs[:, g_rank:])
        dead, const, dup = _unit_stats(raw)
        row: dict[str, Any] = {
            "layer": layer,
            "width": raw.shape[1],
            "gram_rank": g_rank,
            "gram_null": fa.shape[1] - g_rank,
            "dead": dead,
            "constant": const,
            "duplicated": dup,
        }
        if last:
            jac_spectra.append(torch.zeros(0, dtype=F64))
            jac_null.append(torch.zeros(fa.shape[1], 0, dtype=F64))
            row.update(jacobian_rank=np.nan, jacobian_null=np.nan)
        else:
            m = jacobian_gram(
                _compose(sections[layer:]),
                fa,
                n_sources=n_sources,
                batch_size=batch_size,
                progress=progress,
            )
            jv, jvecs = _eigh_desc(m)
            j_rank = _rank(jv, tolerance)
            jac_spectra.append(jv)
            jac_null.append(jvecs[:, j_rank:])
            row.update(jacobian_rank=j_rank, jacobian_null=fa.shape[1] - j_rank)
        groups, near = [], []
        if 0 < layer < n_layers - 1 and pres[layer - 1] is not None:
            on = pres[layer - 1] > 0
            groups = synchronised_groups(on)
            near = synchronised_groups(on, hamming=hamming) if hamming > 0 else groups
        groups_all.append(groups)
        near_all.append(near)
        if 0 < layer < n_layers - 1 and pres[layer - 1] is None:
            row.update(dict.fromkeys(SYNC_COLUMNS, np.nan))
        else:
            row.update(
                sync_groups=len(groups),
                sync_units=sum(len(g) for g in groups),
                largest_group=max((len(g) for g in groups), default=0),
                sync_extra=sum(len(g) * (len(g) - 1) for g in groups),
                near_groups=len(near),
            )
        if last or pres[layer] is None:
            row.update(params=np.nan, pre_jacobian_rank=np.nan, params_bound=np.nan)
        else:
            s, tail = sections[layer], _compose(sections[layer + 1 :])

            def from_pre(p: Tensor, s: _FoldedLinear = s, tail=tail) -> Tensor:
                return tail(s.post(p[:, :-1], p[:, -1:]))

            pre = torch.cat([pres[layer], fa[:, -1:]], dim=1)
            mp = jacobian_gram(
                from_pre, pre, n_sources=n_sources, batch_size=batch_size, progress=progress
            )[:-1, :-1]
            p_rank = _rank(_eigh_desc(mp)[0], tolerance)
            # a Linear without a bias does not read the constant unit: rank of the units alone
            read_rank = g_rank if s.has_bias else _rank(_eigh_desc(raw.T @ raw / n)[0], tolerance)
            row.update(params=s.n_params, pre_jacobian_rank=p_rank, params_bound=read_rank * p_rank)
        rows.append(row)
    frame = pd.DataFrame(rows)
    missing = ("jacobian_rank", "jacobian_null", "params", "pre_jacobian_rank", "params_bound")
    for col in missing + SYNC_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    return DegeneracyReport(
        frame, gram_spectra, jac_spectra, gram_null, jac_null, groups_all, near_all, tolerance
    )
