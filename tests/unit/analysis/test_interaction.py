"""The interaction basis against the properties of spec §3 (float64, hand-built networks).

Every reference here is written independently of ``analysis._interaction``: the forward pass with
folded biases, the Jacobians of ReLU sections (``diag(relu') [W, b]``), Newman's Q and the
edge-mass counts are re-derived in the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis import (
    InteractionBasis,
    NotFittedError,
    compare_bases,
    jacobian_gram,
    neuron_basis,
    pca_basis,
    transformer_mlp,
)
from interp import InterpError, ShapeError

F64 = torch.float64


def relu_net(widths=(6, 8, 7, 4), seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double()


def data(n=1500, d=6, seed=1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) + 0.3


def weights(net):
    return [(m.weight.detach(), m.bias.detach()) for m in net if isinstance(m, nn.Linear)]


def folded_forward(params, x, act=torch.relu):
    """Folded activations [f, 1] of every node layer; the output has no constant."""
    ones = torch.ones(len(x), 1, dtype=F64)
    acts, f = [], x
    for k, (w, b) in enumerate(params):
        acts.append(torch.cat([f, ones], 1))
        z = f @ w.T + b
        f = act(z) if k < len(params) - 1 else z
    acts.append(f)
    return acts


def section_jacobians(params, fa, k):
    """d(folded layer k+1)/d(folded layer k) for ReLU sections: (N, out, in)."""
    w, b = params[k]
    wb = torch.cat([w, b[:, None]], 1)
    if k == len(params) - 1:
        return wb.expand(len(fa), *wb.shape)
    z = fa[:, :-1] @ w.T + fa[:, -1:] * b
    mask = (z > 0).to(F64)
    top = mask[:, :, None] * wb
    bottom = torch.zeros(len(fa), 1, wb.shape[1], dtype=F64)
    bottom[:, 0, -1] = 1
    return torch.cat([top, bottom], 1)


def align(a, b):
    """Columns of ``a`` with signs flipped to agree with ``b``."""
    return a * torch.sign((a * b).sum(0))


def close(a, b, rtol=1e-8):
    scale = max(float(b.abs().max()), 1e-300)
    assert float((a - b).abs().max()) <= rtol * scale, float((a - b).abs().max()) / scale


@pytest.fixture(scope="module")
def toy():
    net = relu_net()
    x = data()
    return net, x, weights(net), folded_forward(weights(net), x)


@pytest.mark.parametrize("centre", [False, True])
def test_p1_basis_diagonalises_the_gram(toy, centre) -> None:
    net, x, _, fa = toy
    ib = InteractionBasis(centre=centre, edges=False).fit(net, x)
    for layer in range(3):
        f_hat = fa[layer] @ ib.C_[layer]
        gram = f_hat.T @ f_hat / len(x)
        lam = ib.lambdas_[layer]
        close(gram, torch.diag(lam), 1e-10)
        rest = lam[1:] if centre else lam
        assert bool((rest[:-1] >= rest[1:]).all())
        # transform appends the constant itself
        close(ib.transform(layer, fa[layer][:, :-1]), f_hat, 1e-14)


def test_p2_basis_whitens_the_jacobian_gram(toy) -> None:
    net, x, params, fa = toy
    for jacobian in ("next", "output"):
        ib = InteractionBasis(jacobian=jacobian, edges=False).fit(net, x)
        for layer in range(3):
            j = section_jacobians(params, fa[layer], layer)
            for k in range(layer + 1, 3 if jacobian == "output" else layer + 1):
                j = section_jacobians(params, fa[k], k) @ j
            target = 3 if jacobian == "output" else layer + 1
            j_hat = ib.C_[target].T @ j @ ib.C_pinv_[layer].T  # d f_hat^{target} / d f_hat^l
            m = torch.einsum("nij,nik->jk", j_hat, j_hat) / len(x)
            close(m, torch.eye(ib.kept_[layer], dtype=F64), 1e-9)
            if jacobian == "next":
                close(ib.jacobians(layer, fa[layer][:, :-1]), j_hat, 1e-9)


def insert_map(params, a):
    """Sections of the network with the invertible map ``a`` inserted at node layer 1."""
    (w0, b0), (w1, b1), (w2, b2) = params
    a_inv = torch.linalg.inv(a)
    return [
        lambda f: torch.relu(f @ w0.T + b0) @ a.T,
        lambda g: torch.relu((g @ a_inv.T) @ w1.T + b1),
        lambda h: h @ w2.T + b2,
    ]


@pytest.mark.parametrize("centre", [False, True])
def test_p3_invariance_to_an_inserted_linear_map(toy, centre) -> None:
    net, x, params, fa = toy
    g = torch.Generator().manual_seed(3)
    a = torch.randn(8, 8, generator=g, dtype=F64) * 3 + torch.eye(8, dtype=F64)
    ib = InteractionBasis(centre=centre, edges=False).fit(net, x)
    ib_a = InteractionBasis(centre=centre, edges=False).fit(insert_map(params, a), x)
    assert ib.kept_ == ib_a.kept_
    for layer in range(4):
        acts = fa[layer][:, :-1] if layer < 3 else fa[layer]
        moved = acts @ a.T if layer == 1 else acts
        if layer == 1:  # the raw activations really differ
            assert float((moved - acts).abs().max()) > 1
        f_hat, f_hat_a = ib.transform(layer, acts), ib_a.transform(layer, moved)
        close(align(f_hat_a, f_hat), f_hat, 1e-8)
        close(ib_a.lambdas_[layer], ib.lambdas_[layer], 1e-9)


def grown(params, w_new, b_new, out_col):
    """A hidden unit added to the first hidden layer: (w_new, b_new) in, ``out_col`` out."""
    (w0, b0), (w1, b1), (w2, b2) = params
    net = relu_net((6, 9, 7, 4))
    with torch.no_grad():
        net[0].weight.copy_(torch.cat([w0, w_new[None]]))
        net[0].bias.copy_(torch.cat([b0, b_new[None]]))
        net[2].weight.copy_(torch.cat([w1, out_col[:, None]], 1))
        net[2].bias.copy_(b1)
        net[4].weight.copy_(w2)
        net[4].bias.copy_(b2)
    return net


def same_basis_outputs(ib, ib2, fa, fa2) -> None:
    assert ib.kept_ == ib2.kept_
    for layer in range(4):
        a, a2 = (fa[layer], fa2[layer]) if layer == 3 else (fa[layer][:, :-1], fa2[layer][:, :-1])
        f_hat = ib.transform(layer, a)
        close(align(ib2.transform(layer, a2), f_hat), f_hat, 1e-8)
        close(ib2.lambdas_[layer], ib.lambdas_[layer], 1e-9)


def test_p4_duplicated_neuron_leaves_the_basis_unchanged(toy) -> None:
    net, x, params, fa = toy
    (w0, b0), (w1, _), _ = params
    k = 2
    w1_split = w1.clone()
    w1_split[:, k] *= 0.3
    net2 = grown([(w0, b0), (w1_split, params[1][1]), params[2]], w0[k], b0[k], 0.7 * w1[:, k])
    fa2 = folded_forward(weights(net2), x)
    ib = InteractionBasis(edges=False).fit(net, x)
    ib2 = InteractionBasis(edges=False).fit(net2, x)
    torch.testing.assert_close(net2(x), net(x))
    assert ib2.gram_rank_[1] == ib.gram_rank_[1] == 9  # width 9 + bias, but rank 9
    same_basis_outputs(ib, ib2, fa, fa2)


def test_p5_zero_gradient_and_dead_units_are_dropped(toy) -> None:
    net, x, params, fa = toy
    g = torch.Generator().manual_seed(5)
    w_new = torch.randn(6, generator=g, dtype=F64)
    ib = InteractionBasis(edges=False).fit(net, x)
    # an active unit nothing reads: the Gram rank grows, the basis does not
    silent = grown(params, w_new, torch.tensor(2.0, dtype=F64), torch.zeros(7, dtype=F64))
    ib_silent = InteractionBasis(edges=False).fit(silent, x)
    assert ib_silent.gram_rank_[1] == ib.gram_rank_[1] + 1
    same_basis_outputs(ib, ib_silent, fa, folded_forward(weights(silent), x))
    # a unit that never fires: dropped at the Gram step
    dead = grown(
        params, torch.zeros(6, dtype=F64), torch.tensor(-1.0, dtype=F64), torch.ones(7, dtype=F64)
    )
    ib_dead = InteractionBasis(edges=False).fit(dead, x)
    assert ib_dead.gram_rank_[1] == ib.gram_rank_[1]
    same_basis_outputs(ib, ib_dead, fa, folded_forward(weights(dead), x))


def test_p6_deep_linear_network_has_diagonal_edges() -> None:
    torch.manual_seed(6)
    net = nn.Sequential(*[nn.Linear(5, 5) for _ in range(3)], nn.Linear(5, 3)).double()
    x = data(800, 5, seed=6) @ torch.diag(torch.tensor([3.0, 2, 1.5, 1, 0.5], dtype=F64))
    ib = InteractionBasis().fit(net, x)
    for layer in range(3):  # not the edge into the unrotated output
        e = ib.edges_[layer]
        off = e - torch.diag(torch.diagonal(e))
        assert float(off.abs().max()) <= 1e-10 * float(e.max())
        close(torch.diagonal(e), ib.lambdas_[layer], 1e-9)
        close(ib.lambdas_[layer + 1], ib.lambdas_[layer], 1e-9)


def test_p7_integrated_gradient_completeness(toy) -> None:
    net, x, params, fa = toy
    ib = InteractionBasis(centre=True, edges=False).fit(net, x)
    for layer in range(3):
        a = ib.attributions(layer, fa[layer][:200, :-1])
        # the next layer's activations, from the hand-written forward pass
        close(a.sum(-1), fa[layer + 1][:200] @ ib.C_[layer + 1], 1e-10)
    # the gradient rule equals integrated gradients (Riemann sum over alpha) for ReLU sections
    h = (fa[1][:5] @ ib.C_[1]).requires_grad_(False)
    w, b = params[1]

    def module_hat(v):  # rib's f_hat^1 -> f_hat^2, integrated from 0 along alpha * f_hat
        f = v @ ib.C_pinv_[1]
        return torch.cat([torch.relu(f[:, :-1] @ w.T + f[:, -1:] * b), f[:, -1:]], 1) @ ib.C_[2]

    alphas = (torch.arange(400, dtype=F64) + 0.5) / 400
    ig = torch.zeros(5, ib.kept_[2], ib.kept_[1], dtype=F64)
    for alpha in alphas:
        jac = torch.autograd.functional.jacobian(lambda v: module_hat(v).sum(0), alpha * h)
        ig += jac.permute(1, 0, 2) * h[:, None, :] / len(alphas)
    close(ib.attributions(1, fa[1][:5, :-1]), ig, 1e-9)


def test_p8_rank_bounds() -> None:
    # one-hot pairs: both halves sum to the bias unit, so the input Gram has rank 2p - 1
    p = 5
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    eye = torch.eye(p, dtype=F64)
    x = torch.cat([eye[a.reshape(-1)], eye[b.reshape(-1)]], 1)
    net = relu_net((2 * p, 12, 3), seed=8)
    ib = InteractionBasis(edges=False).fit(net, x)
    assert ib.gram_rank_[0] == 2 * p - 1
    assert ib.kept_[0] <= ib.gram_rank_[0]
    assert ib.kept_[1] <= 3  # last hidden layer into an unrotated 3-logit read-out
    centred = InteractionBasis(centre=True, edges=False).fit(net, x)
    assert centred.kept_[1] <= 3 + 1  # plus the constant direction
    assert centred.gram_rank_[0] == 2 * p - 2  # the centred one-hot halves lose one each


def test_p9_rotating_the_final_layer_changes_only_the_last_edges(toy) -> None:
    net, x, _, fa = toy
    ib = InteractionBasis().fit(net, x)
    rot = InteractionBasis(rotate_final=True).fit(net, x)
    vecs = rot.C_[3]
    close(vecs.T @ vecs, torch.eye(4, dtype=F64), 1e-12)
    for layer in range(3):
        close(
            align(rot.transform(layer, fa[layer][:, :-1]), ib.transform(layer, fa[layer][:, :-1])),
            ib.transform(layer, fa[layer][:, :-1]),
            1e-8,
        )
    for layer in range(2):
        close(rot.edges_[layer], ib.edges_[layer], 1e-8)


def test_p10_centring(toy) -> None:
    net, x, _, fa = toy
    ib = InteractionBasis(centre=True, edges=False).fit(net, x)
    for layer in range(3):
        assert ib.constant_[layer] == 0
        mean = fa[layer][:, :-1].mean(0)
        row0 = ib.C_pinv_[layer][0]
        close(row0 / row0[-1], torch.cat([mean, torch.ones(1, dtype=F64)]), 1e-10)
        assert float(ib.C_pinv_[layer][1:, -1].abs().max()) == 0  # no other bias component
        f_hat = ib.transform(layer, fa[layer][:, :-1])
        assert float(f_hat[:, 0].std()) <= 1e-12 * float(f_hat[:, 0].abs().mean())
        assert float(f_hat[:, 1:].mean(0).abs().max()) <= 1e-10 * float(f_hat[:, 1:].std(0).min())


def test_p11_jacobian_gram_exact_and_stochastic() -> None:
    g = torch.Generator().manual_seed(11)
    w = torch.randn(20, 6, generator=g, dtype=F64)
    x = torch.randn(60, 6, generator=g, dtype=F64)

    def fn(v):
        return torch.tanh(v @ w.T)

    brute = torch.zeros(6, 6, dtype=F64)
    for row in x:
        j = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], row)
        brute += j.T @ j / len(x)
    close(jacobian_gram(fn, x, batch_size=7), brute, 1e-12)
    errors = []
    for sources in (2, 16, 128):
        errs = [
            float((jacobian_gram(fn, x, n_sources=sources, seed=s) - brute).norm())
            for s in range(4)
        ]
        errors.append(np.mean(errs))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.2 * float(brute.norm())


def test_p12_ablations_against_a_hand_written_forward(toy) -> None:
    net, x, params, fa = toy
    y = net(x).argmax(-1)
    ib = InteractionBasis(centre=True).fit(net, x)

    def run_from(layer, f):
        for k in range(layer, 3):
            w, b = params[k]
            z = f[:, :-1] @ w.T + f[:, -1:] * b
            f = z if k == 2 else torch.cat([torch.relu(z), f[:, -1:]], 1)
        return f

    nodes = ib.ablation_curve(x, y, layer=1, schedule=[1, 3, ib.kept_[1]])
    assert nodes.score.iloc[-1] == 1.0
    for n, score in zip(nodes.n_kept[:2], nodes.score[:2], strict=True):
        h = fa[1] @ ib.C_[1]
        h[:, n:] = 0  # the smallest Lambdas go first; the constant is index 0
        out = run_from(1, h @ ib.C_pinv_[1])
        assert score == float((out.argmax(-1) == y).double().mean())
    # edges: output direction i of layer 1 only sees its n strongest inputs (plus the constant)
    edges = ib.ablation_curve(x, y, layer=0, kind="edge", schedule=[5], metric="loss")
    e = ib.edges_[0][1:, 1:]  # the constant directions' edges are always kept
    threshold = torch.sort(e.reshape(-1), descending=True).values[4]
    keep = torch.ones_like(ib.edges_[0], dtype=torch.bool)
    keep[1:, 1:] = e >= threshold
    h = fa[0] @ ib.C_[0]
    w, b = params[0]
    out = torch.empty(len(x), ib.kept_[1], dtype=F64)
    for i in range(ib.kept_[1]):
        f = (h * keep[i]) @ ib.C_pinv_[0]
        nxt = torch.cat([torch.relu(f[:, :-1] @ w.T + f[:, -1:] * b), f[:, -1:]], 1)
        out[:, i] = (nxt @ ib.C_[1])[:, i]
    loss = nn.functional.cross_entropy(run_from(1, out @ ib.C_pinv_[1]), y)
    assert math.isclose(edges.score.iloc[0], float(loss), rel_tol=1e-10)


def test_edges_required_bisects_to_a_boundary(toy) -> None:
    net, x, _, _ = toy
    y = net(x).argmax(-1)
    ib = InteractionBasis(centre=True).fit(net, x)
    n = ib.edges_required(x, y, layer=1, tolerance=0.01)
    curve = ib.ablation_curve(x, y, layer=1, kind="edge", schedule=[n - 1, n])
    assert curve.score.iloc[1] >= 1.0 - 0.01 > curve.score.iloc[0]
    assert 0 < n < int(ib.edge_mask(1).sum())


def test_graph_concentration_and_modularity_on_two_independent_halves() -> None:
    torch.manual_seed(12)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4)).double()
    with torch.no_grad():  # two networks side by side
        net[0].weight[:3, 4:] = 0
        net[0].weight[3:, :4] = 0
        net[2].weight[:2, 3:] = 0
        net[2].weight[2:, :3] = 0
    x = data(600, 8, seed=12) * torch.linspace(0.5, 2.0, 8, dtype=F64)
    ib = InteractionBasis(centre=True).fit(net, x)
    graph = ib.to_graph()
    assert len(graph.nodes) == sum(ib.kept_)
    assert len(graph.edges) == sum(a * b for a, b in zip(ib.kept_[:-1], ib.kept_[1:], strict=True))
    i, j = 2, 1
    assert graph.edges[f"L0.d{j}->L1.d{i}"].score == float(ib.edges_[0][i, j])
    modules = ib.modularity()

    def half(name):  # which half a direction lives in, read off its column of C
        layer, d = (int(s[1:]) for s in name.split("."))
        c = ib.C_[layer][:, d]
        if layer == 2:
            return int(c[2:].abs().sum() > c[:2].abs().sum())
        width = ib.widths_[layer] // 2
        return int(c[width:-1].abs().sum() > c[:width].abs().sum())

    for community in modules.communities:
        assert len({half(n) for n in community}) == 1
    # Newman's Q, from the adjacency matrix
    names = [n for c in modules.communities for n in c]
    index = {n: k for k, n in enumerate(names)}
    adj = np.zeros((len(names), len(names)))
    for layer, e in enumerate(ib.edges_):
        for a in range(e.shape[0]):
            for b in range(e.shape[1]):
                src, dst = f"L{layer}.d{b}", f"L{layer + 1}.d{a}"
                if src in index and dst in index:
                    adj[index[src], index[dst]] = adj[index[dst], index[src]] = float(e[a, b])
    k, two_m = adj.sum(1), adj.sum()
    same = np.array(
        [[modules.assignment[p] == modules.assignment[q] for q in names] for p in names]
    )
    q = ((adj - np.outer(k, k) / two_m) * same).sum() / two_m
    assert math.isclose(modules.q, q, rel_tol=1e-9)
    assert modules.q > 0.45
    # edge-mass concentration, by brute force
    frame = ib.edge_concentration((0.5, 0.9))
    for layer, row in frame.iterrows():
        e = ib.edges_[layer][:, 1:]  # no edges of the constant direction; the output has none
        values = np.sort((e[1:] if layer == 0 else e).numpy().ravel())[::-1]
        share = np.cumsum(values) / values.sum()
        assert row["edges_50%"] == int(np.argmax(share >= 0.5)) + 1
        assert row["edges_90%"] == int(np.argmax(share >= 0.9)) + 1
        assert row["n_edges"] == values.size


def test_baselines_and_comparison(toy) -> None:
    net, x, _, fa = toy
    pca = pca_basis(net, x, centre=True)
    cov = torch.cov(fa[1][:, :-1].T, correction=0)
    vals = torch.linalg.eigvalsh(cov).flip(0)
    close(pca.lambdas_[1][1:], vals[: pca.kept_[1] - 1], 1e-10)
    w = pca.C_[1][:-1, 1:]
    close(w.T @ w, torch.eye(pca.kept_[1] - 1, dtype=F64), 1e-10)  # orthonormal directions
    neurons = neuron_basis(net, x)
    close(neurons.transform(1, fa[1][:, :-1]), fa[1], 0)
    frame = compare_bases(InteractionBasis(centre=True).fit(net, x), pca, neurons)
    assert list(frame.basis.unique()) == ["interaction", "pca", "neuron"]
    assert list(frame.kept_in[frame.basis == "neuron"]) == [7, 9, 8]


def test_errors(toy) -> None:
    net, x, _, _ = toy
    with pytest.raises(NotFittedError):
        InteractionBasis().transform(0, x)
    with pytest.raises(InterpError, match="basis must be"):
        InteractionBasis("ica").fit(net, x)
    with pytest.raises(InterpError, match="truncation"):
        InteractionBasis(truncation=2.0).fit(net, x)
    with pytest.raises(ShapeError, match="first layer"):
        InteractionBasis().fit(net, x[:, :5])
    with pytest.raises(InterpError, match="nn.Sequential"):
        InteractionBasis().fit(nn.Sequential(nn.Linear(6, 3), nn.BatchNorm1d(3)), x)
    ib = InteractionBasis(edges=False).fit(net, x)
    with pytest.raises(ShapeError, match="columns"):
        ib.transform(1, x)
    with pytest.raises(InterpError, match="node-layer index"):
        ib.transform(7, x)
    with pytest.raises(InterpError, match="edges=False"):
        ib.to_graph()
    with pytest.raises(InterpError, match="needs labels"):
        ib.ablation_curve(x, layer=1)


@pytest.fixture(scope="module")
def tiny():
    from interp import load_model

    model = load_model("tiny-gpt2")
    g = torch.Generator().manual_seed(13)
    return model, torch.randint(0, model.spec.d_vocab, (10, 12), generator=g)


def perspective_jacobians(fn, x):
    """d [f -> c h(f / c), c] / d [f, c] at c = 1 per row, written out: [[J, h - J f], [0, 1]]."""
    j = torch.autograd.functional.jacobian(lambda v: fn(v).sum(0), x, vectorize=True)
    j = j.permute(1, 0, 2)  # rows are independent: (N, out, in)
    with torch.no_grad():
        h = fn(x)
    top = torch.cat([j, (h - torch.einsum("noi,ni->no", j, x))[:, :, None]], 2)
    bottom = torch.zeros(len(x), 1, top.shape[2], dtype=F64)
    bottom[:, 0, -1] = 1
    return torch.cat([top, bottom], 1)


def test_transformer_mlp_sites(tiny) -> None:
    model, tokens = tiny
    sections, x, sites = transformer_mlp(model, tokens, 1)
    assert sites == ["m1.in", "m1.post", "m1"]
    _, cache = model.run_with_cache(tokens, ["m1.in", "m1"])
    torch.testing.assert_close(x, cache["m1.in"].reshape(-1, 64).to(F64))
    with torch.no_grad():
        torch.testing.assert_close(
            sections[1](sections[0](x)), cache["m1"].reshape(-1, 64).to(F64), atol=1e-5, rtol=1e-5
        )
    ib = InteractionBasis(edges=False).fit(sections, x)
    assert ib.kept_[0] <= ib.gram_rank_[0] <= 65
    # P1 and P2 on the MLP's input layer, with the Jacobians written out by hand
    f_hat = ib.transform(0, x)
    close(f_hat.T @ f_hat / len(x), torch.diag(ib.lambdas_[0]), 1e-10)
    with torch.no_grad():
        hidden = sections[0](x)
    ones = torch.ones(len(x), 1, dtype=F64)
    j_hat = ib.C_[1].T @ perspective_jacobians(sections[0], x) @ ib.C_pinv_[0].T
    m = torch.einsum("nij,nik->jk", j_hat, j_hat) / len(x)
    close(m, torch.eye(ib.kept_[0], dtype=F64), 1e-8)
    close(ib.transform(1, hidden), torch.cat([hidden, ones], 1) @ ib.C_[1], 1e-14)


def test_transformer_residual_sites(tiny) -> None:
    model, tokens = tiny
    sections, x, sites = transformer_mlp(model, tokens, 0, residual=True)
    assert sites == ["r0.mid", "r0.mid+m0.post", "r0.post"]
    _, cache = model.run_with_cache(tokens, ["r0.mid", "r0.post"])
    with torch.no_grad():
        middle = sections[0](x)
        torch.testing.assert_close(middle[:, :64], x)  # the skip connection rides along
        torch.testing.assert_close(
            sections[1](middle), cache["r0.post"].reshape(-1, 64).to(F64), atol=1e-5, rtol=1e-5
        )
    ib = InteractionBasis(centre=True).fit(sections, x)
    assert ib.widths_ == [64, 64 + 256, 64]
    assert ib.kept_[1] <= 64 + 1  # the last hidden layer feeds 64 unrotated outputs
    with pytest.raises(InterpError, match="loaded transformer"):
        transformer_mlp(nn.Linear(2, 2), tokens, 0)


def test_refit_forgets_the_previous_fit(toy) -> None:
    net, x, _, _ = toy
    ib = InteractionBasis().fit(net, x)
    assert hasattr(ib, "edges_")
    ib.edges = False
    ib.fit(relu_net((6, 9, 4), seed=3), x)
    assert not hasattr(ib, "edges_")  # no graph built from the previous model
    with pytest.raises(InterpError, match="edges=False"):
        ib.to_graph()
    assert ib.widths_ == [6, 9, 4]


def callables_over_parameters(seed=0):
    """The sections of a float32 MLP whose parameters require grad, as plain closures."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    w1, b1, w2, b2 = (p.double() for p in net.parameters())  # still in the autograd graph
    return net, [lambda f: torch.relu(f @ w1.T + b1), lambda h: h @ w2.T + b2]


