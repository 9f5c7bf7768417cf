"""The linear algebra of the interaction basis: Jacobian Gram matrices and eigenbases.

Everything runs in float64; truncation thresholds are *relative* to the largest eigenvalue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from interp import progress_bar

from ._base import check_matrix
from ._interaction_sections import F64, Section

__all__ = ["jacobian_gram"]


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
