"""Gradient rule sets: forward values unchanged, conservation, and each rule acting."""

from __future__ import annotations

import pytest
import torch

import interp
from interp import InterpError, count_hooks, gradient_rules
from tests.conftest import PROMPT

OTHER = "When Lisa and Kevin went to the garden, Kevin gave a ring to"


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"], scope="module")
def model64(request) -> interp.TransformerModel:
    return interp.load_model(request.param, dtype=torch.float64)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 5] - logits[:, -1, 9]).mean()


@pytest.mark.parametrize("rules", ["relp", "relp-ah", "attnlrp"])
def test_forward_unchanged_and_no_trace(model64, rules: str) -> None:
    tokens = model64.to_tokens([PROMPT, OTHER])
    before, hooks = model64(tokens), count_hooks(model64.model)
    with gradient_rules(model64, rules):
        inside = model64(tokens)
        assert count_hooks(model64.model) > hooks
    torch.testing.assert_close(inside, before, atol=1e-7, rtol=0)
    assert count_hooks(model64.model) == hooks
    assert torch.equal(model64(tokens), before)


@pytest.mark.parametrize("split", [False, True])
def test_conservation_with_linearised_attention(model64, split: bool) -> None:
    """LN + Identity + Half + AH make the backward pass linear in the residual stream:
    sum(resid * rho) equals the metric at every layer (the tiny models have no biases)."""
    tokens = model64.to_tokens([PROMPT, OTHER])
    sites = [f"r{layer}.pre" for layer in range(model64.spec.n_layers)]
    sites += ["a1<q>"] if split else []  # switches on the per-head q/k/v forks
    with gradient_rules(model64, "relp-ah"):
        run = model64.run_with_grads(tokens, metric, sites)
    for site in sites[: model64.spec.n_layers]:
        total = (run.activations[site] * run.gradients[site]).sum()
        # the Identity rule's 1e-6 stabiliser keeps it from being exact to the last digit
        torch.testing.assert_close(total, run.value, rtol=1e-4, atol=1e-9)
    plain = model64.run_with_grads(tokens, metric, sites[:1])
    assert (
        abs(
            float((plain.activations["r0.pre"] * plain.gradients["r0.pre"]).sum())
            - float(plain.value)
        )
        > 1e-3
    )  # without the rules it does not conserve


def test_ah_rule_stops_gradient_at_queries_and_keys(model64) -> None:
    tokens = model64.to_tokens(PROMPT)
    with gradient_rules(model64, "relp-ah"):
        run = model64.run_with_grads(tokens, metric, ["a0.q", "a1.k", "a0.v"])
    assert run.gradients["a0.q"].abs().max() == 0 and run.gradients["a1.k"].abs().max() == 0
    assert run.gradients["a0.v"].abs().max() > 0
    with gradient_rules(model64, "relp"):
        run = model64.run_with_grads(tokens, metric, ["a0.q"])
    assert run.gradients["a0.q"].abs().max() > 0


def test_attnlrp_scales_query_key_and_value_gradients(model64) -> None:
    tokens = model64.to_tokens(PROMPT)
    sites = ["a1.q", "a1.k", "a1.v", "a1.z"]
    with gradient_rules(model64, ("attnlrp",)):
        scaled = model64.run_with_grads(tokens, metric, sites).gradients
    plain = model64.run_with_grads(tokens, metric, sites).gradients
    torch.testing.assert_close(scaled["a1.q"], plain["a1.q"] / 4)
    torch.testing.assert_close(scaled["a1.k"], plain["a1.k"] / 4)
    torch.testing.assert_close(scaled["a1.v"], plain["a1.v"] / 2)
    torch.testing.assert_close(scaled["a1.z"], plain["a1.z"])  # downstream: unchanged


def test_identity_rule_gives_f_over_x(model64) -> None:
    """With only the Identity rule, d out/d pre at the MLP is act(pre)/pre (elementwise)."""
    tokens = model64.to_tokens(PROMPT)
    with gradient_rules(model64, ("identity",)):
        run = model64.run_with_grads(tokens, lambda lg: lg.sum(), ["m1.pre", "m1.post"])
    pre, post = run.activations["m1.pre"], run.activations["m1.post"]
    if model64.spec.architecture.startswith("GPT2"):
        ratio = post / interp._rules.stabilize(pre)
        torch.testing.assert_close(run.gradients["m1.pre"], run.gradients["m1.post"] * ratio)


def test_unknown_rules() -> None:
    model = interp.load_model("tiny-gpt2")
    with pytest.raises(InterpError, match="Did you mean 'relp'"), gradient_rules(model, "rlp"):
        pass
    with pytest.raises(InterpError, match="choose one"), gradient_rules(model, ("ah", "attnlrp")):
        pass
