"""The method registry and discover()."""

from __future__ import annotations

import pytest
import torch

import interp
from circuits import METHODS, activation_patching, discover, ioi_task


def test_registry_names() -> None:
    assert {"activation-patching", "atp", "eap", "eap-ig"} <= set(METHODS)


def test_unknown_method_and_level(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(interp.InterpError, match="Did you mean 'eap-ig'"):
        discover(tiny_gpt2, task, "eap_ig")
    with pytest.raises(interp.InterpError, match="nodes, not edges"):
        discover(tiny_gpt2, task, "atp", "edge")


@pytest.mark.parametrize(
    ("method", "level"),
    [
        ("atp", "node"),
        ("eap", "edge"),
        ("eap-ig", "edge"),
        ("eap-ig", "node"),
        ("eap-ig-activations", "edge"),
    ],
)
def test_discover_returns_scored_graphs(tiny_gpt2, method: str, level: str) -> None:
    task = ioi_task(tiny_gpt2, 4)
    graph = discover(tiny_gpt2, task, method, level)
    scores = graph.edge_scores if level == "edge" else graph.node_scores
    assert int((~scores.isnan()).sum()) > 0
    assert graph.method == method and graph.meta["level"] == level
    assert graph.meta["seconds"] > 0 and graph.task == "ioi"
    assert interp.CircuitGraph.from_json(graph.to_json()) == graph


def test_activation_patching_node_scores(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=0, template_ids=[0])
    graph = discover(tiny_gpt2, task, "activation-patching", "node", progress=False)
    heads = activation_patching(tiny_gpt2, task, "heads", progress=False)
    base = float(task.logit_diff(tiny_gpt2(task.corrupt)))
    assert graph.nodes["a1.h2"].score == pytest.approx(float(heads[1, 2]) - base, abs=1e-6)
    clean = float(task.logit_diff(tiny_gpt2(task.clean)))
    assert graph.nodes["input"].score == pytest.approx(clean - base, abs=1e-5)
    assert torch.isnan(torch.tensor(graph.nodes["logits"].score))


def test_lookahead_node_scores(tiny_gpt2) -> None:
    """With as many exact blocks as the model has, lookahead is activation patching; with one,
    layer-0 heads differ from it (the gradient extrapolates) while the last layer is exact."""
    task = ioi_task(tiny_gpt2, 4, seed=0, template_ids=[0])
    exact = discover(tiny_gpt2, task, "activation-patching", "node", progress=False)
    full = discover(tiny_gpt2, task, "lookahead", "node", blocks=2, progress=False)
    torch.testing.assert_close(
        full.node_scores, exact.node_scores, atol=1e-5, rtol=0, equal_nan=True
    )
    one = discover(tiny_gpt2, task, "lookahead", "node", blocks=1, progress=False)
    assert one.nodes["a1.h2"].score == pytest.approx(exact.nodes["a1.h2"].score, abs=1e-5)
    gaps = [abs(one.nodes[f"a0.h{h}"].score - exact.nodes[f"a0.h{h}"].score) for h in range(4)]
    assert max(gaps) > 1e-4
    assert one.meta["blocks"] == 1


@pytest.mark.parametrize("level", ["edge", "node"])
def test_clean_corrupted_averages_the_gradients_of_both_runs(tiny_gpt2, level: str) -> None:
    # (a_clean - a_corrupt) . (g_corrupt + g_clean) / 2, and EAP in each direction gives one
    # half: denoising (a_clean - a_corrupt) . g_corrupt, noising (a_corrupt - a_clean) . g_clean
    task = ioi_task(tiny_gpt2, 4, seed=1)
    both = discover(tiny_gpt2, task, "clean-corrupted", level)
    denoise = discover(tiny_gpt2, task, "eap", level, direction="denoising")
    noise = discover(tiny_gpt2, task, "eap", level, direction="noising")
    scores = "edge_scores" if level == "edge" else "node_scores"
    expected = 0.5 * (getattr(denoise, scores) - getattr(noise, scores))
    ours = getattr(both, scores)
    scored = ~expected.isnan()
    assert torch.equal(scored, ~ours.isnan())
    assert torch.allclose(ours[scored], expected[scored], atol=1e-5, rtol=1e-4)
    assert both.meta["ig_alphas"] == [0.0, 1.0]


def test_a_rule_set_registered_later_is_a_relp_method(tiny_gpt2, monkeypatch) -> None:
    from circuits._refined import estimates

    monkeypatch.setattr(interp._rule_core, "_COMPOSITES", dict(interp._rule_core._COMPOSITES))
    interp.register_composite("relp-ln-only", ("ln",), description="the LN rule alone")
    assert "relp-ln-only" in estimates()
    task = ioi_task(tiny_gpt2, 2, seed=0)
    graph = discover(tiny_gpt2, task, "relp-ln-only", "node")
    # the same scores as node attribution under those rules, called directly
    direct = interp.CircuitGraph.from_model(tiny_gpt2)
    from circuits import node_attribution

    direct = node_attribution(
        tiny_gpt2, direct, task, gradient_rules=lambda m: interp.gradient_rules(m, ("ln",))
    )
    assert torch.equal(graph.node_scores.isnan(), direct.node_scores.isnan())  # NaN != NaN
    assert torch.allclose(graph.node_scores.nan_to_num(), direct.node_scores.nan_to_num())
    assert graph.meta["rules"] == "relp-ln-only"
