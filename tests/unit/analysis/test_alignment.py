"""Neuron alignment (convergent learning) against brute force, scipy, sklearn and planted answers."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, mutual_info_score
from torch import nn

from analysis import (
    NeuronAlignment,
    NotFittedError,
    bipartite_matching,
    cnn,
    correlation_matrix,
    digits,
    linear_cka,
    mlp,
    mutual_information_matrix,
    procrustes_distance,
    semi_matching,
    sparse_prediction,
    spectral_groups,
    train,
)
from interp import CircuitGraph, InterpError, ShapeError, UnknownSiteError

from ._nets import SharedReLU, TokenNet


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def permuted_mlp(net: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with the first hidden layer's units reordered by ``perm``."""
    copy = mlp(net[0].in_features, [net[0].out_features], net[2].out_features, seed=123)
    with torch.no_grad():
        copy[0].weight.copy_(net[0].weight[perm])
        copy[0].bias.copy_(net[0].bias[perm])
        copy[2].weight.copy_(net[2].weight[:, perm])
        copy[2].bias.copy_(net[2].bias)
    return copy


def permuted_cnn(net: nn.Sequential, p1: torch.Tensor, p2: torch.Tensor) -> nn.Sequential:
    """cnn() with both conv layers' channels reordered (p1: conv1, p2: conv2)."""
    copy = cnn(seed=99)
    side = 2 * 2  # positions per channel entering the Linear after Flatten
    flat = (p2[:, None] * side + torch.arange(side)).flatten()
    with torch.no_grad():
        copy.load_state_dict(net.state_dict())
        copy[0].weight.copy_(net[0].weight[p1])
        copy[0].bias.copy_(net[0].bias[p1])
        copy[3].weight.copy_(net[3].weight[p2][:, p1])
        copy[3].bias.copy_(net[3].bias[p2])
        copy[7].weight.copy_(net[7].weight[:, flat])
    return copy


# -- correlation --------------------------------------------------------------------------------


def test_correlation_matches_numpy_for_dense_and_conv_layers() -> None:
    a, b = randn(50, 4, seed=1), randn(50, 3, seed=2)
    b[:, 0] += 2 * a[:, 1]
    ref = np.corrcoef(a.numpy().T, b.numpy().T)[:4, 4:]
    np.testing.assert_allclose(correlation_matrix(a, b).numpy(), ref, atol=1e-12)
    # conv: a channel is a unit, every (example, position) a sample
    ca, cb = randn(6, 3, 4, 5, seed=3), randn(6, 2, 4, 5, seed=4)
    flat_a = ca.permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    flat_b = cb.permute(0, 2, 3, 1).reshape(-1, 2).numpy()
    ref = np.corrcoef(flat_a.T, flat_b.T)[:3, 3:]
    np.testing.assert_allclose(correlation_matrix(ca, cb).numpy(), ref, atol=1e-12)


def test_a_network_against_itself_has_unit_diagonal_and_identity_matching() -> None:
    acts = torch.relu(randn(300, 8, seed=5) @ randn(8, 8, seed=6))
    acts[:, 3] = 0.0  # a dead unit: correlation 0, never NaN
    c = correlation_matrix(acts)
    live = torch.tensor([i != 3 for i in range(8)])
    torch.testing.assert_close(c.diagonal()[live], torch.ones(7, dtype=torch.float64))
    assert torch.isfinite(c).all() and float(c[3].abs().max()) == 0.0
    assert torch.equal(bipartite_matching(c)[live], torch.arange(8)[live])


# -- matchings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hungarian_equals_the_brute_force_optimum(seed: int) -> None:
    s = randn(6, 6, seed=seed)
    best = max(sum(float(s[i, p[i]]) for i in range(6)) for p in itertools.permutations(range(6)))
    partner = bipartite_matching(s)
    assert sorted(partner.tolist()) == list(range(6))
    assert sum(float(s[i, partner[i]]) for i in range(6)) == pytest.approx(best, abs=1e-12)


