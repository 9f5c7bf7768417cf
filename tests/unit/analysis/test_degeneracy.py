"""Degeneracy diagnostics on a network built to have every kind of degeneracy (spec §1.2)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis import InteractionBasis, degeneracy_report, synchronised_groups
from interp import InterpError

matplotlib.use("Agg")
F64 = torch.float64
N = 200


def built():
    """Inputs: x0 = ±U[1, 2], x1 = U[-0.5, 0.5], x2 = 0 but -5 once, x3 = 0.5 (constant), x4 = 0.

    Hidden units (pre-activations): u0 = x0, u1 = x0 + x1, u2 = 2 x0 - x1 fire together;
    u3 = x0 + x2 differs from them on one example; u5 = x1 + 0.3 and its double u4 = 2 u5 fire
    together; u6 never fires.
    """
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(N, 5, dtype=F64)
    x[:, 0] = (1 + torch.rand(N, generator=g, dtype=F64)) * torch.where(
        torch.rand(N, generator=g) < 0.5, -1.0, 1.0
    ).to(F64)
    x[0, 0] = 1.5
    x[:, 1] = torch.rand(N, generator=g, dtype=F64) - 0.5
    x[0, 2] = -5
    x[:, 3] = 0.5
    w1 = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [2, -1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [0, 2, 0, 0, 0],
            [0, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=F64,
    )
    b1 = torch.tensor([0, 0, 0, 0, 0.6, 0.3, -10], dtype=F64)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    with torch.no_grad():
        net[0].weight.copy_(w1)
        net[0].bias.copy_(b1)
        net[2].weight.copy_(torch.randn(3, 7, generator=g, dtype=F64))
        net[2].bias.copy_(torch.randn(3, generator=g, dtype=F64))
    return net, x


def rank(m: np.ndarray, tol: float = 1e-10) -> int:
    vals = np.abs(np.linalg.eigvalsh(m))
    return int((vals > tol * vals.max()).sum())


def test_report_on_a_network_built_to_be_degenerate() -> None:
    net, x = built()
    report = degeneracy_report(net, x, hamming=0.01)
    frame = report.frame.set_index("layer")
    # synchronised groups, exactly and up to one example in N = 200
    assert report.groups[1] == [[0, 1, 2], [4, 5]]
    assert report.near_groups[1] == [[0, 1, 2, 3], [4, 5]]
    assert frame.loc[1, "sync_extra"] == 3 * 2 + 2 * 1
    assert frame.loc[1, "largest_group"] == 3
    assert report.groups[0] == report.groups[2] == []
    # unit statistics
    assert (frame.loc[0, "dead"], frame.loc[0, "constant"]) == (1, 1)
    assert (frame.loc[1, "dead"], frame.loc[1, "duplicated"]) == (1, 1)
    # ranks against brute-force float64 references
    w1, b1 = net[0].weight.detach(), net[0].bias.detach()
    w2, b2 = net[2].weight.detach(), net[2].bias.detach()
    ones = torch.ones(N, 1, dtype=F64)
    f0 = torch.cat([x, ones], 1)
    pre = x @ w1.T + b1
    f1 = torch.cat([torch.relu(pre), ones], 1)
    g0, g1 = (f0.T @ f0 / N).numpy(), (f1.T @ f1 / N).numpy()
    assert frame.loc[0, "gram_rank"] == rank(g0) == 4  # zero and constant pixel drop out
    # u2 = 2 u0 - u1, u4 = 2 u5 and u6 = 0 on the data; u3 and the bias stay independent
    assert frame.loc[1, "gram_rank"] == rank(g1) == 5
    on = (pre > 0).to(F64)
    wb2 = torch.cat([w2, b2[:, None]], 1)
    j1 = wb2.expand(N, 3, 8)
    j0 = torch.einsum("oh,nh,hi->noi", w2, on, torch.cat([w1, b1[:, None]], 1))
    m1 = torch.einsum("noi,noj->ij", j1, j1).numpy() / N
    m0 = torch.einsum("noi,noj->ij", j0, j0).numpy() / N
    assert frame.loc[1, "jacobian_rank"] == rank(m1) == 3
    assert frame.loc[0, "jacobian_rank"] == rank(m0)
    jp = torch.einsum("oh,nh->noh", w2, on)  # d output / d pre-activation of layer 1
    mp = torch.einsum("noi,noj->ij", jp, jp).numpy() / N
    assert frame.loc[0, "pre_jacobian_rank"] == rank(mp)
    assert frame.loc[0, "params"] == 7 * 5 + 7
    assert frame.loc[0, "params_bound"] == rank(g0) * rank(mp)
    assert frame.loc[1, "params_bound"] == rank(g1) * 3
    assert report.params == 42 + 24
    assert report.params_bound == rank(g0) * rank(mp) + rank(g1) * 3
    # the null directions really are null
    null = report.gram_null[0]
    assert null.shape == (6, 2)
    assert float((f0 @ null).abs().max()) < 1e-12


def test_plot() -> None:
    net, x = built()
    fig = degeneracy_report(net, x).plot()
    assert [ax.get_title() for ax in fig.axes][1:] == [
        "per weight matrix",
        "synchronised ReLU groups",
    ]
    assert len(fig.axes[1].patches) == 2 * 2  # raw and bound bars for two weight matrices


def test_synchronised_groups_are_not_removed_by_the_interaction_basis() -> None:
    """Type 3 degeneracy is the diagnostic's job: the basis keeps the group's directions.

    Ten outputs, so the output count does not bound ``kept_``; the outputs ignore u3, so the
    Jacobian rank (4) is below the Gram rank (5) and ``kept_[1]`` is neither.
    """
    net, x = built()
    g = torch.Generator().manual_seed(2)
    wide = nn.Sequential(net[0], nn.ReLU(), nn.Linear(7, 10)).double()
    w2 = torch.randn(10, 7, generator=g, dtype=F64)
    w2[:, 3] = 0
    b2 = torch.randn(10, generator=g, dtype=F64)
    with torch.no_grad():
        wide[2].weight.copy_(w2)
        wide[2].bias.copy_(b2)
    ib = InteractionBasis(edges=False).fit(wide, x)
    # layer 1: whitened Jacobian Gram = the output map restricted to the Gram range
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    xn = x.numpy()
    pre = xn @ w1.T + b1
    f1 = np.concatenate([np.maximum(pre, 0), np.ones((N, 1))], 1)
    u1 = range_of(f1.T @ f1 / N)
    wb2 = np.concatenate([w2.numpy(), b2.numpy()[:, None]], 1)
    expected1 = rank(u1.T @ wb2.T @ wb2 @ u1)
    assert (expected1, rank(f1.T @ f1 / N)) == (4, 5)
    assert ib.kept_[1] == expected1
    # layer 0: Jacobians of the first section onto layer 1's kept span
    f0 = np.concatenate([xn, np.ones((N, 1))], 1)
    u0 = range_of(f0.T @ f0 / N)
    wb1 = np.concatenate([w1, b1[:, None]], 1)
    j0 = np.zeros((N, 8, 6))
    j0[:, :7] = (pre > 0)[:, :, None] * wb1
    j0[:, 7, 5] = 1
    v1 = range_of(u1.T @ wb2.T @ wb2 @ u1)  # the kept directions of layer 1, in u1 coordinates
    proj = u1 @ v1
    m0 = np.einsum("nji,jk,kl,nlm->im", j0, proj, proj.T, j0) / N
    assert ib.kept_[0] == rank(u0.T @ m0 @ u0)
    report = degeneracy_report(wide, x)
    assert report.frame.loc[1, "sync_groups"] == 2
    assert report.groups[1] == [[0, 1, 2], [4, 5]]


def range_of(m: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    vals, vecs = np.linalg.eigh(m)
    return vecs[:, np.abs(vals) > tol * np.abs(vals).max()]


def test_bias_free_network_bound_never_exceeds_the_raw_count() -> None:
    """Without a bias the weight matrix does not read the constant unit (rank of G without it)."""
    g = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    net = net.double()
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(6, 4, generator=g, dtype=F64))
        net[0].weight[5] = net[0].weight[4]  # a duplicated hidden unit
        net[2].weight.copy_(torch.randn(3, 6, generator=g, dtype=F64))
    x = torch.randn(300, 4, generator=g, dtype=F64)
    x[:, 3] = x[:, 0]  # a duplicated input
    report = degeneracy_report(net, x)
    frame = report.frame
    w1, w2 = net[0].weight.detach().numpy(), net[2].weight.detach().numpy()
    xn = x.numpy()
    pre = xn @ w1.T
    h = np.maximum(pre, 0)
    jp = w2[None] * (pre > 0)[:, None, :]  # d output / d pre-activation of layer 1
    mp = np.einsum("noi,noj->ij", jp, jp) / len(xn)
    bounds = [rank(xn.T @ xn) * rank(mp), rank(h.T @ h) * rank(w2.T @ w2)]
    assert bounds == [3 * 6, 5 * 3]
    assert list(frame.params_bound[:2]) == bounds
    assert list(frame.params[:2]) == [24, 18]
    assert report.params_bound == sum(bounds) <= report.params
    # gram_rank still describes the node layer, constant unit included
    assert list(frame.gram_rank) == [4, 6, 3]


def test_synchronised_groups_brute_force() -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.rand(30, 4, generator=g) > 0.5
    firing = base[:, [0, 1, 0, 2, 1, 0, 3]]  # units 0, 2, 5 and 1, 4 share patterns
    firing[:, 3] = False  # a dead unit is not a group
    assert synchronised_groups(firing) == [[0, 2, 5], [1, 4]]
    flipped = firing.clone()
    flipped[0, 2] = ~flipped[0, 2]
    assert synchronised_groups(flipped) == [[0, 5], [1, 4]]
    assert synchronised_groups(flipped, hamming=1 / 30) == [[0, 2, 5], [1, 4]]


def test_errors() -> None:
    net, x = built()
    with pytest.raises(InterpError, match="nn.Sequential"):
        degeneracy_report(nn.Conv1d(1, 1, 1), x)
    with pytest.raises(InterpError, match="features"):
        degeneracy_report(net, x[:, :3])
    with pytest.raises(InterpError, match="hamming"):
        synchronised_groups(np.ones((3, 2), dtype=bool), hamming=1.5)


def test_accepts_the_sections_interaction_basis_accepts() -> None:
    net, x = built()
    whole = degeneracy_report(net, x).frame
    # the same network as a list of sections (what InteractionBasis.fit also takes)
    listed = degeneracy_report([net[:2], net[2]], x).frame
    pd.testing.assert_frame_equal(listed, whole)
    # a section that is any callable has no weight matrix or pre-activations to read
    relu_linear, last = net[:2], net[2]
    report = degeneracy_report([lambda f: relu_linear(f), last], x)
    frame = report.frame.set_index("layer")
    shared = ["width", "gram_rank", "gram_null", "dead", "constant", "duplicated"]
    pd.testing.assert_frame_equal(frame[shared], whole.set_index("layer")[shared])
    assert frame.loc[:1, "jacobian_rank"].tolist() == whole.jacobian_rank[:2].tolist()
    assert pd.isna(frame.loc[0, "params"]) and pd.isna(frame.loc[1, "sync_groups"])
    assert frame.loc[1, "params"] == whole.params[1]  # the Linear section is still counted
    assert report.groups[1] == []
    InteractionBasis().fit([lambda f: relu_linear(f), last], x)  # the same inputs
