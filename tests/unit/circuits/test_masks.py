"""Learned edge masks: the differentiable patcher equals edge patching at 0/1 masks, its
gradient at the clean run is EAP's, and optimisation moves the density to its target."""

from __future__ import annotations

import pytest
import torch

from circuits import (
    discover,
    edge_patching,
    edge_pruning,
    ioi_task,
    masked_metric,
    prepare_edge_model,
)


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def setup(request):
    model = request.getfixturevalue(request.param.replace("-", "_"))
    return model, ioi_task(model, 3, seed=2)


def test_binary_masks_equal_edge_patching(setup):
    model, task = setup
    edge_model, layout = prepare_edge_model(model)
    keep = torch.rand(len(layout.edge_src), generator=torch.Generator().manual_seed(0)) < 0.6
    with torch.no_grad():
        ours = masked_metric(edge_model, task, keep.float())
        reference = edge_patching(edge_model, task, layout.to_matrix(~keep), run="clean")
        clean = task.measure(edge_model(task.clean))
        corrupt = task.measure(edge_model(task.corrupt))
        all_kept = masked_metric(edge_model, task, torch.ones(len(keep)))
        none_kept = masked_metric(edge_model, task, torch.zeros(len(keep)))
    assert float(ours) == pytest.approx(float(reference), abs=1e-5)
    assert float(all_kept) == pytest.approx(float(clean), abs=1e-5)
    assert float(none_kept) == pytest.approx(float(corrupt), abs=1e-5)


def test_gradient_at_the_clean_run_is_eap_noising(setup):
    # d m / d z_uv at z = 1 is -(a_u^corrupt - a_u^clean) . dm/dx_v, minus EAP's noising score
    model, task = setup
    edge_model, layout = prepare_edge_model(model)
    keep = torch.ones(len(layout.edge_src), requires_grad=True)
    masked_metric(edge_model, task, keep).backward()
    eap = discover(model, task, "eap", "edge", direction="noising")
    torch.testing.assert_close(keep.grad, -eap.edge_scores, atol=1e-5, rtol=1e-4)


def test_optimisation_reaches_the_target_density_and_keeps_the_warm_start(tiny_gpt2):
    task = ioi_task(tiny_gpt2, 4, seed=0)
    eap = discover(tiny_gpt2, task, "eap-ig", "edge")
    graph = edge_pruning(tiny_gpt2, task, target=0.2, steps=200, lr=0.1, init=eap, progress=False)
    assert graph.method == "edge-pruning" and graph.meta["warm_start"] == "eap-ig"
    assert graph.meta["density"] == pytest.approx(0.2, abs=0.05)
    assert not bool(graph.edge_scores.isnan().any())
    with pytest.raises(Exception, match="target must be"):
        edge_pruning(tiny_gpt2, task, target=1.5)


def test_sigmoid_masks_reach_the_target_and_words_are_checked(tiny_gpt2):
    task = ioi_task(tiny_gpt2, 4, seed=0)
    graph = edge_pruning(tiny_gpt2, task, target=0.3, steps=150, mask="sigmoid", progress=False)
    assert graph.meta["density"] == pytest.approx(0.3, abs=0.05) and graph.meta["mask"] == "sigmoid"
    with pytest.raises(Exception, match="Did you mean 'sigmoid'"):
        edge_pruning(tiny_gpt2, task, mask="sigmod")
