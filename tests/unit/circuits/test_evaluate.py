"""MIB's evaluation: CPR / CMD, the sweep against one-circuit faithfulness, zero ablation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import interp
from circuits import (
    MIB_FRACTIONS,
    evaluate,
    faithfulness,
    faithfulness_areas,
    faithfulness_curve,
    ioi_task,
    plot_evaluations,
    prepare_edge_model,
    select_circuit,
)
from circuits._edges import circuit_metrics, edge_patching


def scored(model: interp.TransformerModel, seed: int = 0) -> interp.CircuitGraph:
    graph = interp.CircuitGraph.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    return graph.with_scores(edge_scores=torch.randn(len(graph.edges), generator=gen))


# -- the areas ---------------------------------------------------------------------------------


def test_areas_by_hand() -> None:
    p = [0.1, 0.2, 0.5, 1.0]
    f = [0.2, -0.4, 0.9, 1.3]
    # trapezoids written out: widths 0.1, 0.3, 0.5
    cpr = 0.1 * (0.2 - 0.4) / 2 + 0.3 * (-0.4 + 0.9) / 2 + 0.5 * (0.9 + 1.3) / 2
    cmd = 0.1 * (0.8 + 1.4) / 2 + 0.3 * (1.4 + 0.1) / 2 + 0.5 * (0.1 + 0.3) / 2
    got = faithfulness_areas(p, f)
    assert got == pytest.approx((cpr, cmd, 2.0 / 4))
    # a perfect circuit at every size: CPR is the width of the axis, CMD zero
    assert faithfulness_areas(MIB_FRACTIONS, [1.0] * 10) == pytest.approx((0.999, 0.0, 1.0))
    with pytest.raises(interp.InterpError, match="as many"):
        faithfulness_areas([0.1, 0.2], [1.0])


def test_evaluation_areas_come_from_its_own_table(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 3, seed=1)
    result = evaluate(tiny_gpt2, scored(tiny_gpt2), task, progress=False)
    table = result.table
    p, f = table["fraction"].tolist(), table["faithfulness"].tolist()
    cpr = sum((p[i + 1] - p[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(p) - 1))
    cmd = sum((p[i + 1] - p[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(9))
    assert (result.cpr, result.cmd, result.mean) == pytest.approx((cpr, cmd, sum(f) / 10))
    # MIB's sizes: int(p * |E|) edges requested, fewer after pruning
    assert table["edges"].tolist() == [int(x * 110) for x in MIB_FRACTIONS]
    assert (table["effective_edges"] <= table["edges"]).all()
    assert table["effective_fraction"].tolist() == [e / 110 for e in table["effective_edges"]]
    assert f[-1] == pytest.approx(1.0, abs=1e-4)
    empty = table["edges"] == 0
    assert all(abs(x) < 1e-4 for x in table["faithfulness"][empty])


# -- the sweep equals one circuit at a time ------------------------------------------------------


@pytest.mark.parametrize("ablation", ["corrupt", "mean", "zero"])
@pytest.mark.parametrize("selection", ["top-abs", "greedy-signed"])
def test_sweep_equals_faithfulness_of_each_circuit(tiny, ablation: str, selection: str) -> None:
    # one template: mean ablation needs equal lengths
    task = ioi_task(tiny, 3, seed=2, template_ids=[2])
    graph = scored(tiny, seed=5)
    fractions = (0.05, 0.1, 0.2, 0.5, 1.0)
    result = evaluate(
        tiny,
        graph,
        task,
        fractions=fractions,
        selection=selection,
        ablation=ablation,
        masks_per_pass=2,  # three passes, the last one short
        progress=False,
    )
    absolute = selection.endswith("abs")
    strategy = "greedy" if selection.startswith("greedy") else "global"
    for row in result.table.itertuples():
        circuit = graph.top(int(row.fraction * 110), absolute=absolute, strategy=strategy)
        alone = faithfulness(tiny, circuit, task, ablation=ablation)
        assert row.effective_edges == alone["n_edges"]
        assert row.metric == pytest.approx(alone["metric"], abs=1e-4)
        assert row.faithfulness == pytest.approx(alone["faithfulness"], abs=1e-3)
    assert result.empty == pytest.approx(alone["corrupt"], abs=1e-4)
    assert result.clean == pytest.approx(alone["clean"], abs=1e-5)


def test_curve_keeps_its_columns_and_values(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 3, seed=0)
    graph = scored(tiny_gpt2, seed=1)
    sizes = [3, 30, 110]
    curve = faithfulness_curve(tiny_gpt2, graph, task, sizes, masks_per_pass=1, progress=False)
    assert list(curve.columns) == [
        "k", "level", "faithfulness", "metric", "clean", "corrupt", "n_edges", "n_nodes"
    ]  # fmt: skip
    for k, row in zip(sizes, curve.itertuples(), strict=True):
        alone = faithfulness(tiny_gpt2, graph.top(k), task)
        assert row.faithfulness == pytest.approx(alone["faithfulness"], abs=1e-4)
        assert (row.n_edges, row.n_nodes) == (alone["n_edges"], alone["n_nodes"])


def test_masks_per_pass_does_not_change_the_metric(tiny_llama) -> None:
    task = ioi_task(tiny_llama, 2, seed=4)
    model, layout = prepare_edge_model(tiny_llama)
    gen = torch.Generator().manual_seed(0)
    masks = layout.to_matrix(torch.rand(5, len(layout.edge_src), generator=gen).T < 0.3)
    masks = masks.permute(2, 0, 1)
    together = edge_patching(model, task, masks, masks_per_pass=5)
    apart = torch.stack([edge_patching(model, task, m) for m in masks])
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=0)


# -- zero ablation against hooks written here ----------------------------------------------------


def test_zero_ablating_every_edge_zeroes_every_reader_input(tiny) -> None:
    """With every edge ablated to zero, a reader sees the residual stream minus every writer's
    output. The tiny models have no biases (checked here), so the writers are all there is:
    the same as zeroing every reader input by hand (the q/k/v inputs of every head, every MLP
    input, the final residual)."""
    assert all(float(p.abs().max()) == 0 for n, p in tiny.bridge.named_parameters() if "bias" in n)
    task = ioi_task(tiny, 3, seed=0)
    model, layout = prepare_edge_model(tiny)
    every = layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool))
    ablated = edge_patching(model, task, every, source="zero")
    readers = {group.site: lambda x, site: torch.zeros_like(x) for group in layout.reader_groups}
    with torch.no_grad(), model.hooks(readers):
        direct = task.logit_diff(model(task.clean))
    torch.testing.assert_close(ablated, direct, atol=1e-5, rtol=0)
    assert abs(float(direct) - float(task.logit_diff(model(task.clean)))) > 1e-3


@pytest.mark.parametrize("node", ["input", "a0.h1", "m0", "a1.h3"])
def test_zero_ablating_every_out_edge_of_a_writer_is_zeroing_it(tiny, node: str) -> None:
    """Every reader downstream of a writer sees it missing: the writer's output set to zero
    (a plain patch of that site, no edge machinery)."""
    task = ioi_task(tiny, 3, seed=1)
    model, layout = prepare_edge_model(tiny)
    mask = torch.zeros(layout.n_readers, layout.n_writers, dtype=torch.bool)
    mask[:, layout.writer_index[node]] = True
    ablated = edge_patching(model, task, mask, source="zero")
    _, cache = model.run_with_cache(task.clean, [node])
    with torch.no_grad(), model.patch(node, torch.zeros_like(cache[node])):
        direct = task.logit_diff(model(task.clean))
    torch.testing.assert_close(ablated, direct, atol=1e-5, rtol=0)


def test_empty_circuit_of_each_ablation(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 3, seed=0, template_ids=[0])
    model, _ = prepare_edge_model(tiny_gpt2)
    with torch.no_grad():
        corrupt = float(task.logit_diff(model(task.corrupt)))
    _, _, empty = circuit_metrics(model, task, [], ablation="corrupt")
    # the source run that records the writers is the corrupted run (hooks may change the
    # rounding of a few float32 ulps, never more)
    assert empty == pytest.approx(corrupt, abs=1e-6)
    _, _, zero = circuit_metrics(model, task, [], ablation="zero")
    _, _, mean = circuit_metrics(model, task, [], ablation="mean")
    assert abs(zero - corrupt) > 1e-3 and abs(mean - corrupt) > 1e-3


# -- selection words, errors, plot ---------------------------------------------------------------


def test_selection_words(tiny_gpt2) -> None:
    graph = scored(tiny_gpt2, seed=3)
    assert select_circuit(graph, 20) == graph.top(20)
    assert select_circuit(graph, 20, "top-signed") == graph.top(20, absolute=False)
    assert select_circuit(graph, 20, "greedy-abs") == graph.top(20, strategy="greedy")
    with pytest.raises(interp.InterpError, match="selection must be one of"):
        select_circuit(graph, 20, "top")


def test_evaluate_errors(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    graph = scored(tiny_gpt2)
    with pytest.raises(interp.InterpError, match="fractions must be"):
        evaluate(tiny_gpt2, graph, task, fractions=[0.5, 0.1])
    with pytest.raises(interp.InterpError, match="fractions must be"):
        evaluate(tiny_gpt2, graph, task, fractions=[1.0])
    with pytest.raises(interp.InterpError, match="no edge scores"):
        evaluate(tiny_gpt2, interp.CircuitGraph.from_model(tiny_gpt2), task)
    with pytest.raises(interp.InterpError, match="ablation must be one of"):
        evaluate(tiny_gpt2, graph, task, ablation="zeros")
    with pytest.raises(interp.InterpError, match="masks_per_pass"):
        evaluate(tiny_gpt2, graph, task, masks_per_pass=0)


def test_plot_and_summary(tmp_path, tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    results = {
        word: evaluate(tiny_gpt2, scored(tiny_gpt2), task, selection=word, progress=False)
        for word in ("top-abs", "greedy-abs")
    }
    path = tmp_path / "sweep.png"
    ax = plot_evaluations(results, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert len(ax.get_lines()) >= 2 and ax.get_xscale() == "log"
    text = results["top-abs"].summary()
    assert "CPR" in text and "effective_edges" in text
    assert isinstance(results["top-abs"].table, pd.DataFrame)
    assert not math.isnan(results["greedy-abs"].cpr)
