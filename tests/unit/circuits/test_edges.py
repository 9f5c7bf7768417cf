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


@pytest.mark.parametrize("ablation", ["corrupt", "mean", "zero"])
def test_curve_runs_its_baselines_once_and_equals_each_size_alone(tiny, ablation) -> None:
    """The curve's values against edge patching of each circuit and plain runs of the clean
    and corrupted prompts (written here), and its forward passes counted: one plain forward
    of the clean prompts (the full model), one source run (none for zero ablation), then the
    circuits and (but for corrupted patching, whose empty circuit is the source run) the empty
    circuit, two masks a pass."""
    task = ioi_task(tiny, 3, seed=2, template_ids=[2])  # mean ablation needs equal lengths
    model, layout = prepare_edge_model(tiny)
    graph = interp.CircuitGraph.from_model(tiny)
    gen = torch.Generator().manual_seed(0)
    graph = graph.with_scores(edge_scores=torch.randn(len(graph.edges), generator=gen))
    sizes = [3, 20, 60, len(graph.edges)]
    rows: list[int] = []
    handle = model.bridge.register_forward_pre_hook(lambda mod, args: rows.append(len(args[0])))
    try:
        curve = faithfulness_curve(
            tiny, graph, task, sizes, ablation=ablation, masks_per_pass=2, progress=False
        )
    finally:
        handle.remove()
    n, masks = len(task), len(sizes) + (ablation != "corrupt")
    source_runs = [n] if ablation != "zero" else []
    assert rows == [n] + source_runs + [2 * n] * (masks // 2) + [n] * (masks % 2)

    with torch.no_grad():
        clean = float(task.measure(model(task.clean)))
        corrupt = float(task.measure(model(task.corrupt)))
    every = layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool))
    if ablation != "corrupt":
        corrupt = float(edge_patching(model, task, every, source=ablation))
    for k, row in zip(sizes, curve.itertuples(), strict=True):
        circuit = graph.top(k).prune()
        kept = circuit.edge_in_graph & circuit.node_in_graph[circuit.edge_src]
        kept &= circuit.node_in_graph[circuit.edge_dst]
        metric = float(edge_patching(model, task, layout.to_matrix(~kept), source=ablation))
        assert row.metric == pytest.approx(metric, abs=1e-6)
        assert (row.clean, row.corrupt) == pytest.approx((clean, corrupt), abs=1e-6)
        # metrics within 1e-6 each: a ratio within 4e-6 over the gap
        close = 4e-6 / abs(clean - corrupt)
        assert row.faithfulness == pytest.approx((metric - corrupt) / (clean - corrupt), abs=close)
        alone = faithfulness(tiny, graph.top(k), task, ablation=ablation)
        assert row.faithfulness == pytest.approx(alone["faithfulness"], abs=close)
