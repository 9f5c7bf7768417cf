"""Edge patching (path patching) and faithfulness."""

from __future__ import annotations

import pytest
import torch

import interp
from circuits import edge_patching, faithfulness, faithfulness_curve, ioi_task, prepare_edge_model
from circuits._edges import plot_faithfulness


def all_in(graph: interp.CircuitGraph) -> interp.CircuitGraph:
    return graph.copy(
        edge_in_graph=torch.ones(len(graph.edges), dtype=torch.bool),
        node_in_graph=torch.ones(len(graph.nodes), dtype=torch.bool),
    )


def test_patching_every_out_edge_equals_patching_the_node(tiny) -> None:
    task = ioi_task(tiny, 4, seed=0)
    model, layout = prepare_edge_model(tiny)
    for node in ("a0.h2", "m0", "a1.h3"):
        mask = torch.zeros(layout.n_readers, layout.n_writers, dtype=torch.bool)
        mask[:, layout.writer_index[node]] = True
        edges = edge_patching(model, task, mask, run="corrupt", source="clean")
        _, clean = model.run_with_cache(task.clean, [node])
        with model.patch(node, clean[node]):
            whole = task.logit_diff(model(task.corrupt))
        torch.testing.assert_close(edges, whole, atol=1e-5, rtol=0)


def test_patching_one_edge_changes_only_that_reader(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 3, seed=0, template_ids=[0])
    model, layout = prepare_edge_model(tiny_gpt2)
    mask = torch.zeros(layout.n_readers, layout.n_writers, dtype=torch.bool)
    mask[layout.reader_index[("a1.h2", "q")], layout.writer_index["a0.h0"]] = True
    _, base = model.run_with_cache(task.clean, ["a1.q", "a1.k"])
    with model.hooks({}):
        pass
    from circuits._edges import _EdgePatcher, _source_writers

    src = _source_writers(model, layout, task, "corrupt")
    patcher = _EdgePatcher(layout, mask[None], src, len(task))
    with model.hooks(patcher.hooks()), model.cache(["a1.q", "a1.k"]) as seen:
        model(task.clean)
    changed = (seen["a1.q"] - base["a1.q"]).abs().amax((0, 1, 3))
    assert changed[2] > 1e-4 and changed[[0, 1, 3]].max() < 1e-6
    assert (seen["a1.k"] - base["a1.k"]).abs().max() < 1e-6


def test_full_and_empty_circuits(tiny) -> None:
    task = ioi_task(tiny, 5, seed=3)
    graph = interp.CircuitGraph.from_model(tiny)
    full = faithfulness(tiny, all_in(graph), task)
    empty = faithfulness(tiny, graph, task)
    assert full["faithfulness"] == pytest.approx(1.0, abs=1e-3)
    assert empty["faithfulness"] == pytest.approx(0.0, abs=1e-3)
    assert empty["metric"] == pytest.approx(empty["corrupt"], abs=1e-5)
    assert full["n_edges"] == len(graph.edges)


def test_mean_ablation(tiny_gpt2) -> None:
    graph = interp.CircuitGraph.from_model(tiny_gpt2)
    same_length = ioi_task(tiny_gpt2, 4, seed=0, template_ids=[0])
    full = faithfulness(tiny_gpt2, all_in(graph), same_length, ablation="mean")
    assert full["faithfulness"] == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(interp.InterpError, match="same length"):
        faithfulness(tiny_gpt2, graph, ioi_task(tiny_gpt2, 4, seed=0), ablation="mean")


def test_curve_and_plot(tmp_path, tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=0)
    graph = interp.CircuitGraph.from_model(tiny_gpt2)
    graph = graph.with_scores(edge_scores=torch.linspace(1, 2, len(graph.edges)))
    df = faithfulness_curve(tiny_gpt2, graph, task, [5, 20, len(graph.edges)], progress=False)
    assert list(df["k"]) == [5, 20, len(graph.edges)]
    assert df["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-3)
    plot_faithfulness({"linspace": df}, str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
