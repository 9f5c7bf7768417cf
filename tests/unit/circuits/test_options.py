"""Option words are checked at the entry point: a misspelt word is an error, never a fallback."""

from __future__ import annotations

import pytest

from circuits import (
    attribution_patching,
    discover,
    edge_attribution,
    edge_patching,
    exact_edge_scores,
    faithfulness,
    faithfulness_curve,
    ioi_task,
)
from interp import CircuitGraph, InterpError, ModelSpec


@pytest.fixture(scope="module")
def setup(tiny_gpt2):
    task = ioi_task(tiny_gpt2, 2, seed=0)
    return tiny_gpt2, task, CircuitGraph.from_model(tiny_gpt2)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda m, t, g: faithfulness(m, g, t, ablation="corupt"), "ablation"),
        (lambda m, t, g: faithfulness_curve(m, g, t, [1], ablation="zero-ish"), "ablation"),
        (lambda m, t, g: faithfulness_curve(m, g, t, [1], level="edges"), "level"),
        (lambda m, t, g: exact_edge_scores(m, g, t, direction="nosing"), "direction"),
        (lambda m, t, g: edge_attribution(m, g, t, direction="Noising"), "direction"),
        (lambda m, t, g: attribution_patching(m, t, "heads", direction="forward"), "direction"),
        (lambda m, t, g: attribution_patching(m, t, "head"), "component"),
        (lambda m, t, g: edge_patching(m, t, g.layout.to_matrix(g.edge_in_graph), run="x"), "run"),
        (lambda m, t, g: discover(m, t, "eap", "edges"), "level"),
    ],
)
def test_misspelt_words_are_errors(setup, call, word):
    model, task, graph = setup
    with pytest.raises(InterpError, match=f"{word} must be one of"):
        call(model, task, graph)


def test_graph_of_another_shape_is_refused(setup):
    model, task, _ = setup
    spec = model.spec
    other = CircuitGraph.from_model(ModelSpec("other", "gpt2", spec.n_layers + 1, 2, 8))
    with pytest.raises(InterpError, match="another model shape"):
        faithfulness(model, other, task)
