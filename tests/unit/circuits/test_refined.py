"""Patching a subset of cells, the cost model of activation patching, and the two-stage
(estimate, then exact) estimator."""

from __future__ import annotations

import math

import pytest
import torch

import circuits._patching as patching
import interp
from circuits import (
    activation_patching,
    attribution_patching,
    discover,
    ioi_task,
    patching_costs,
    refined_patching,
)


@pytest.fixture(scope="module")
def mixed(tiny_llama):
    return ioi_task(tiny_llama, 4, seed=3)  # right-padded prompts of several lengths


@pytest.mark.parametrize("component", ["resid", "mlp", "heads"])
def test_patching_some_cells_equals_those_cells_of_all(tiny_llama, mixed, component) -> None:
    per_position = component != "heads"
    full = activation_patching(
        tiny_llama, mixed, component, per_position=per_position, progress=False
    )
    mask = torch.rand(full.shape, generator=torch.Generator().manual_seed(0)) < 0.3
    some = activation_patching(
        tiny_llama, mixed, component, per_position=per_position, cells=mask, progress=False
    )
    torch.testing.assert_close(some[mask], full[mask], atol=1e-5, rtol=0)
    untouched = ~mask & (full != full[0, 0])  # cells before the first differing token are free
    assert torch.isnan(some[untouched]).all()
    with pytest.raises(interp.ShapeError, match="mask of shape"):
        activation_patching(tiny_llama, mixed, component, per_position=per_position, cells=mask[0])


