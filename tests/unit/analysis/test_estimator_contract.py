"""scikit-learn's estimator contract, checked once for every estimator that ``analysis`` exports.

``fit`` returns ``self``; an unfitted estimator raises :class:`analysis.NotFittedError` (a
stateless one, tagged ``requires_fit=False``, works unfitted); a refit leaves exactly what a fresh
fit on the new data leaves; using a fitted estimator writes nothing; ``clone`` gives an unfitted
estimator with the same parameters (sharing, not copying, a model passed to ``__init__``);
``get_params``, ``set_params`` and ``repr`` work.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import BaseEstimator, clone
from torch import nn

import analysis
from analysis import (
    InteractionBasis,
    LinearScope,
    NeuralCodes,
    NeuronAlignment,
    NotFittedError,
    TransformerLinearScope,
    mlp,
    xor_clusters,
)

Use = Callable[[Any], Any]


@dataclass
class Case:
    """How to build, fit (on two different data sets) and use one estimator."""

    make: Callable[[], BaseEstimator]
    fit_a: Callable[[BaseEstimator], Any]
    fit_b: Callable[[BaseEstimator], Any]
    uses: dict[str, Use] = field(default_factory=dict)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def neural_codes(request: pytest.FixtureRequest) -> Case:
    data = xor_clusters(60, seed=0)
    net_a, net_b = mlp(2, [6], 2, seed=0), mlp(2, [4, 3], 2, seed=1)
    return Case(
        make=lambda: NeuralCodes(metrics=["knn", "kmeans"], n_init=2, k=3),
        fit_a=lambda est: est.fit(net_a, data.x_train, data.y_train, data.x_test, data.y_test),
        fit_b=lambda est: est.fit(net_b, data.x_test, data.y_test),  # no test split this time
        uses={
            "transform": lambda est: est.transform(data.x_test),
            "predict": lambda est: est.predict(data.x_test),
            "report": lambda est: est.report(),
        },
    )


def neuron_alignment(request: pytest.FixtureRequest) -> Case:
    a, b, c = randn(40, 5, seed=0), randn(40, 4, seed=1), randn(40, 4, seed=2)
    b = b + a[:, :4]
    return Case(
        make=lambda: NeuronAlignment(),
        fit_a=lambda est: est.fit({"h": a}, {"h": b}, baseline={"h": c}),
        fit_b=lambda est: est.fit(c[:30], a[:30]),  # arrays, no baseline this time
        uses={
            "summary": lambda est: est.summary(),
            "order": lambda est: est.order(),
            "groups": lambda est: est.groups(2),
            "to_graph": lambda est: est.to_graph(top=2),
        },
    )


def interaction_basis(request: pytest.FixtureRequest) -> Case:
    x = randn(60, 3, seed=3).double()
    net_a = mlp(3, [4], 2, seed=0).double()
    net_b = mlp(3, [5, 4], 2, seed=1).double()
    y = net_a(x).argmax(-1)
    kept = InteractionBasis(centre=True, edges=False).fit(net_a, x).kept_[1]
    return Case(
        make=lambda: InteractionBasis(centre=True),
        fit_a=lambda est: est.fit(net_a, x),
        fit_b=lambda est: est.fit(net_b, x[:40]),  # one more node layer
        uses={
            "node_activations": lambda est: est.node_activations(x),
            "transform": lambda est: est.transform(1, est.node_activations(x)[1]),
            "inverse_transform": lambda est: est.inverse_transform(1, torch.ones(2, kept)),
            "jacobians": lambda est: est.jacobians(0, x),
            "attributions": lambda est: est.attributions(0, x),
            "summary": lambda est: est.summary(),
            "node_names": lambda est: est.node_names(1),
            "edge_mask": lambda est: est.edge_mask(0),
            "to_graph": lambda est: est.to_graph(top=3),
            "edge_concentration": lambda est: est.edge_concentration(),
            "modularity": lambda est: est.modularity(),
            "ablation_curve": lambda est: est.ablation_curve(x, y, layer=1),
            "edges_required": lambda est: est.edges_required(x, y, layer=0),
        },
    )


def linear_scope(request: pytest.FixtureRequest) -> Case:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    return Case(
        make=lambda: LinearScope(net),
        fit_a=lambda est: est.fit(),
        fit_b=lambda est: est.fit(randn(5, 3, seed=4)),
        uses={"interpret": lambda est: est.interpret(randn(3, seed=5))},
    )


def transformer_linear_scope(request: pytest.FixtureRequest) -> Case:
    model = request.getfixturevalue("tiny_gpt2")
    return Case(
        make=lambda: TransformerLinearScope(model),
        fit_a=lambda est: est.fit(),
        fit_b=lambda est: est.fit(["Mary and John"]),
        uses={"interpret": lambda est: est.interpret("Mary and John went")},
    )


CASES: dict[type, Callable[[pytest.FixtureRequest], Case]] = {
    NeuralCodes: neural_codes,
    NeuronAlignment: neuron_alignment,
    InteractionBasis: interaction_basis,
    LinearScope: linear_scope,
    TransformerLinearScope: transformer_linear_scope,
}


@pytest.fixture(params=list(CASES), ids=lambda cls: cls.__name__)
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param](request)


def fitted_state(est: BaseEstimator) -> dict[str, Any]:
    """Every attribute that ``fit`` learned: those ending in ``_``."""
    return {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("__")}


def requires_fit(est: BaseEstimator) -> bool:
    return est.__sklearn_tags__().requires_fit


def same(a: Any, b: Any) -> bool:
    """Deep, exact equality of learned state (tensors and arrays bit for bit, NaN equal to NaN;
    modules by their parameters and buffers; other objects by their attributes)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(
                ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all()
            )
        )
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and (np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
        )
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b)
    if isinstance(a, nn.Module):
        return type(a) is type(b) and same(a.state_dict(), b.state_dict())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if callable(a) and not hasattr(a, "__dict__") or type(a).__name__ == "function":
        return a is b
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return type(a) is type(b) and same(vars(a), vars(b))
    return bool(a == b)