def test_learned_tensors_are_detached_for_callables_over_parameters() -> None:
    _, sections = callables_over_parameters()
    x = data(200, 4)
    for centre in (False, True):
        ib = InteractionBasis(centre=centre).fit(sections, x)
        learned = [v for k, v in vars(ib).items() if k.endswith("_")]
        tensors = [t for v in learned for t in (v if isinstance(v, list) else [v])]
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        assert len(tensors) >= 3 * 3 + 2  # C_, C_pinv_, lambdas_ per layer; edges_
        assert not any(t.requires_grad for t in tensors)
        ib.C_[0].numpy()
        assert not ib.attributions(0, x).requires_grad


def test_uncentred_ablation_of_callable_sections_needs_a_positive_constant() -> None:
    net, sections = callables_over_parameters()
    x = data(300, 4)
    y = net.double()(x).argmax(-1)
    ib = InteractionBasis().fit(sections, x)
    # ablating every direction of the uncentred basis takes the constant entry to 0
    with pytest.raises(InterpError, match="constant"):
        ib.ablation_curve(x, y, layer=1, schedule=[0])
    with pytest.raises(InterpError, match="constant"):
        ib.ablation_curve(x, y, layer=0, kind="edge", schedule=[0])
    folded = torch.cat([x, -torch.ones(len(x), 1, dtype=F64)], 1)
    with pytest.raises(InterpError, match="constant"):  # c h(f / c) is not the folding for c < 0
        ib.sections_[0](folded)
    # the explicitly folded model has no such limit, and a centred basis never ablates the constant
    assert InteractionBasis().fit(net, x).ablation_curve(x, y, layer=1, schedule=[0]).score[0] >= 0
    centred = InteractionBasis(centre=True).fit(sections, x)
    schedule = [1, 2, centred.kept_[1]]  # n counts the constant direction, always kept first
    curve = centred.ablation_curve(x, y, layer=1, schedule=schedule)
    assert curve.score.iloc[-1] == 1.0
    reference = InteractionBasis(centre=True).fit(net, x)
    assert list(curve.score) == list(
        reference.ablation_curve(x, y, layer=1, schedule=schedule).score
    )
    edges = centred.ablation_curve(x, y, layer=0, kind="edge", schedule=[0, 3])
    assert list(edges.score) == list(
        reference.ablation_curve(x, y, layer=0, kind="edge", schedule=[0, 3]).score
    )