def test_rectangular_matching_against_brute_force() -> None:
    s = randn(5, 3, seed=7)  # more rows than columns: two rows stay unmatched
    best = max(
        sum(float(s[r, c]) for r, c in zip(rows, range(3), strict=True))
        for rows in itertools.permutations(range(5), 3)
    )
    partner = bipartite_matching(s)
    assert int((partner == -1).sum()) == 2
    assert sorted(partner[partner >= 0].tolist()) == [0, 1, 2]
    matched = torch.nonzero(partner >= 0).flatten()
    assert float(s[matched, partner[matched]].sum()) == pytest.approx(best, abs=1e-12)


def test_semi_matching_is_the_row_argmax_and_may_repeat() -> None:
    s = torch.tensor([[0.1, 0.9, 0.0], [0.3, 0.8, 0.1], [0.7, 0.3, 0.2]])
    assert semi_matching(s).tolist() == [1, 1, 0]
    assert bipartite_matching(s).tolist() == [1, 2, 0]  # 0.9 + 0.1 + 0.7 beats 0.8 + 0.7 + 0


def test_permuted_copy_is_recovered_exactly() -> None:
    net = mlp(10, [12], 3, seed=0)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    copy = permuted_mlp(net, perm)
    x = randn(200, 10, seed=2).float()
    torch.testing.assert_close(copy(x), net(x))  # the same function
    align = NeuronAlignment(layers=["1"]).fit(net, copy, x)
    # unit i of net is unit j of the copy where perm[j] == i
    assert torch.equal(perm[align.matching_["1"]], torch.arange(12))
    assert torch.equal(align.semi_matching_["1"], align.matching_["1"])  # greedy == Hungarian
    row = align.summary().loc["1"]
    assert row.semi == pytest.approx(1.0, abs=1e-6)
    assert row.one_to_one == pytest.approx(1.0, abs=1e-6)
    assert row.overlap == 1.0
    assert row.cka == pytest.approx(1.0, abs=1e-9)
    assert row.procrustes == pytest.approx(0.0, abs=1e-6)
    assert row.shuffled_one_to_one < 0.5  # images shuffled: the match is gone


def test_permuted_cnn_channels_are_recovered_in_both_conv_layers() -> None:
    net = cnn(seed=0)
    g = torch.Generator().manual_seed(3)
    p1, p2 = torch.randperm(8, generator=g), torch.randperm(16, generator=g)
    copy = permuted_cnn(net, p1, p2)
    x = digits().x_test[:60]
    torch.testing.assert_close(copy(x), net(x))
    for method in ("correlation", "mutual_information"):
        align = NeuronAlignment(layers=["1", "4"], method=method).fit(net, copy, x)
        live1 = align.within_a_["1"].diagonal() > 0  # dead ReLU channels have no partner
        assert torch.equal(p1[align.matching_["1"]][live1], torch.arange(8)[live1])
        live4 = align.within_a_["4"].diagonal() > 0
        assert torch.equal(p2[align.matching_["4"]][live4], torch.arange(16)[live4])
        summary = align.summary()
        np.testing.assert_allclose(summary.cka, 1.0, atol=1e-9)
        np.testing.assert_allclose(summary.procrustes, 0.0, atol=1e-6)


@pytest.fixture(scope="module")
def digit_mlps() -> dict[str, nn.Module]:
    data = digits(image=False)
    nets = {}
    for seed in (0, 1):
        nets[f"trained{seed}"] = mlp(64, [32], 10, seed=seed)
        train(nets[f"trained{seed}"], data, epochs=40, lr=1e-2, seed=seed, progress=False)
        nets[f"random{seed}"] = mlp(64, [32], 10, seed=10 + seed)
    nets["x"] = data.x_test
    return nets


