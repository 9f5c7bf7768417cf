"""Circuit discovery recovers a circuit planted in a tiny model.

The planted model is tiny-gpt2 with every head's output matrix zeroed except a0.h0's and
a1.h1's (scaled up tenfold), every MLP's output zeroed, and the two live heads' query and key
weights zeroed (so they attend uniformly and their q/k inputs carry nothing). What remains of
the task's signal flows along five edges: input -> a0.h0<v>, input -> a1.h1<v>,
a0.h0 -> a1.h1<v>, a0.h0 -> logits and a1.h1 -> logits. (input -> logits carries nothing
either: clean and corrupted IOI prompts end in the same token, which is all the logits read of
the input.) The test first checks that ground truth with exact edge patching, then asks every
method to find it: ROC AUC 1 and, at the right size, exactly the planted edges.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

import interp
from circuits import (
    discover,
    edge_pruning,
    exact_edge_scores,
    faithfulness,
    ioi_task,
    refine_circuit,
    select_circuit,
)

LIVE_HEADS = {(0, 0), (1, 1)}
PLANTED = {
    "input->a0.h0<v>",
    "input->a1.h1<v>",
    "a0.h0->a1.h1<v>",
    "a0.h0->logits",
    "a1.h1->logits",
}


@pytest.fixture(scope="module")
def planted() -> tuple[interp.TransformerModel, object, torch.Tensor]:
    model = interp.load_model("tiny-gpt2")  # its own copy: the weights are changed below
    spec = model.spec
    d_head, d_model = spec.d_model // spec.n_heads, spec.d_model
    with torch.no_grad():
        for layer, block in enumerate(model.bridge.blocks):
            out = block.attn.o.original_component  # Conv1D: rows are the heads' outputs
            qkv = block.attn.qkv.original_component  # columns: q, k, v of every head
            for head in range(spec.n_heads):
                rows = slice(head * d_head, (head + 1) * d_head)
                if (layer, head) in LIVE_HEADS:
                    out.weight[rows] *= 10
                    for part in (0, 1):  # query and key
                        cols = slice(part * d_model + rows.start, part * d_model + rows.stop)
                        qkv.weight[:, cols] = 0
                        qkv.bias[cols] = 0
                else:
                    out.weight[rows] = 0
            out.bias.zero_()
            block.mlp.out.original_component.weight.zero_()
            block.mlp.out.original_component.bias.zero_()
    task = ioi_task(model, 8, seed=0)
    assert torch.equal(
        task.clean[torch.arange(len(task)), task.lengths - 1],
        task.corrupt[torch.arange(len(task)), task.lengths - 1],
    )
    graph = interp.CircuitGraph.from_model(model)
    truth = torch.tensor([name in PLANTED for name in graph.edge_names()])
    assert int(truth.sum()) == len(PLANTED)
    return model, task, truth


def test_the_planted_edges_are_exactly_the_ones_that_matter(planted) -> None:
    model, task, truth = planted
    graph = interp.CircuitGraph.from_model(model)
    exact = exact_edge_scores(model, graph, task, direction="noising", progress=False)
    assert float(exact[~truth].abs().max()) < 1e-6  # nothing outside
    assert float(exact[truth].abs().min()) > 1e-3  # every planted edge matters alone
    circuit = graph.copy(edge_in_graph=truth, node_in_graph=torch.ones_like(graph.node_in_graph))
    assert faithfulness(model, circuit, task)["faithfulness"] == pytest.approx(1, abs=1e-5)


def recovered(graph: interp.CircuitGraph, truth: torch.Tensor, selection: str) -> None:
    scores = graph.edge_scores.abs() if selection.endswith("abs") else graph.edge_scores
    assert roc_auc_score(truth.numpy(), scores.numpy()) == 1.0
    circuit = select_circuit(graph, int(truth.sum()), selection)
    assert torch.equal(circuit.edge_in_graph, truth)


@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-activations"])
def test_attribution_recovers_the_planted_circuit(planted, method: str) -> None:
    model, task, truth = planted
    graph = discover(model, task, method, "edge", progress=False)
    for selection in ("top-abs", "greedy-abs"):
        recovered(graph, truth, selection)


@pytest.mark.parametrize("mask", ["hard-concrete", "sigmoid"])
def test_learned_masks_recover_the_planted_circuit(planted, mask: str) -> None:
    """From every mask on (no warm start), the masks of the planted edges stay on and every
    other one is switched off."""
    model, task, truth = planted
    target = float(truth.sum()) / len(truth)
    graph = edge_pruning(model, task, target=target, steps=100, mask=mask, progress=False)
    for selection in ("top-signed", "greedy-signed"):
        recovered(graph, truth, selection)
    assert graph.meta["density"] == pytest.approx(target, abs=0.05)


@pytest.mark.parametrize("selection", ["top-abs", "greedy-abs"])
def test_boundary_refinement_repairs_a_wrong_ranking(planted, selection: str) -> None:
    """A first stage that ranks a planted edge below an edge that carries nothing cuts the
    wrong circuit; exact refinement of its boundary swaps the two back."""
    model, task, truth = planted
    first = discover(model, task, "eap", "edge")
    names = first.edge_names()
    live, dead = names.index("a0.h0->a1.h1<v>"), names.index("input->a0.h0<q>")
    scores = first.edge_scores.clone()
    scores[live], scores[dead] = 1e-9, float(scores.abs().max()) * 3
    first = first.with_scores(edge_scores=scores)
    k = int(truth.sum())
    wrong = select_circuit(first, k, selection)
    assert not torch.equal(wrong.edge_in_graph, truth)
    unchanged = refine_circuit(model, first, task, k, selection=selection, rounds=0)
    assert torch.equal(unchanged.edge_in_graph, wrong.edge_in_graph)

    refined = refine_circuit(model, first, task, k, selection=selection, candidates=8)
    assert torch.equal(refined.edge_in_graph, truth)
    info = refined.meta["refine"]
    assert abs(info["after"] - info["full"]) < 1e-5 < abs(info["before"] - info["full"])
    assert faithfulness(model, refined, task)["faithfulness"] == pytest.approx(1, abs=1e-5)
    # the refined circuit ranks first, so cutting the new scores at its size gives it back
    assert torch.equal(select_circuit(refined, k, selection).edge_in_graph, truth)
