"""Neural codes against networks whose linear regions are known and brute-force references."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn

from analysis import (
    PIECEWISE_LINEAR,
    RELU_LIKE,
    NeuralCodes,
    NotFittedError,
    cluster_purity,
    codes_phase_chart,
    dead_neuron_rates,
    digits,
    hamming_distances,
    hamming_knn,
    hamming_neighbors,
    hungarian_accuracy,
    mlp,
    pack_codes,
    plot_phase_chart,
    redundancy_ratio,
    singleton_fraction,
    unpack_codes,
    xor_clusters,
)
from interp import InterpError, ShapeError, count_hooks

from ._nets import SharedReLU, TokenNet

# -- a 1-D ReLU net with known breakpoints --------------------------------------------------------
# Layer 1: relu(x + 1), relu(-x), relu(x - 0.5), relu(2 - x): breakpoints -1, 0, 0.5, 2.
# Layer 2: relu(relu(x + 1) - 2.5): active for x > 1.5, a fifth breakpoint.
BREAKPOINTS = [-1.0, 0.0, 0.5, 1.5, 2.0]


def known_net(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0], [1.0], [-1.0]]))
        net[0].bias.copy_(torch.tensor([1.0, 0.0, -0.5, 2.0]))
        net[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
        net[2].bias.fill_(-2.5)
        net[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        net[4].bias.zero_()
    return net.to(dtype)


def hand_codes(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return np.stack([x > -1, x < 0, x > 0.5, x < 2, x > 1.5], axis=1).astype(np.uint8)


def grid(lo: float, hi: float, n: int) -> torch.Tensor:
    # an irrational offset keeps every point off the breakpoints
    return (torch.linspace(lo, hi, n, dtype=torch.float64) + np.sqrt(2) * 1e-3)[:, None]


def test_region_counts_of_a_net_with_known_breakpoints() -> None:
    x = grid(-3, 3, 601)
    codes = NeuralCodes(drop_constant=False, metrics=[]).fit(known_net(), x.float())
    bits = unpack_codes(codes.codes_, codes.n_bits_)
    np.testing.assert_array_equal(bits, hand_codes(x.numpy()))
    rep = codes.report().loc["train"]
    assert rep.distinct_codes == len(BREAKPOINTS) + 1
    assert rep.redundancy == (601 - 6) / 601
    assert codes.layer_units_ == {"1": (0, 4), "3": (4, 5)}
    # points in only three of the six regions, one of them holding a single point
    x = torch.cat([grid(-2.5, -1.5, 10), grid(0.1, 0.4, 10), torch.tensor([[1.7]])]).float()
    rep = NeuralCodes(drop_constant=False, metrics=[]).fit(known_net(), x).report().loc["train"]
    assert rep.distinct_codes == 3
    assert rep.singleton_fraction == 1 / 21


def test_constant_units_are_dropped_but_count_as_dead() -> None:
    x = grid(0.6, 1.4, 50).float()  # one region: every unit is constant there
    codes = NeuralCodes(metrics=[]).fit(known_net(), x)
    assert codes.n_units_ == 5 and codes.n_bits_ == 0
    rep = codes.report().loc["train"]
    assert rep.distinct_codes == 1 and rep.redundancy == 49 / 50
    # x > -1, x > 0.5, x < 2 on; x < 0 and x > 1.5 off: 2 of 5 units dead on every example
    assert rep.static_dnr == 2 / 5 and rep.dynamic_dnr == 2 / 5
    # kept units are those that vary over train and test together
    test = grid(-0.5, 0.3, 9).float()
    codes = NeuralCodes(metrics=[]).fit(known_net(), x, x_test=test)
    np.testing.assert_array_equal(codes.kept_units_, [1, 2])
    np.testing.assert_array_equal(
        unpack_codes(codes.test_codes_, 2), hand_codes(test.numpy())[:, [1, 2]]
    )


def test_dead_neuron_rates_of_codes() -> None:
    rng = np.random.default_rng(0)
    bits = (rng.random((40, 12)) < 0.3).astype(np.uint8)
    bits[:, [2, 7]] = 0
    dnr = dead_neuron_rates(bits)
    assert dnr["dynamic"] == pytest.approx(1 - bits.mean())
    assert dnr["static_count"] == 2 and dnr["static"] == 2 / 12
    # in a network: a unit with a large negative bias never fires, per layer and overall
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].bias[4] = -100.0
    x = torch.randn(64, 3)
    codes = NeuralCodes(metrics=[], drop_constant=False).fit(net, x)
    with torch.no_grad():
        h1 = net[0](x) > 0
        h2 = net[2](net[1](net[0](x))) > 0
    all_bits = torch.cat([h1, h2], 1).numpy()
    rep = codes.report().loc["train"]
    assert rep.dynamic_dnr == pytest.approx(1 - all_bits.mean())
    assert rep.static_dnr == pytest.approx((~all_bits.any(0)).mean())
    # dropping constant units (the default) changes the codes, not the dead neuron rates
    dropped = NeuralCodes(metrics=[]).fit(net, x)
    assert dropped.n_bits_ < dropped.n_units_ == all_bits.shape[1]
    assert dropped.report().loc["train", "static_dnr"] == rep.static_dnr
    assert dropped.report().loc["train", "dynamic_dnr"] == rep.dynamic_dnr
    layer1 = codes.layer_dnr_.set_index("layer").loc["1"]
    assert layer1.static_count >= 1 and layer1.dynamic == pytest.approx(1 - h1.float().mean())


# -- Hamming distances and K-NN --------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [5, 64, 130, 1000])
def test_hamming_distance_is_the_fraction_of_differing_bits(n_bits: int) -> None:
    rng = np.random.default_rng(n_bits)
    a, b = rng.integers(0, 2, (17, n_bits)), rng.integers(0, 2, (9, n_bits))
    a[0], b[0] = 0, 1  # the largest distance: every bit differs
    frac = hamming_distances(pack_codes(a), pack_codes(b), n_bits=n_bits)
    np.testing.assert_allclose(frac, (a[:, None, :] != b[None]).mean(-1))
    np.testing.assert_allclose(frac, cdist(a, b, metric="hamming"))
    assert frac[0, 0] == 1.0
    counts = hamming_distances(pack_codes(a))
    np.testing.assert_array_equal(counts, (a[:, None, :] != a[None]).sum(-1))
    dist, idx = hamming_neighbors(pack_codes(b[:1]), pack_codes(a[:1]), k=1)
    assert dist[0, 0] == n_bits and idx[0, 0] == 0


def brute_force_knn(train: np.ndarray, labels: np.ndarray, test: np.ndarray, k: int):
    """float64 distances; neighbours ordered by (distance, index); ties of votes to the
    smallest label."""
    dist = (test[:, None, :] != train[None]).astype(np.float64).sum(-1)
    index = np.arange(len(train))
    nbrs = np.stack([np.lexsort((index, row))[:k] for row in dist])
    votes = [np.bincount(labels[row], minlength=labels.max() + 1) for row in nbrs]
    return dist[np.arange(len(test))[:, None], nbrs], nbrs, np.array([v.argmax() for v in votes])


@pytest.mark.parametrize(("n_bits", "k"), [(6, 9), (70, 9), (130, 4), (16, 1)])
def test_hamming_knn_equals_a_brute_force_reference(n_bits: int, k: int) -> None:
    rng = np.random.default_rng(n_bits + k)
    train = rng.integers(0, 2, (300, n_bits), dtype=np.uint8)
    test = rng.integers(0, 2, (120, n_bits), dtype=np.uint8)
    labels = rng.integers(0, 4, 300)
    d_ref, i_ref, y_ref = brute_force_knn(train, labels, test, k)
    dist, idx = hamming_neighbors(pack_codes(train), pack_codes(test), k)
    np.testing.assert_array_equal(dist, d_ref)
    np.testing.assert_array_equal(idx, i_ref)
    np.testing.assert_array_equal(
        hamming_knn(pack_codes(train), labels, pack_codes(test), k), y_ref
    )


def test_hamming_knn_agrees_with_scikit_learn_where_no_tie_decides() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(5)
    train = rng.integers(0, 2, (400, 200), dtype=np.uint8)
    test = rng.integers(0, 2, (100, 200), dtype=np.uint8)
    labels = rng.integers(0, 3, 400)
    knn = KNeighborsClassifier(n_neighbors=9, metric="hamming", algorithm="brute")
    knn.fit(train.astype(bool), labels)
    dist, _ = knn.kneighbors(test.astype(bool), n_neighbors=10)
    clear = dist[:, 8] < dist[:, 9]  # the 9 nearest are the same set whatever the tie rule
    assert clear.sum() > 30
    ours = hamming_knn(pack_codes(train), labels, pack_codes(test), k=9)
    np.testing.assert_array_equal(ours[clear], knn.predict(test[clear].astype(bool)))


def test_hamming_knn_checks_its_inputs() -> None:
    codes = pack_codes(np.eye(4, dtype=np.uint8))
    with pytest.raises(ShapeError, match="packed codes"):
        hamming_knn(np.eye(4), [0, 1, 0, 1], codes)
    with pytest.raises(InterpError, match="k must be"):
        hamming_knn(codes, [0, 1, 0, 1], codes, k=5)
    with pytest.raises(ShapeError, match="same length|reference's length"):
        hamming_knn(codes, [0, 1, 0, 1], pack_codes(np.eye(9, dtype=np.uint8)), k=1)
    with pytest.raises(ShapeError, match="one label per example"):
        hamming_knn(codes, [0, 1], codes, k=1)


# -- redundancy and clustering scores ------------------------------------------------------------


def test_redundancy_ratio_and_singletons_by_hand() -> None:
    a, b = [1, 0, 1], [0, 1, 1]
    assert redundancy_ratio([a, a, a, b]) == 0.5
    assert redundancy_ratio(pack_codes([a, a, a, b])) == 0.5
    assert singleton_fraction([a, a, a, b]) == 0.25
    assert redundancy_ratio([a, b]) == 0.0 and singleton_fraction([a, b]) == 1.0


def brute_force_hungarian(labels: np.ndarray, clusters: np.ndarray) -> float:
    ks, ys = np.unique(clusters), np.unique(labels)
    best = 0
    for perm in itertools.permutations(range(max(len(ks), len(ys))), len(ks)):
        mapped = {c: ys[p] if p < len(ys) else -1 for c, p in zip(ks, perm, strict=True)}
        best = max(best, sum(mapped[c] == y for c, y in zip(clusters, labels, strict=True)))
    return best / len(labels)


def test_purity_is_at_least_the_hungarian_accuracy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        labels = rng.integers(0, 4, 25)
        clusters = rng.integers(0, rng.integers(2, 6), 25)
        purity, hungarian = cluster_purity(labels, clusters), hungarian_accuracy(labels, clusters)
        assert purity >= hungarian
        assert hungarian == pytest.approx(brute_force_hungarian(labels, clusters))
        majority = sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters))
        assert purity == majority / 25
    # clusters that are a relabelling of the classes: both are 1, and equal when bijective
    labels = rng.integers(0, 5, 40)
    relabelled = np.array([3, 0, 4, 1, 2])[labels]
    assert cluster_purity(labels, relabelled) == hungarian_accuracy(labels, relabelled) == 1.0


# -- the estimator contract -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xor_net():
    data = xor_clusters(240, seed=1)
    net = nn.Sequential(
        nn.Linear(2, 24), nn.ReLU(), nn.Linear(24, 12), nn.LeakyReLU(0.1), nn.Linear(12, 2)
    )
    torch.manual_seed(1)
    for m in net:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return net, data


def test_fit_returns_self_and_leaves_no_hooks(xor_net) -> None:
    net, data = xor_net
    net.train()
    codes = NeuralCodes(metrics=["knn"])
    assert codes.fit(net, data.x_train, data.y_train, data.x_test, data.y_test) is codes
    assert count_hooks(net) == 0 and net.training  # mode restored
    assert codes.n_units_ == 36 and set(codes.layer_units_) == {"1", "3"}
    np.testing.assert_array_equal(codes.transform(data.x_train), codes.codes_)
    expected = hamming_knn(codes.codes_, data.y_train, codes.test_codes_, k=9)
    np.testing.assert_array_equal(codes.predict(data.x_test), expected)
    knn = codes.report().loc["test", "knn_accuracy"]
    assert knn == pytest.approx(float((expected == data.y_test.numpy()).mean()))
    assert repr(codes) == "NeuralCodes(metrics=['knn'])"


def test_unfitted_use_raises_a_clear_error() -> None:
    with pytest.raises(NotFittedError, match=r"not fitted yet: call fit"):
        NeuralCodes().report()
    with pytest.raises(NotFittedError):
        NeuralCodes().transform(torch.zeros(2, 2))


def test_float32_and_float64_agree(xor_net) -> None:
    net, data = xor_net
    args = (data.x_train, data.y_train, data.x_test, data.y_test)
    single = NeuralCodes(metrics=["knn", "kmeans"], n_init=2).fit(net, *args)
    double = NeuralCodes(metrics=["knn", "kmeans"], n_init=2).fit(
        copy.deepcopy(net).double(),
        data.x_train.double(),
        data.y_train,
        data.x_test.double(),
        data.y_test,
    )
    np.testing.assert_array_equal(single.codes_, double.codes_)
    np.testing.assert_array_equal(single.test_codes_, double.test_codes_)
    assert single.report().equals(double.report())
    # float64 inputs to a float32 network are cast to the network's precision
    np.testing.assert_array_equal(single.transform(data.x_test.double()), single.test_codes_)


def test_bad_inputs_are_rejected_with_a_message(xor_net) -> None:
    net, data = xor_net
    x, y = data.x_train, data.y_train
    with pytest.raises(ShapeError, match="2-D or 3-D or 4-D or 5-D"):
        NeuralCodes().fit(net, x[:, 0], y)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        NeuralCodes().fit(net, bad, y)
    with pytest.raises(ShapeError, match="one label per example"):
        NeuralCodes().fit(net, x, y[:-1])
    with pytest.raises(InterpError, match="metrics must be one of .*got 'svm'"):
        NeuralCodes(metrics=["svm"]).fit(net, x, y)
    with pytest.raises(InterpError, match="Did you mean 'kmeans'"):
        NeuralCodes(metrics="kmean").fit(net, x, y)
    with pytest.raises(InterpError, match="No ReLU-like module"):
        NeuralCodes().fit(nn.Sequential(nn.Linear(2, 3), nn.Tanh()), x)
    with pytest.raises(InterpError, match="layers must name submodules"):
        NeuralCodes(layers=["7"]).fit(net, x)
    fitted = NeuralCodes(metrics=[]).fit(net, x)
    with pytest.raises(ShapeError, match=r"x must be shaped like the training inputs \(2,\)"):
        fitted.transform(torch.zeros(3, 5))
    with pytest.raises(ShapeError, match="could not run on x_train of shape"):
        NeuralCodes().fit(net, torch.zeros(3, 5))
    assert count_hooks(net) == 0


def test_a_module_called_twice_gives_a_block_per_call() -> None:
    net, x = SharedReLU(4), torch.randn(30, 3)
    codes = NeuralCodes(drop_constant=False, metrics=[]).fit(net, x)
    with torch.no_grad():
        h = net.a(x)
        expected = torch.cat([h > 0, net.b(h.relu()) > 0], 1)
    assert codes.layer_units_ == {"relu#0": (0, 5), "relu#1": (5, 9)}
    np.testing.assert_array_equal(unpack_codes(codes.codes_, 9), expected.numpy())


def test_codes_of_transformer_mlps(tiny_gpt2) -> None:
    prompts = ["When Mary and John went to the store", "Then John gave a drink", "Mary left"]
    tiny_gpt2(prompts[0])  # the bridge adds hooks of its own on a first forward pass
    hooks_before = count_hooks(tiny_gpt2.bridge)
    codes = NeuralCodes(layers=[0, "m1.pre"], drop_constant=False, metrics=[]).fit(
        tiny_gpt2, prompts
    )
    rows = []
    for p in prompts:  # one prompt at a time: no padding
        _, cache = tiny_gpt2.run_with_cache(tiny_gpt2.to_tokens(p), ["m0.pre", "m1.pre"])
        rows.append(torch.cat([cache["m0.pre"][0] > 0, cache["m1.pre"][0] > 0], 1))
    expected = torch.cat(rows).numpy()
    assert codes.n_units_ == 2 * tiny_gpt2.spec.d_mlp
    assert codes.codes_.shape[0] == sum(len(tiny_gpt2.to_tokens(p)[0]) for p in prompts)
    np.testing.assert_array_equal(unpack_codes(codes.codes_, codes.n_bits_), expected)
    assert count_hooks(tiny_gpt2.bridge) == hooks_before
    # one label per token position (token parity): the K-NN runs on token codes
    # (the first tokens of all prompts are the same BOS: same code, same label)
    labels = torch.cat([tiny_gpt2.to_tokens(p)[0] % 2 for p in prompts])
    rep = NeuralCodes(layers=[1], metrics=["knn"], k=1).fit(tiny_gpt2, prompts, labels).report()
    assert rep.loc["train", "knn_accuracy"] == 1.0  # every token is its own nearest neighbour


# -- regressions -----------------------------------------------------------------------------------


def test_logistic_and_kmeans_scores_equal_an_independent_sklearn_pipeline() -> None:
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsOneClassifier

    data = digits(image=False)
    x_tr, y_tr = data.x_train[:300], data.y_train[:300]
    x_te, y_te = data.x_test[:120], data.y_test[:120]
    net = mlp(64, [20, 12], 10, seed=3)
    codes = NeuralCodes(metrics=["logistic", "kmeans"], n_init=2, max_iter=300)
    rep = codes.fit(net, x_tr, y_tr, x_te, y_te).report()
    # the codes by hand: signs of both pre-activations, constant units (train + test) dropped
    with torch.no_grad():
        bits = []
        for x in (x_tr, x_te):
            h1 = net[0](x)
            bits.append(torch.cat([h1 > 0, net[2](h1.relu()) > 0], 1).numpy().astype(np.float64))
    both = np.concatenate(bits)
    keep = both.any(0) & ~both.all(0)
    f_tr, f_te = bits[0][:, keep], bits[1][:, keep]
    assert f_tr.shape[1] == codes.n_bits_
    clf = OneVsOneClassifier(LogisticRegression(random_state=9, max_iter=300)).fit(f_tr, y_tr)
    for split, f, y in (("train", f_tr, y_tr), ("test", f_te, y_te)):
        assert rep.loc[split, "logistic_accuracy"] == pytest.approx(clf.score(f, y.numpy()))
        clusters = KMeans(n_clusters=10, random_state=9, n_init=2).fit_predict(f)
        # purity: each cluster's most common label, counted directly
        hits = sum(np.bincount(y.numpy()[clusters == c]).max() for c in np.unique(clusters))
        assert rep.loc[split, "kmeans_purity"] == pytest.approx(hits / len(y))


def test_train_knn_accuracy_is_resubstitution(xor_net) -> None:
    net, data = xor_net
    codes = NeuralCodes(metrics=["knn"], k=1).fit(net, data.x_train, data.y_train)
    # every training code is its own nearest neighbour (distance 0)
    own = hamming_knn(codes.codes_, data.y_train, codes.codes_, k=1)
    assert codes.report().loc["train", "knn_accuracy"] == float(
        (own == data.y_train.numpy()).mean()
    )
    assert "resubstitution" in NeuralCodes.report.__doc__


def test_a_failed_refit_leaves_the_estimator_unfitted(xor_net) -> None:
    net, data = xor_net
    codes = NeuralCodes(metrics=[]).fit(net, data.x_train, data.y_train, data.x_test, data.y_test)
    with pytest.raises(ShapeError, match="shaped like the training inputs"):
        codes.fit(net, data.x_train, data.y_train, torch.zeros(4, 5))
    with pytest.raises(NotFittedError):
        codes.transform(data.x_test)
    assert not [k for k in vars(codes) if k.endswith("_")]
    codes.fit(net, data.x_train)  # without a test split: nothing of the first fit survives
    assert not hasattr(codes, "test_codes_") and codes.labels_ is None


def test_token_ids_pass_unchanged_and_model_errors_are_wrapped() -> None:
    net = TokenNet()
    tokens = torch.randint(0, 10, (20, 2), generator=torch.Generator().manual_seed(0))
    codes = NeuralCodes(drop_constant=False, metrics=[]).fit(net, tokens)
    with torch.no_grad():
        expected = (net.fc(net.embed(tokens)) > 0).reshape(20, -1)
    np.testing.assert_array_equal(unpack_codes(codes.codes_, 12), expected.numpy())
    np.testing.assert_array_equal(codes.transform(tokens.numpy()), codes.codes_)
    with pytest.raises(ShapeError, match=r"TokenNet, torch.float32 parameters\) could not run"):
        NeuralCodes(metrics=[]).fit(net, tokens + 10)  # an IndexError inside the model
    with pytest.raises(ShapeError, match="dtype torch.float32"):
        NeuralCodes(metrics=[]).fit(net, tokens.float())


def test_smooth_activations_are_opt_in() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(30, 3)
    assert list(NeuralCodes(metrics=[]).fit(net, x).layer_units_) == ["3"]
    wide = NeuralCodes(activation_types=RELU_LIKE, metrics=[]).fit(net, x)
    assert list(wide.layer_units_) == ["1", "3"]
    assert repr(wide).startswith("NeuralCodes(activation_types=(")
    assert set(PIECEWISE_LINEAR) < set(RELU_LIKE) and nn.GELU not in PIECEWISE_LINEAR
    with pytest.raises(InterpError, match=r"smooth activations \['1 \(GELU\)'\]"):
        NeuralCodes().fit(net[:2], x)
    with pytest.raises(InterpError, match="activation_types must be"):
        NeuralCodes(activation_types=[nn.ReLU]).fit(net, x)


# -- the phase chart ---------------------------------------------------------------------------------


def test_phase_chart_sweeps_and_plots() -> None:
    data = xor_clusters(160, seed=0)
    chart = codes_phase_chart(data, widths=[1, 16], sample_sizes=[40, None], epochs=[0, 10])
    assert len(chart) == 2 * 2 * 2
    assert sorted(chart.n_train.unique()) == [40, 120]
    one_unit = chart[chart.width == 1]
    # one ReLU unit splits the input space in at most two regions
    assert (one_unit.distinct_train <= 2).all()
    assert (one_unit.redundancy_train >= 1 - 2 / one_unit.n_train).all()
    assert chart.knn_test.between(0, 1).all() and chart.network_test.between(0, 1).all()
    assert set(chart.regime) <= {
        "under-expressive",
        "critically-expressive",
        "sufficiently-expressive",
    }
    ax = plot_phase_chart(chart[chart.epoch == 10], "redundancy_test")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "16"]
    with pytest.raises(InterpError, match="no column"):
        plot_phase_chart(chart, "nope")


def test_a_misspelt_metric_fails_before_any_network_is_trained(monkeypatch) -> None:
    import analysis._experiments as kit

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the metrics")

    monkeypatch.setattr(kit, "train", no_training)
    with pytest.raises(InterpError, match="metrics must be one of .*Did you mean 'logistic'"):
        codes_phase_chart(xor_clusters(40), widths=[2], epochs=[5], metrics=["knn", "logistc"])


def test_transform_and_predict_write_nothing(xor_net) -> None:
    net, data = xor_net
    codes = NeuralCodes(metrics=["knn"]).fit(net, data.x_train, data.y_train)
    before = dict(vars(codes))
    codes.transform(data.x_test)
    codes.predict(data.x_test)
    # no attribute rebound, added or removed (transform used to rewrite its fitted state)
    assert vars(codes).keys() == before.keys()
    assert all(vars(codes)[k] is v for k, v in before.items())