def test_truncation_must_be_positive_and_null_directions_are_dropped(toy) -> None:
    net, x, _, _ = toy
    for bad in (0.0, (1e-10, 0.0), (0, 1e-10), -1e-3):
        with pytest.raises(InterpError, match="truncation"):
            InteractionBasis(truncation=bad).fit(net, x)
    dup = torch.cat([x[:, :5], x[:, :1]], 1)  # a duplicated input: the Gram matrix has rank 6 + 1
    ib = InteractionBasis(truncation=1e-30, edges=False).fit(net, dup)
    assert ib.gram_rank_[0] == 6
    assert ib.kept_[0] <= 6
    assert float(ib.lambdas_[0].min()) > 1e-12 * float(ib.lambdas_[0].max())


def test_default_ablation_schedule_keeps_the_constant_direction() -> None:
    net, sections = callables_over_parameters()
    x = data(300, 4)
    y = net.double()(x).argmax(-1)
    centred = InteractionBasis(centre=True).fit(sections, x)
    # the default schedule used to start at 0 kept directions: ablating the constant direction
    # too, which callable sections refuse with advice to centre (as this basis already is)
    curve = centred.ablation_curve(x, y, layer=1)
    assert curve.n_kept.iloc[0] == 1 and curve.n_kept.iloc[-1] == centred.kept_[1]
    assert curve.score.iloc[-1] == 1.0
    with pytest.raises(InterpError, match=r"1\.\.\d+ \(node layer 1 has a constant direction"):
        centred.ablation_curve(x, y, layer=1, schedule=[0, 2])
    # edges of the constant directions are always kept and not counted: 0 is a valid count
    assert centred.ablation_curve(x, y, layer=0, kind="edge").n_kept.iloc[0] == 0
    # without a constant direction, nothing kept is a valid point of the curve
    uncentred = InteractionBasis().fit(net.double(), x)
    assert uncentred.ablation_curve(x, y, layer=1).n_kept.iloc[0] == 0