def test_independent_random_networks_match_far_worse_than_trained_ones(digit_mlps) -> None:
    x = digit_mlps["x"]
    trained = NeuronAlignment(layers=["1"]).fit(
        digit_mlps["trained0"], digit_mlps["trained1"], x, baseline=digit_mlps["random1"]
    )
    random = NeuronAlignment(layers=["1"]).fit(digit_mlps["random0"], digit_mlps["random1"], x)
    t, r = trained.summary().loc["1"], random.summary().loc["1"]
    assert t.one_to_one > r.one_to_one + 0.15
    assert t.semi > r.semi + 0.15
    assert t.cka > r.cka + 0.2
    # the baseline columns are the trained net against an untrained one, matched on its own
    ha, hc = _hidden(digit_mlps["trained0"], digit_mlps["random1"], x)
    with np.errstate(invalid="ignore"):
        c = np.corrcoef(ha.numpy().T, hc.numpy().T)[:32, 32:]
    live = ha.std(0).numpy() > 0  # dead units of A are left out of the means
    assert t.dead_a == int((~live).sum())
    c = np.nan_to_num(c)  # a dead unit correlates with nothing
    rows, cols = linear_sum_assignment(c, maximize=True)
    assert t.baseline_one_to_one == pytest.approx(c[rows, cols][live[rows]].mean())
    assert t.baseline_semi == pytest.approx(c.max(1)[live].mean())
    assert t.one_to_one > t.baseline_one_to_one + 0.15