def same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal parameters; a model passed to ``__init__`` is the same object."""
    return a.keys() == b.keys() and all(a[k] is b[k] or same(a[k], b[k]) for k in a)


def test_every_exported_estimator_is_checked() -> None:
    exported = {
        obj
        for obj in (getattr(analysis, name) for name in analysis.__all__)
        if isinstance(obj, type) and issubclass(obj, BaseEstimator)
    }
    assert exported == set(CASES)


def test_fit_returns_self(case: Case) -> None:
    est = case.make()
    assert case.fit_a(est) is est
    assert case.fit_b(est) is est


def test_unfitted_use_raises_a_clear_error(case: Case) -> None:
    est = case.make()
    assert case.uses
    for name, use in case.uses.items():
        if requires_fit(est):
            with pytest.raises(NotFittedError, match="not fitted yet: call fit"):
                use(est)
        else:  # stateless: fit learns nothing, so the estimator works without it
            use(est)
            assert fitted_state(est) == {}, name


def test_a_refit_forgets_the_previous_fit(case: Case) -> None:
    refit, fresh = case.make(), case.make()
    case.fit_a(refit)
    case.fit_b(refit)
    case.fit_b(fresh)
    assert fitted_state(refit).keys() == fitted_state(fresh).keys()
    assert same(fitted_state(refit), fitted_state(fresh))


def test_using_a_fitted_estimator_writes_nothing(case: Case) -> None:
    est = case.make()
    case.fit_a(est)
    attributes = dict(vars(est))
    learned = copy.deepcopy(fitted_state(est))
    for name, use in case.uses.items():
        use(est)
        # nothing added, removed or rebound (private attributes included) ...
        assert vars(est).keys() == attributes.keys(), name
        assert all(vars(est)[k] is v for k, v in attributes.items()), name
        # ... and nothing changed in place
        assert same(fitted_state(est), learned), name


def test_clone_is_unfitted_with_the_same_parameters(case: Case) -> None:
    est = case.make()
    case.fit_a(est)
    twin = clone(est)
    assert type(twin) is type(est) and twin is not est
    assert fitted_state(twin) == {}
    assert same_params(twin.get_params(), est.get_params())
    if "model" in est.get_params():  # the model is what is looked at: shared, never copied
        assert twin.model is est.model
    case.fit_a(twin)
    assert same(fitted_state(twin), fitted_state(est))


def test_params_and_repr(case: Case) -> None:
    est = case.make()
    params = est.get_params()
    assert est.set_params(**params) is est
    assert same_params(est.get_params(), params)
    text = repr(est)
    assert text.startswith(f"{type(est).__name__}(")
    case.fit_a(est)
    assert repr(est) == text  # learned state is not a parameter