def test_option_words_are_checked_with_a_suggestion(toy) -> None:
    net, x, _, _ = toy
    y = net(x).argmax(-1)
    with pytest.raises(InterpError, match="jacobian must be one of .*Did you mean 'output'"):
        InteractionBasis(jacobian="outputs").fit(net, x)
    ib = InteractionBasis().fit(net, x)
    with pytest.raises(InterpError, match="kind must be one of .*Did you mean 'edge'"):
        ib.ablation_curve(x, y, layer=1, kind="edges")
    with pytest.raises(InterpError, match="metric .*Did you mean 'accuracy'"):
        ib.ablation_curve(x, y, layer=1, metric="acuracy")
    with pytest.raises(InterpError, match="metric .*Did you mean 'loss'"):
        ib.edges_required(x, y, layer=0, metric="los")
    with pytest.raises(InterpError, match="norm must be one of .*Did you mean 'sqrt'"):
        ib.modularity(norm="sqr")
    with pytest.raises(InterpError, match="norm must be one of"):
        compare_bases(ib, "not a basis", norm="sqr")  # checked before any basis is read


def test_transformer_mlp_reads_the_bridge_through_its_public_component(
    tiny_llama, tiny_gpt2
) -> None:
    # the bridge exposes the Hugging Face module it wraps as `original_component`
    for model, kind in ((tiny_llama, "LlamaMLP"), (tiny_gpt2, "GPT2MLP")):
        assert type(model.bridge.blocks[0].mlp.original_component).__name__ == kind
        sections, x, sites = transformer_mlp(model, ["Mary and John"], 0)
        assert sites == ["m0.in", "m0.post", "m0"] and len(sections) == 2