def _hidden(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return a[1](a[0](x)), b[1](b[0](x))


# -- mutual information -------------------------------------------------------------------------


def test_mutual_information_of_independent_units_vanishes_after_bias_correction() -> None:
    a, b = randn(5000, 3, seed=8), randn(5000, 4, seed=9)
    plug_in = mutual_information_matrix(a, b, bias_correction=False)
    corrected = mutual_information_matrix(a, b)
    expected_bias = 9 * 9 / (2 * 5000)  # (B - 1)^2 / 2N for 10 bins each
    assert float(plug_in.mean()) == pytest.approx(expected_bias, rel=0.3)
    assert float(corrected.abs().max()) < 0.004
    assert float(corrected.abs().mean()) < 0.3 * float(plug_in.mean())


def test_mutual_information_is_symmetric_and_matches_sklearn_on_ranks() -> None:
    z = randn(1000, 2, seed=10)
    a = torch.stack([z[:, 0], z[:, 0] + z[:, 1]], 1)
    b = torch.stack([z[:, 1], torch.tanh(z[:, 0]), z[:, 0] ** 3], 1)
    mi = mutual_information_matrix(a, b, bias_correction=False)
    torch.testing.assert_close(mutual_information_matrix(b, a, bias_correction=False), mi.T)

    def labels(v: torch.Tensor) -> np.ndarray:  # equal-population bins from ranks
        return np.argsort(np.argsort(v.numpy())) * 10 // len(v)

    for i, j in itertools.product(range(2), range(3)):
        ref = mutual_info_score(labels(a[:, i]), labels(b[:, j]))
        assert float(mi[i, j]) == pytest.approx(ref, abs=1e-12)
    # a monotone function of a unit carries all of it: entropy of 10 equal bins
    assert float(mi[0, 1]) == pytest.approx(np.log(10), abs=1e-12)


def test_relu_zeros_get_a_bin_of_their_own() -> None:
    v = randn(1800, 1, seed=11).abs() + 0.1
    v[:900] = 0.0  # exactly half zeros
    mi = mutual_information_matrix(v, v, bias_correction=False)
    # half in the zero bin, the rest in 9 equal bins
    entropy = 0.5 * np.log(2) + 0.5 * np.log(18)
    assert float(mi[0, 0]) == pytest.approx(entropy, abs=1e-12)


# -- one-number summaries -----------------------------------------------------------------------


def _cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s HSIC form on Gram matrices (examples x examples)."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kx, ky = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


def test_linear_cka_equals_the_gram_matrix_form_and_its_invariances() -> None:
    a = randn(80, 5, seed=12)
    b = torch.tanh(a @ randn(5, 7, seed=13)) + 0.5 * randn(80, 7, seed=14)
    assert linear_cka(a, b) == pytest.approx(_cka_gram(a.numpy(), b.numpy()), abs=1e-12)
    q, _ = torch.linalg.qr(randn(7, 7, seed=15))
    assert linear_cka(a, 3 * b @ q - 2) == pytest.approx(linear_cka(a, b), abs=1e-12)
    assert linear_cka(a, a) == pytest.approx(1.0, abs=1e-12)
    # conv layers: samples are examples x positions
    ca, cb = randn(6, 3, 2, 2, seed=16), randn(6, 4, 2, 2, seed=17)
    flat = [t.permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy() for t in (ca, cb)]
    assert linear_cka(ca, cb) == pytest.approx(_cka_gram(*flat), abs=1e-12)


@pytest.mark.parametrize(("wa", "wb"), [(5, 5), (4, 7), (7, 4)])
def test_procrustes_distance_equals_scipy_orthogonal_procrustes(wa: int, wb: int) -> None:
    a, b = randn(60, wa, seed=18), randn(60, wb, seed=19)
    b[:, 0] += a[:, 0]
    x, y = [t.numpy() - t.numpy().mean(0) for t in (a, b)]
    x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
    width = max(wa, wb)
    x = np.pad(x, ((0, 0), (0, width - wa)))
    y = np.pad(y, ((0, 0), (0, width - wb)))
    r, _ = orthogonal_procrustes(x, y)
    assert procrustes_distance(a, b) == pytest.approx(np.linalg.norm(x @ r - y), abs=1e-10)
    q, _ = torch.linalg.qr(randn(wa, wa, seed=20))
    assert procrustes_distance(a, 5 * a @ q + 1) == pytest.approx(0.0, abs=1e-6)


# -- sparse prediction --------------------------------------------------------------------------


def test_sparse_prediction_at_zero_penalty_recovers_a_known_map() -> None:
    a = randn(300, 5, seed=21) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    w = randn(3, 5, seed=22)
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    fit = sparse_prediction(a, a @ w.T + c, [0.0])
    coef, intercept = fit.coef(0)
    torch.testing.assert_close(coef, w, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(intercept, c, rtol=1e-9, atol=1e-9)
    assert fit.curve.loss[0] < 1e-15


def test_sparsity_rises_monotonically_with_the_penalty() -> None:
    a = randn(2000, 12, seed=23)
    w = randn(6, 12, seed=24) * (
        torch.rand(6, 12, generator=torch.Generator().manual_seed(25)) < 0.4
    )
    b = a @ w.T + 0.5 * randn(2000, 6, seed=26)
    alphas = [0.0, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0]
    curve = sparse_prediction(a, b, alphas).curve
    assert (np.diff(curve.nonzero) <= 0).all() and curve.nonzero.iloc[0] == 1.0
    assert curve.nonzero.iloc[-1] == 0.0  # alpha beyond every |corr|: nothing is used
    assert (np.diff(curve.train_loss) >= -1e-12).all()
    assert curve.loss.iloc[-1] == pytest.approx(1.0, abs=0.1)  # predicting the mean only
    # a moderate penalty keeps the planted inputs and drops most of the others
    mapping = sparse_prediction(a, b, [0.05]).mapping(0)
    for j in range(6):
        planted = set(torch.nonzero(w[j].abs() > 0.3).flatten().tolist())
        assert planted <= set(mapping[j])


# -- spectral groups ----------------------------------------------------------------------------


def test_spectral_groups_recover_planted_shared_subspaces() -> None:
    z = randn(600, 3, seed=27)
    truth_a, truth_b = [0, 0, 1, 1, 2, 2, 0], [2, 1, 0, 2, 1]
    a = z[:, truth_a] + 0.4 * randn(600, 7, seed=28)
    b = -z[:, truth_b] + 0.4 * randn(600, 5, seed=29)  # anti-correlated: |C| is the affinity
    ga, gb = spectral_groups(a, b, 3)
    assert adjusted_rand_score(truth_a + truth_b, torch.cat([ga, gb]).tolist()) == 1.0
    est = NeuronAlignment().fit(a, b)
    ea, eb = est.groups(3)
    assert adjusted_rand_score(truth_a + truth_b, torch.cat([ea, eb]).tolist()) == 1.0


# -- the estimator ------------------------------------------------------------------------------


def test_estimator_contract_and_dtype_agreement() -> None:
    a64 = {"conv": randn(20, 3, 4, 4, seed=30), "fc": randn(20, 5, seed=31)}
    b64 = {
        "conv": a64["conv"][:, [2, 0, 1]] + 0.1 * randn(20, 3, 4, 4, seed=32),
        "fc": randn(20, 6, seed=33),
    }
    est = NeuronAlignment()
    with pytest.raises(NotFittedError, match="not fitted"):
        est.summary()
    with pytest.raises(NotFittedError):
        est.to_graph()
    assert est.fit(a64, b64) is est
    assert est.layers_ == ["conv", "fc"] and est.matching_["conv"].tolist() == [1, 2, 0]
    as32 = {k: v.float() for k, v in a64.items()}
    bs32 = {k: v.float() for k, v in b64.items()}
    est32 = NeuronAlignment().fit(as32, bs32)
    for k in a64:
        torch.testing.assert_close(est32.correlation_[k], est.correlation_[k], atol=1e-5, rtol=0)
        assert torch.equal(est32.matching_[k], est.matching_[k])
    np.testing.assert_allclose(est32.summary().values, est.summary().values, atol=1e-5)
    assert est.correlation_["fc"].dtype == torch.float64


def test_bad_inputs_are_rejected_with_a_message() -> None:
    a, b = randn(20, 3, seed=34), randn(20, 4, seed=35)
    with pytest.raises(ShapeError, match="same examples"):
        correlation_matrix(a, b[:10])
    with pytest.raises(ShapeError, match="same examples"):
        NeuronAlignment().fit(randn(5, 2, 4, 4), randn(5, 2, 2, 2))
    with pytest.raises(ShapeError, match="2-D or 3-D"):
        linear_cka(a[:, 0], b)
    bad = a.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        NeuronAlignment().fit(bad, b)
    with pytest.raises(ShapeError, match="NaN"):
        mutual_information_matrix(a, torch.full((20, 2), float("inf")))
    with pytest.raises(InterpError, match="method must be one of .*got 'cosine'"):
        NeuronAlignment(method="cosine").fit(a, b)
    with pytest.raises(InterpError, match="Did you mean 'correlation'"):
        NeuronAlignment(method="corelation").fit(a, b)
    with pytest.raises(InterpError, match="bins"):
        mutual_information_matrix(a, b, bins=1)
    with pytest.raises(InterpError, match="alphas"):
        sparse_prediction(a, b, [-1.0])
    with pytest.raises(InterpError, match="n_groups"):
        spectral_groups(a, b, 7)
    net = mlp(4, [3], 2)
    with pytest.raises(InterpError, match="needs the inputs"):
        NeuronAlignment(layers=["1"]).fit(net, net)
    with pytest.raises(InterpError, match="layers="):
        NeuronAlignment().fit(net, net, randn(5, 4).float())
    with pytest.raises(UnknownSiteError):
        NeuronAlignment(layers=["7"]).fit(net, net, randn(5, 4).float())
    with pytest.raises(InterpError, match="not in the activations"):
        NeuronAlignment(layers=["x"]).fit({"y": a}, {"y": b})
    fitted = NeuronAlignment().fit({"p": a, "q": a}, {"p": b, "q": b})
    with pytest.raises(InterpError, match="Unknown layer"):
        fitted.to_graph("r")
    with pytest.raises(InterpError, match="Name a layer"):
        fitted.order()


def test_layers_may_be_submodule_indices() -> None:
    net = mlp(6, [5, 5], 2, seed=0)
    x = randn(100, 6, seed=36).float()
    by_path = NeuronAlignment(layers=["1", ("1", "3")], shuffle=False).fit(net, net, x)
    by_index = NeuronAlignment(layers=[1, (1, 3)], shuffle=False).fit(net, net, x)
    assert by_index.layers_ == by_path.layers_ == ["1", "1|3"]
    for name in by_path.layers_:
        assert torch.equal(by_index.correlation_[name], by_path.correlation_[name])
    with pytest.raises(UnknownSiteError, match="'7'"):  # no submodule 7: the site error
        NeuronAlignment(layers=[7]).fit(net, net, x)
    for bad in ([1.5], [("1", "3", "4")], [True], [None]):
        with pytest.raises(InterpError, match="layers must list module paths"):
            NeuronAlignment(layers=bad).fit(net, net, x)


def test_two_different_layers_of_one_network() -> None:
    net = mlp(6, [5, 5], 2, seed=0)
    x = randn(100, 6, seed=36).float()
    est = NeuronAlignment(layers=[("1", "3")], shuffle=False).fit(net, net, x)
    with torch.no_grad():
        h1 = net[1](net[0](x))
        h2 = net[3](net[2](h1))
    torch.testing.assert_close(est.correlation_["1|3"], correlation_matrix(h1, h2))


def test_to_graph_is_the_bipartite_matching() -> None:
    a = randn(100, 4, seed=37)
    b = a[:, [3, 1, 0, 2]] + 0.3 * randn(100, 4, seed=38)
    est = NeuronAlignment(layers=["h"]).fit(a, b)
    graph = est.to_graph()
    assert isinstance(graph, CircuitGraph) and len(graph.nodes) == 8 and len(graph.edges) == 16
    corr = correlation_matrix(a, b)
    for i, j in itertools.product(range(4), range(4)):
        edge = graph.edges[f"a:h.{i}->b:h.{j}"]
        assert edge.score == pytest.approx(float(corr[i, j]))
        assert edge.in_graph == (j == [2, 1, 3, 0][i])
    assert graph.nodes["b:h.3"].score == pytest.approx(float(corr[:, 3].max()))
    assert graph.n_edges_in_graph == 4 and graph.n_nodes_in_graph == 8
    sparse = est.to_graph(top=1)
    assert len(sparse.edges) == 4 and sparse.n_edges_in_graph == 4
    again = CircuitGraph.from_json(graph.to_json())
    assert again == graph and json.loads(graph.to_json())["meta"]["layers"] == ["h"]


def test_order_puts_the_matching_on_the_diagonal() -> None:
    a = randn(200, 5, seed=39)
    b = torch.cat([a[:, [4, 2, 0, 3, 1]], randn(200, 2, seed=40)], 1)
    est = NeuronAlignment().fit(a, b)
    rows, cols = est.order()
    c = est.correlation_["layer"][rows][:, cols]
    torch.testing.assert_close(c.diagonal()[:5], torch.ones(5, dtype=torch.float64))
    assert sorted(cols.tolist()) == list(range(7)) and sorted(rows.tolist()) == list(range(5))


def test_dead_units_are_counted_and_left_out_of_the_means() -> None:
    a = torch.relu(randn(200, 5, seed=41))
    a[:, 2] = 0.0  # dead in A
    b = torch.cat([a[:, [4, 3, 1, 0]], torch.zeros(200, 1, dtype=torch.float64)], 1)  # A2 gone
    row = NeuronAlignment().fit(a, b).summary().loc["layer"]
    assert (row.dead_a, row.dead_b) == (1, 1)
    assert row.semi == pytest.approx(1.0) and row.one_to_one == pytest.approx(1.0)
    # with the dead unit counted, the mean would be 4/5
    corr = correlation_matrix(a, b)
    assert float(corr.max(1).values.mean()) == pytest.approx(0.8)


def test_batched_model_runs_agree_with_the_functions_on_all_activations() -> None:
    # float64 nets, so that batching changes nothing but the merging of the statistics
    net_a, net_b = cnn(seed=0).double().train(), cnn(seed=1).double().eval()
    x = digits().x_test[:50].double()
    est = NeuronAlignment(layers=["1", "4"], batch_size=7).fit(net_a, net_b, x)  # last batch: 1
    assert net_a.training and not net_b.training
    with torch.no_grad():
        acts = [
            (net[1](net[0](x)), net[4](net[3](net[2](net[1](net[0](x)))))) for net in (net_a, net_b)
        ]
    for k, layer in enumerate(["1", "4"]):
        a, b = acts[0][k], acts[1][k]
        torch.testing.assert_close(
            est.correlation_[layer], correlation_matrix(a, b), atol=1e-12, rtol=0
        )
        assert est.cka_[layer] == pytest.approx(linear_cka(a, b), abs=1e-12)
        assert est.procrustes_[layer] == pytest.approx(procrustes_distance(a, b), abs=1e-10)
        assert est.n_samples_[layer] == a.numel() // a.shape[1]


def test_merged_moments_survive_a_large_offset() -> None:
    a = randn(400, 3, seed=42) * 1e-3 + 1e4  # small spread around a large mean
    b = a @ randn(3, 2, seed=43) + randn(400, 2, seed=44) * 1e-3
    est = NeuronAlignment(shuffle=False).fit(a, b)
    ref = np.corrcoef(a.numpy().T, b.numpy().T)[:3, 3:]
    np.testing.assert_allclose(est.correlation_["layer"].numpy(), ref, atol=1e-9)


def test_baseline_must_be_the_same_kind_as_b() -> None:
    net = mlp(4, [3], 2)
    x = randn(6, 4).float()
    with pytest.raises(InterpError, match="models with models"):
        NeuronAlignment(layers=["1"]).fit(net, net, x, baseline=randn(6, 3))
    with pytest.raises(InterpError, match="dictionaries of activations on every side"):
        NeuronAlignment().fit({"h": randn(6, 3)}, {"h": randn(6, 3)}, baseline=randn(6, 3))


# -- regressions --------------------------------------------------------------------------------


def test_a_refit_forgets_everything_the_previous_fit_learned() -> None:
    a, b, c = randn(200, 4, seed=50), randn(200, 4, seed=51), randn(200, 4, seed=52)
    est = NeuronAlignment().fit({"h": a}, {"h": a[:, [1, 0, 3, 2]]}, baseline={"h": c})
    assert "baseline_cka" in est.summary().columns
    est.fit({"h": a}, {"h": b})  # no baseline this time
    assert not hasattr(est, "baseline_cka_") and not hasattr(est, "baseline_correlation_")
    fresh = NeuronAlignment().fit({"h": a}, {"h": b}).summary()
    assert est.summary().equals(fresh)
    # a refit without the shuffle, on another layer: no stale shuffled_* for the old layer
    est.shuffle = False
    est.fit({"k": a}, {"k": b})
    assert not hasattr(est, "shuffled_correlation_") and est.layers_ == ["k"]
    assert list(est.summary().index) == ["k"] and "shuffled_semi" not in est.summary().columns


def _token_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))