@pytest.mark.parametrize("component", ["resid", "attn", "mlp"])
def test_costs_count_what_the_engine_computes(tiny_llama, mixed, monkeypatch, component) -> None:
    """Blocks x positions x copies summed over the forward passes activation patching runs
    equals the summed cost model, when groups hold cells of one start position only (cells
    whose clean and corrupted activations are bit-identical need no pass either)."""
    monkeypatch.setattr(patching, "GROUP_NEED", 1.0)
    monkeypatch.setattr(patching, "MIN_TOKENS_PER_PASS", 0)
    n, n_layers = len(mixed), tiny_llama.spec.n_layers
    work = []
    original = type(tiny_llama).forward_from

    def counting(self, layer, resid, inputs, **kwargs):
        work.append((n_layers - layer) * resid.shape[1] * (resid.shape[0] // n))
        return original(self, layer, resid, inputs, **kwargs)

    monkeypatch.setattr(type(tiny_llama), "forward_from", counting)
    activation_patching(tiny_llama, mixed, component, per_position=True, progress=False)
    costs = patching_costs(tiny_llama, mixed, component, per_position=True)
    sites = [patching.COMPONENTS[component].format(layer=layer) for layer in range(n_layers)]
    clean = tiny_llama.run_with_cache(mixed.clean, sites)[1]
    corrupt = tiny_llama.run_with_cache(mixed.corrupt, sites)[1]
    same = torch.tensor(
        [
            [torch.equal(clean[s][:, p], corrupt[s][:, p]) for p in range(mixed.clean.shape[1])]
            for s in sites
        ]
    )
    checks = 1  # the one pass checking that restarting reproduces the base run
    assert sum(work[checks:]) == float(costs[~same].sum())
    assert costs.shape == (n_layers, mixed.clean.shape[1])


def test_refined_at_the_ends_of_the_budget(tiny_llama, mixed) -> None:
    exact = activation_patching(tiny_llama, mixed, "resid", per_position=True, progress=False)
    rules = lambda m: interp.gradient_rules(m, "relp-ah")  # noqa: E731
    relp = attribution_patching(tiny_llama, mixed, "resid", per_position=True, gradient_rules=rules)
    all_in = refined_patching(tiny_llama, mixed, budget=1.0, progress=False)
    torch.testing.assert_close(all_in.values, exact, atol=1e-5, rtol=0)
    assert all_in.exact.all() and all_in.spent == pytest.approx(1.0)
    none = refined_patching(tiny_llama, mixed, budget=0.0, progress=False)
    torch.testing.assert_close(none.values, relp, atol=1e-5, rtol=0)
    assert none.spent == 0.0


def test_refined_patches_the_largest_estimates_for_their_cost(tiny_llama, mixed) -> None:
    exact = activation_patching(tiny_llama, mixed, "resid", per_position=True, progress=False)
    estimate = attribution_patching(tiny_llama, mixed, "resid", per_position=True)
    costs = patching_costs(tiny_llama, mixed, "resid", per_position=True)
    m_base = float(mixed.logit_diff(tiny_llama(mixed.corrupt)))
    out = refined_patching(tiny_llama, mixed, budget=0.3, estimate=estimate, progress=False)
    paid = out.exact & (costs > 0)
    assert 0 < out.spent <= 0.3
    assert float(costs[paid].sum() / costs.sum()) == pytest.approx(out.spent)
    torch.testing.assert_close(out.values[paid], exact[paid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values[~out.exact], estimate[~out.exact], atol=1e-6, rtol=0)
    # every cell left out ranks below every cell taken
    rank = (estimate.double() - m_base).abs() / costs.clamp(min=1e-12)
    assert rank[~out.exact].max() <= rank[paid].min()
    # and taking the next one would have gone over the budget
    nxt = costs[~out.exact][rank[~out.exact].argmax()]
    assert float((costs[paid].sum() + nxt) / costs.sum()) > 0.3


def test_costs_bad_component(tiny_llama, mixed) -> None:
    with pytest.raises(interp.InterpError, match="component"):
        patching_costs(tiny_llama, mixed, "neurons")


def test_refined_bad_arguments(tiny_llama, mixed) -> None:
    with pytest.raises(interp.InterpError, match="budget"):
        refined_patching(tiny_llama, mixed, budget=1.5)
    with pytest.raises(interp.InterpError, match="estimate"):
        refined_patching(tiny_llama, mixed, estimate="guess")
    with pytest.raises(interp.ShapeError, match="shape"):
        refined_patching(tiny_llama, mixed, estimate=torch.zeros(3))


def test_refined_node_method(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=0, template_ids=[0])
    exact = discover(tiny_gpt2, task, "activation-patching", "node", progress=False)
    full = discover(tiny_gpt2, task, "refined", "node", budget=1.0, progress=False)
    torch.testing.assert_close(
        full.node_scores, exact.node_scores, atol=1e-5, rtol=0, equal_nan=True
    )
    assert full.meta["budget"] == 1.0


@pytest.mark.parametrize("component", ["resid", "attn", "mlp", "heads"])
def test_scattered_cells_share_passes_across_layers(component) -> None:
    """Few scattered cells ride in passes that start at the earliest layer among them, the
    later ones patched by hooks at their own layers; each still equals patching all cells."""
    deep = interp.load_model("tiny-llama", num_hidden_layers=12)
    task = ioi_task(deep, 3, seed=3)
    per_position = component != "heads"
    full = activation_patching(deep, task, component, per_position=per_position, progress=False)
    mask = torch.rand(full.shape, generator=torch.Generator().manual_seed(1)) < 0.1
    if per_position:  # and one position column, as the largest estimates often are
        mask[:, task.clean.shape[1] - 4] = True
    groups = []
    original = patching._chunks

    def recording(*args, **kwargs):
        for group, begin in original(*args, **kwargs):
            groups.append({c.layer for c in group})
            yield group, begin

    patching._chunks = recording
    try:
        some = activation_patching(
            deep, task, component, per_position=per_position, cells=mask, progress=False
        )
    finally:
        patching._chunks = original
    assert any(len(layers) > 1 for layers in groups)
    torch.testing.assert_close(some[mask], full[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("component", "estimate"), [("resid", "atp"), ("heads", "relp-ah")])
def test_both_stages_share_one_base_and_one_source_run(
    tiny_llama, mixed, monkeypatch, component, estimate
) -> None:
    """The estimate (its gradient pass restarts at the first differing position) equals
    attribution patching, the exact cells equal activation patching's, and the base and the
    source prompts each run once in full for both stages."""
    per_position = component != "heads"
    kwargs = {"per_position": per_position}
    exact = activation_patching(tiny_llama, mixed, component, progress=False, **kwargs)
    rules = None if estimate == "atp" else (lambda m: interp.gradient_rules(m, estimate))
    first = attribution_patching(tiny_llama, mixed, component, gradient_rules=rules, **kwargs)
    full_runs = []
    model_type = type(tiny_llama)
    for name in ("block_inputs", "run_with_cache"):
        original = getattr(model_type, name)

        def counting(self, inputs, *args, _original=original, **kw):
            full_runs.append(inputs)
            return _original(self, inputs, *args, **kw)

        monkeypatch.setattr(model_type, name, counting)
    out = refined_patching(
        tiny_llama, mixed, component, budget=0.3, estimate=estimate, progress=False, **kwargs
    )
    assert len(full_runs) == 2
    assert {id(t) for t in full_runs} == {id(mixed.clean), id(mixed.corrupt)}
    assert 0 < out.spent <= 0.3 and math.isfinite(out.time_share)
    paid = out.exact & (patching_costs(tiny_llama, mixed, component, **kwargs) > 0)
    assert paid.any() and (~out.exact).any()
    torch.testing.assert_close(out.values[out.exact], exact[out.exact], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values[~out.exact], first[~out.exact], atol=1e-5, rtol=0)


@pytest.mark.parametrize("component", ["resid", "mlp", "heads"])
def test_sized_by_time_takes_the_best_cells_first(tiny_llama, mixed, component) -> None:
    """Measured time decides how many cells, never which: the cells patched are the best
    ranked ones, their values activation patching's. No time is asserted."""
    per_position = component != "heads"
    kwargs = {"per_position": per_position}
    exact = activation_patching(tiny_llama, mixed, component, progress=False, **kwargs)
    estimate = refined_patching(tiny_llama, mixed, component, budget=0.0, **kwargs).values
    costs = patching_costs(tiny_llama, mixed, component, **kwargs)
    m_base = float(mixed.logit_diff(tiny_llama(mixed.corrupt)))
    out = refined_patching(
        tiny_llama, mixed, component, budget=0.5, by="time", progress=False, **kwargs
    )
    paid = out.exact & (costs > 0)
    assert paid.any()  # the first chunk, at least the best cell, always runs
    torch.testing.assert_close(out.values[out.exact], exact[out.exact], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.values[~out.exact], estimate[~out.exact], atol=1e-6, rtol=0)
    rank = (estimate.double() - m_base).abs() / costs.clamp(min=1e-12)
    if (~out.exact).any():
        assert rank[~out.exact].max() <= rank[paid].min()
    assert out.seconds > 0 and out.time_share > 0
    ends = [
        refined_patching(tiny_llama, mixed, component, budget=b, by="time", **kwargs)
        for b in (0, 1)
    ]
    assert not (ends[0].exact & (costs > 0)).any()
    assert ends[1].exact.all()
    torch.testing.assert_close(ends[1].values, exact, atol=1e-5, rtol=0)


def test_refined_bad_size_by(tiny_llama, mixed) -> None:
    with pytest.raises(interp.InterpError, match="by"):
        refined_patching(tiny_llama, mixed, by="money")
