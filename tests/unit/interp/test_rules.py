"""Gradient rule sets: forward values unchanged, conservation, and each rule acting."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

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


# -- rules as objects: the registry, validation, and one handle that undoes everything ------------


@pytest.fixture
def registry():
    """Rules and composites registered by a test are gone after it."""
    rules, composites = dict(interp._rule_core._RULES), dict(interp._rule_core._COMPOSITES)
    yield
    interp._rule_core._RULES.clear()
    interp._rule_core._RULES.update(rules)
    interp._rule_core._COMPOSITES.clear()
    interp._rule_core._COMPOSITES.update(composites)


def lens_hooks(model: interp.TransformerModel) -> int:
    """Hooks in TransformerLens' own lists (next to torch's, which count_hooks counts)."""
    return sum(len(point.fwd_hooks) for point in model.bridge.hook_dict.values())


def test_registry_lists_every_transformer_set_with_a_description() -> None:
    names = list(interp.RULE_SETS)
    assert names[:4] == ["relp", "relp-ah", "attnlrp", "relp-eps"]
    assert all(interp.RULE_SETS[n].description for n in names)
    assert "relp" in interp.RULE_SETS and "epsilon" not in interp.RULE_SETS
    # built-ins first (docstring examples may have registered more by now)
    assert list(interp.COMPOSITES)[:3] == ["epsilon", "zplus", "epsilon-plus"]
    assert [r.name for r in interp.RULE_SETS["attnlrp"].rules] == [
        "ln",
        "identity",
        "half",
        "attnlrp",
    ]


def test_rule_names_are_checked_with_close_matches(tiny_gpt2) -> None:
    with pytest.raises(InterpError, match="Did you mean 'identity'"):
        gradient_rules(tiny_gpt2, ("ln", "identiy"))
    with pytest.raises(InterpError, match="plain torch modules"):
        gradient_rules(tiny_gpt2, "epsilon-plus")
    with pytest.raises(InterpError, match="no option 'epsilom'.*Did you mean 'epsilon'"):
        gradient_rules(tiny_gpt2, "relp-eps", epsilom=0.1)
    with pytest.raises(InterpError, match="TransformerModel"):
        gradient_rules(torch.nn.Linear(2, 2), "relp")


@pytest.mark.parametrize("where", ["registration", "block"])
def test_every_hook_is_removed_after_an_exception(tiny_gpt2, where: str) -> None:
    @dataclass(frozen=True)
    class Failing(interp.Rule):
        name = "failing"
        kind = "transformer"

        def register(self, model, handles):
            handles.hook_point(model, "blocks.0.hook_resid_pre", lambda x: None)
            handles.module_hook(model.bridge.blocks[0], lambda module, args, out: None)
            if where == "registration":
                raise RuntimeError("failed half-way")

    tokens = tiny_gpt2.to_tokens(PROMPT)
    before = tiny_gpt2(tokens)
    counts = count_hooks(tiny_gpt2.model), lens_hooks(tiny_gpt2)
    filters = list(warnings.filters)
    rules = ("ln", "identity", "half", "ah", "epsilon", Failing())
    with pytest.raises(RuntimeError, match="half-way"), gradient_rules(tiny_gpt2, rules):
        raise RuntimeError("failed half-way in the block")
    assert (count_hooks(tiny_gpt2.model), lens_hooks(tiny_gpt2)) == counts
    assert list(warnings.filters) == filters
    assert torch.equal(tiny_gpt2(tokens), before)


def test_a_rule_and_a_set_are_added_in_one_place(tiny_gpt2, registry) -> None:
    """The extension path a contributor uses: one decorated class and one call."""

    @interp.register_rule
    @dataclass(frozen=True)
    class ConstantScores(interp.Rule):
        name = "constant-scores"
        kind = "transformer"
        claims = frozenset({"attention"})

        def register(self, model, handles):
            for layer in range(model.spec.n_layers):
                name = f"blocks.{layer}.attn.hook_attn_scores"
                handles.hook_point(model, name, torch.Tensor.detach)

    interp.register_composite(
        "relp-cs", ("ln", "identity", "half", "constant-scores"), description="test"
    )
    assert "relp-cs" in interp.RULE_SETS
    with gradient_rules(tiny_gpt2, "relp-cs"):
        run = tiny_gpt2.run_with_grads(PROMPT, metric, ["a1.q", "a1.v"])
    assert run.gradients["a1.q"].abs().max() == 0 < run.gradients["a1.v"].abs().max()
    with pytest.raises(InterpError, match="both define attention; choose one"):
        interp.register_composite("bad", ("ah", "constant-scores"), description="test")
    with pytest.raises(InterpError, match="already registered"):
        interp.register_composite("relp", ("ln",), description="test")
    with pytest.raises(InterpError, match="already registered"):
        interp.register_rule(ConstantScores)


# -- the epsilon rule on transformer blocks --------------------------------------------------------


def epsilon_ratio(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z / (z + eps * torch.sign(z))


@pytest.mark.parametrize("per_head", [False, True])
def test_epsilon_rule_matches_a_float64_reference_through_one_block(per_head: bool) -> None:
    """Hand-written LRP through block 1 of tiny-gpt2 (no biases), from the coefficients at the
    MLP and attention outputs back to the MLP input and to z: epsilon at W_out and W_in,
    Identity at the activation, LN at ln2; epsilon at W_O (also when per-head results are on)."""
    model = interp.load_model("tiny-gpt2", dtype=torch.float64)
    block, eps = model.bridge.blocks[1], 0.05
    tokens = model.to_tokens([PROMPT, OTHER])
    sites = ["m1.in", "m1.pre", "m1.post", "m1", "a1", "a1.z"] + (["a1.h0"] if per_head else [])
    with gradient_rules(model, "relp-eps", epsilon=eps):
        run = model.run_with_grads(tokens, metric, sites)
    act, rho = run.activations, run.gradients

    # MLP: out = W_out post, post = gelu(pre), pre = W_in ln2(x)
    out_share = rho["m1"] * epsilon_ratio(act["m1"], eps)
    torch.testing.assert_close(rho["m1.post"], out_share @ block.mlp.W_out.T)
    # the epsilon rule absorbs relevance exactly as its formula says: sum R_in = sum R_out z/(z+eps)
    torch.testing.assert_close(
        (act["m1.post"] * rho["m1.post"]).sum(), (act["m1"] * out_share).sum()
    )
    assert (act["m1"] * out_share).sum().abs() < (act["m1"] * rho["m1"]).sum().abs()
    gains = act["m1.post"] / interp._rules.stabilize(act["m1.pre"])
    torch.testing.assert_close(rho["m1.pre"], rho["m1.post"] * gains)
    rho_ln2 = (rho["m1.pre"] * epsilon_ratio(act["m1.pre"], eps)) @ block.mlp.W_in.T
    x, ln2 = act["m1.in"], block.ln2.original_component
    centred = x - x.mean(-1, keepdim=True)
    scaled = rho_ln2 * ln2.weight * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + ln2.eps)
    torch.testing.assert_close(rho["m1.in"], scaled - scaled.mean(-1, keepdim=True))

    # attention output: a1 = sum_h z_h W_O[h]
    attn_share = rho["a1"] * epsilon_ratio(act["a1"], eps)
    expected = torch.einsum("bpm,hdm->bphd", attn_share, block.attn.W_O)
    torch.testing.assert_close(rho["a1.z"], expected)


def test_epsilon_rule_tends_to_relp(model64) -> None:
    """As epsilon -> 0 the ratio z / (z + eps sign z) -> 1 wherever z != 0: relp-eps gives
    relp's relevance. (Where z = 0 it is 0: tiny-llama's BOS embedding is zero, so the
    coefficients there differ while the relevance, zero, does not.)"""
    tokens = model64.to_tokens([PROMPT, OTHER])
    sites = ["r0.pre", "a1.z", "m1.pre", "m1.post"]

    def relevance(rules: str, **options: float) -> dict[str, torch.Tensor]:
        with gradient_rules(model64, rules, **options):
            run = model64.run_with_grads(tokens, metric, sites)
        return {site: run.activations[site] * run.gradients[site] for site in sites}

    plain, tiny = relevance("relp"), relevance("relp-eps", epsilon=1e-13)
    for site in sites:
        torch.testing.assert_close(tiny[site], plain[site], rtol=1e-5, atol=1e-9)
    large = relevance("relp-eps", epsilon=1.0)
    assert large["r0.pre"].sum().abs() < 0.9 * plain["r0.pre"].sum().abs()