def test_per_token_activations_need_a_unit_axis_and_then_match_units() -> None:
    net = _token_mlp(0)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    copy = _token_mlp(1)
    with torch.no_grad():
        copy[0].weight.copy_(net[0].weight[perm])
        copy[0].bias.copy_(net[0].bias[perm])
        copy[2].weight.copy_(net[2].weight[:, perm])
        copy[2].bias.copy_(net[2].bias)
    x = randn(64, 3, 5, seed=53).float()  # (examples, tokens, features)
    with pytest.raises(ShapeError, match=r"3-D \(64, 3, 8\).*unit_axis=-1"):
        NeuronAlignment(layers=["1"]).fit(net, copy, x)
    est = NeuronAlignment(layers=["1"], unit_axis=-1).fit(net, copy, x)
    assert est.correlation_["1"].shape == (8, 8) and est.n_samples_["1"] == 64 * 3
    assert torch.equal(perm[est.matching_["1"]], torch.arange(8))
    with torch.no_grad():
        h = net[1](net[0](x)).reshape(-1, 8)
        hc = copy[1](copy[0](x)).reshape(-1, 8)
    torch.testing.assert_close(est.correlation_["1"], correlation_matrix(h, hc))
    # the same with arrays, and channels-last conv maps read like channels-first ones
    arrays = NeuronAlignment(unit_axis=-1, shuffle=False).fit(
        h.reshape(64, 3, 8), hc.reshape(64, 3, 8)
    )
    torch.testing.assert_close(arrays.correlation_["layer"], est.correlation_["1"])
    ca, cb = randn(6, 3, 4, 5, seed=54), randn(6, 2, 4, 5, seed=55)
    last = NeuronAlignment(unit_axis=-1).fit(ca.permute(0, 2, 3, 1), cb.permute(0, 2, 3, 1))
    torch.testing.assert_close(last.correlation_["layer"], correlation_matrix(ca, cb))
    with pytest.raises(InterpError, match="unit_axis must be None or a nonzero integer"):
        NeuronAlignment(unit_axis=0).fit(ca, cb)
    with pytest.raises(ShapeError, match="unit_axis=5 does not name a unit axis"):
        NeuronAlignment(unit_axis=5).fit(ca, cb)


def test_a_module_that_runs_twice_per_forward_pass_is_refused() -> None:
    net, x = SharedReLU(), randn(40, 3, seed=56).float()
    with pytest.raises(InterpError, match=r"'relu' ran 2 times in one forward pass.*own"):
        NeuronAlignment(layers=["relu"], shuffle=False).fit(net, net, x)
    assert net.training  # the mode is restored after the error
    # the modules feeding each call run once and can be compared
    est = NeuronAlignment(layers=[("a", "b")], shuffle=False).fit(net, net, x)
    with torch.no_grad():
        h = net.a(x)
        ref = correlation_matrix(h, net.b(h.relu()))
    torch.testing.assert_close(est.correlation_["a|b"], ref)


def test_inputs_are_cast_to_each_models_dtype_and_token_ids_pass_unchanged() -> None:
    net32 = mlp(4, [3], 2, seed=0)
    net64 = copy.deepcopy(net32).double()
    x = randn(30, 4, seed=57).float()
    est = NeuronAlignment(layers=["1"], shuffle=False).fit(net64, net32, x)
    with torch.no_grad():
        h = net32[1](net32[0](x.double().float()))
        h64 = net64[1](net64[0](x.double()))
    torch.testing.assert_close(est.correlation_["1"], correlation_matrix(h64, h))
    tokens = torch.randint(0, 10, (30, 2), generator=torch.Generator().manual_seed(0))
    tok = TokenNet()
    est = NeuronAlignment(layers=["relu"], shuffle=False, unit_axis=-1).fit(tok, tok, tokens)
    assert est.correlation_["relu"].shape == (6, 6)
    with pytest.raises(
        ShapeError, match=r"\(TokenNet, torch.float32 parameters\) could not run on x \(model a\)"
    ):
        NeuronAlignment(layers=["relu"], unit_axis=-1).fit(tok, tok, tokens.float())
    with pytest.raises(ShapeError, match=r"could not run on x \(model a\) of shape"):
        NeuronAlignment(layers=["1"]).fit(net32, net32, randn(30, 7, seed=58))


def test_relu_zeros_get_their_own_bin_however_few() -> None:
    v = randn(1900, 1, seed=59).abs() + 0.1
    v[:100] = 0.0  # 1/19 of the samples: fewer than 1/bins
    mi = mutual_information_matrix(v, v, bias_correction=False)
    p0, p = 100 / 1900, 200 / 1900  # the zeros, then 9 equal bins of 200
    assert float(mi[0, 0]) == pytest.approx(-p0 * np.log(p0) - 9 * p * np.log(p), abs=1e-12)
