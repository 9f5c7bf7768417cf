"""The hooked-model wrapper: caches, hooks, patches and gradients, checked against
independent computations; hooks leave no trace."""

from __future__ import annotations

import pytest
import torch

import interp
from interp import InterpError, ShapeError, UnknownSiteError, count_hooks
from tests.conftest import PROMPT
from tests.reference import grad_at, pristine_hf

OTHER = "When Lisa and Kevin went to the garden, Kevin gave a ring to"


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 5] - logits[:, -1, 7]).mean()


def flags(model: interp.TransformerModel) -> tuple:
    cfg = model.bridge.cfg
    return tuple(
        bool(getattr(cfg, f, False))
        for f in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")
    )


# -- no trace ------------------------------------------------------------------------------------


def test_contexts_leave_no_trace(tiny: interp.TransformerModel) -> None:
    tokens = tiny.to_tokens(PROMPT)
    before_out, before_hooks, before_flags = tiny(tokens), count_hooks(tiny.model), flags(tiny)
    every = ["a1.h2", "a1.h1<q>", "a0.h3<k>", "m0.in", "a1.z", "r1.mid@2", "logits"]
    with tiny.cache(every), tiny.hooks({"m0": lambda x, s: 2 * x}):
        assert count_hooks(tiny.model) > before_hooks
        assert flags(tiny) == (True, True, True)
        tiny(tokens)
    tiny.run_with_grads(tokens, logit_diff, every)
    with pytest.raises(RuntimeError, match="boom"), tiny.hooks({"a0": lambda x, s: x}):
        raise RuntimeError("boom")
    assert count_hooks(tiny.model) == before_hooks
    assert flags(tiny) == before_flags
    assert torch.equal(tiny(tokens), before_out)


def raw_hooks(model: interp.TransformerModel) -> int:
    """Every torch forward hook, the bridge's own capture hooks included."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.model.modules())


def raise_in_a_hook(model: interp.TransformerModel, failure: str) -> None:
    def fail(x: torch.Tensor, site: interp.Site) -> None:
        raise KeyboardInterrupt if failure == "interrupt" else ValueError("hook failed")

    site = {"hook": "a0.h1", "interrupt": "m1.in", "position": "r0.pre@99"}[failure]
    expected = {"hook": ValueError, "interrupt": KeyboardInterrupt, "position": ShapeError}
    with pytest.raises(expected[failure]), model.hooks({site: fail}):
        model(PROMPT)


@pytest.mark.parametrize("failure", ["hook", "interrupt", "position"])
def test_a_pass_that_raises_leaves_no_hook(failure: str) -> None:
    """A fresh model (no pass run yet) whose first pass raises: no hook stays behind, the
    bridge's capture hooks (`_capture_pre_ln1`, `_capture_mlp_in`) included, and its outputs are
    those of an untouched twin."""
    model, twin = interp.load_model("tiny-gpt2"), interp.load_model("tiny-gpt2")
    before = raw_hooks(model)
    assert count_hooks(model) == 0
    raise_in_a_hook(model, failure)
    assert count_hooks(model) == 0 and raw_hooks(model) == before
    assert torch.equal(model(PROMPT), twin(PROMPT))
    assert count_hooks(model) == 0 and raw_hooks(model) == before  # a clean pass adds none


def test_an_out_of_range_position_is_named(tiny: interp.TransformerModel) -> None:
    with pytest.raises(ShapeError, match=r"'r0.pre@99' selects position 99.*\(1, \d+, 64\)"):
        tiny.run_with_cache(PROMPT, ["r0.pre@99"])
    with pytest.raises(ShapeError, match="position -99"):
        tiny.run_with_grads(PROMPT, logit_diff, ["a1.h0@-99"])
    assert count_hooks(tiny) == 0


def test_restarting_with_bad_blocks_leaves_no_hook(tiny: interp.TransformerModel) -> None:
    """forward_from with a block past the last used to register its key/value hooks, then fail
    on the missing block with an IndexError and leave them on the model for good."""
    tokens = tiny.to_tokens(PROMPT)
    expected, hooks = tiny(tokens), raw_hooks(tiny)
    _, inputs = tiny.block_inputs(tokens, keep_kv=True)
    with pytest.raises(InterpError, match="stop must be an int in 0..2; got 99"):
        tiny.forward_from(0, inputs.resid[0][:, 2:], inputs, start=2, stop=99)
    with pytest.raises(InterpError, match="layer must be"):
        tiny.forward_from(-1, inputs.resid[0], inputs)
    with pytest.raises(InterpError, match="start must be"):
        tiny.forward_from(0, inputs.resid[0][:, :0], inputs, start=tokens.shape[1])
    assert raw_hooks(tiny) == hooks and count_hooks(tiny) == 0
    assert torch.equal(tiny(tokens), expected)


def test_module_model_leaves_no_trace(mlp: interp.ModuleModel) -> None:
    x = torch.randn(4, 5)
    before = mlp(x)
    with mlp.hooks({"1": lambda a, s: a * 0}), mlp.cache(["0:in", "3"]):
        assert not torch.equal(mlp(x), before)
    mlp.run_with_grads(x, lambda y: y.sum(), ["0:in", "2"])
    assert count_hooks(mlp.model) == 0
    assert torch.equal(mlp(x), before)


def test_hooks_nest_and_unwind(tiny: interp.TransformerModel) -> None:
    tokens = tiny.to_tokens(PROMPT)
    seen = []
    with tiny.hooks({"m0": lambda x, s: x * 0}):
        zeroed = tiny(tokens)
        with tiny.hooks({"m0": lambda x, s: seen.append(x.abs().max()) or x + 1}):
            both = tiny(tokens)
        assert torch.equal(tiny(tokens), zeroed)
    assert seen[-1] == 0  # the inner hook saw the outer hook's zeros
    assert not torch.equal(both, zeroed)


# -- caches agree with the model's own arithmetic ---------------------------------------------------


def test_cache_identities(tiny: interp.TransformerModel) -> None:
    spec = tiny.spec
    L = spec.n_layers - 1
    heads = [f"a{L}.h{h}" for h in range(spec.n_heads)]
    out, c = tiny.run_with_cache(
        PROMPT,
        [
            "r0.pre",
            f"r{L}.pre",
            f"r{L}.mid",
            f"r{L}.post",
            f"a{L}",
            f"m{L}",
            f"a{L}.z",
            "a0.h1.z",
            "logits",
            *heads,
        ],
    )
    torch.testing.assert_close(c[f"r{L}.mid"], c[f"r{L}.pre"] + c[f"a{L}"])
    torch.testing.assert_close(c[f"r{L}.post"], c[f"r{L}.mid"] + c[f"m{L}"])
    bias = c[f"a{L}"] - sum(c[h] for h in heads)  # heads sum to the block output minus b_O
    torch.testing.assert_close(bias, bias[:1, :1].expand_as(bias))
    assert c[f"a{L}.z"].shape == (1, 15, spec.n_heads, spec.d_head)
    torch.testing.assert_close(c["logits"], out)


def test_cache_matches_pristine_hf(tiny: interp.TransformerModel) -> None:
    hf = pristine_hf(tiny.spec.name, torch.float32)
    tokens = tiny.to_tokens(PROMPT)
    torch.testing.assert_close(tiny(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)


def test_head_and_position_views(tiny: interp.TransformerModel) -> None:
    _, c = tiny.run_with_cache(
        PROMPT,
        [
            "a1.z",
            "a1.h2.z",
            "a1.pattern",
            "a1.h2.pattern@4",
            "r1.pre",
            "r1.pre@-1",
            "a1.k",
            "a1.h3.k",
        ],
    )
    assert torch.equal(c["a1.h2.z"], c["a1.z"][:, :, 2])
    assert torch.equal(c["a1.h2.pattern@4"], c["a1.pattern"][:, 2, 4])
    assert torch.equal(c["r1.pre@-1"], c["r1.pre"][:, -1])
    assert torch.equal(c["a1.h3.k"], c["a1.k"][:, :, tiny.spec.kv_head(3)])


# -- patching --------------------------------------------------------------------------------------


def test_patching_the_whole_residual_reproduces_the_other_run(
    tiny: interp.TransformerModel,
) -> None:
    other, c = tiny.run_with_cache(OTHER, ["r1.pre"])
    with tiny.patch("r1.pre", c["r1.pre"]):
        patched = tiny(PROMPT)
    torch.testing.assert_close(patched, other)


def test_patching_every_head_equals_patching_the_block(tiny: interp.TransformerModel) -> None:
    heads = [f"a1.h{h}" for h in range(tiny.spec.n_heads)]
    _, c = tiny.run_with_cache(OTHER, ["a1", *heads])
    with tiny.patch({h: c[h] for h in heads}):
        by_heads = tiny(PROMPT)
    with tiny.patch("a1", c["a1"]):
        by_block = tiny(PROMPT)
    torch.testing.assert_close(by_heads, by_block, atol=1e-5, rtol=1e-5)


def test_one_head_one_position_patch(tiny: interp.TransformerModel) -> None:
    _, clean = tiny.run_with_cache(PROMPT, ["a0.h1"])
    _, other = tiny.run_with_cache(OTHER, ["a0.h1", "a0"])
    with tiny.patch("a0", other["a0.h1"][:, 3], head=1, pos=3), tiny.cache(["a0.h1"]) as seen:
        tiny(PROMPT)
    expected = clean["a0.h1"].clone()
    expected[:, 3] = other["a0.h1"][:, 3]
    assert torch.equal(seen["a0.h1"], expected)


@pytest.mark.parametrize("port", ["q", "k", "v"])
def test_reader_ports_fork_per_head(tiny: interp.TransformerModel, port: str) -> None:
    spec = tiny.spec
    _, base = tiny.run_with_cache(PROMPT, [f"a1.{port}"])
    with tiny.hooks({f"a1.h2<{port}>": lambda x, s: x * 3}), tiny.cache([f"a1.{port}"]) as c:
        tiny(PROMPT)
    target = spec.kv_head(2) if port in "kv" else 2
    n = base[f"a1.{port}"].shape[2]
    for h in range(n):
        # the split-qkv switch reorders float sums: unchanged heads agree to ~1e-7, not bitwise
        change = (c[f"a1.{port}"][:, :, h] - base[f"a1.{port}"][:, :, h]).abs().max()
        assert (change > 1e-5) == (h == target), (port, h, change)


# -- gradients -------------------------------------------------------------------------------------


# HF's Llama computes RMSNorm and the attention softmax in float32 even in a float64 model, so
# the pristine Llama reference is float64 only up to those steps.
@pytest.mark.parametrize(("name", "atol"), [("tiny-gpt2", 1e-12), ("tiny-llama", 1e-4)])
def test_gradients_equal_autograd_on_float64_reference(name: str, atol: float) -> None:
    model = interp.load_model(name, dtype=torch.float64)
    hf = pristine_hf(name)
    tokens = model.to_tokens([PROMPT, OTHER])
    sites = ["r0.pre", "r1.pre", "a0", "a1", "m0", "m1"]
    run = model.run_with_grads(tokens, logit_diff, sites)
    torch.testing.assert_close(run.value, logit_diff(hf(tokens).logits))
    for site in sites:
        expected = grad_at(hf, tokens, site, logit_diff)
        torch.testing.assert_close(run.gradients[site], expected, rtol=1e-9, atol=atol)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_gradients_equal_autograd_through_transformerlens_hooks(name: str) -> None:
    """Same float64 bridge, gradients taken by TransformerLens' own hook API + autograd."""
    model = interp.load_model(name, dtype=torch.float64)
    tokens = model.to_tokens([PROMPT, OTHER])
    names = {
        "r1.pre": "blocks.1.hook_resid_pre",
        "a0": "blocks.0.hook_attn_out",
        "m1": "blocks.1.hook_mlp_out",
        "a1.z": "blocks.1.attn.hook_z",
    }
    run = model.run_with_grads(tokens, logit_diff, list(names))
    for site, hook_name in names.items():
        captured = {}

        def keep(x, hook, captured=captured):
            captured["x"] = x.detach().requires_grad_(True)  # parameters are frozen
            return captured["x"]

        value = logit_diff(model.bridge.run_with_hooks(tokens, fwd_hooks=[(hook_name, keep)]))
        (expected,) = torch.autograd.grad(value, [captured["x"]])
        expected = expected.reshape(run.gradients[site].shape)
        torch.testing.assert_close(run.gradients[site], expected, rtol=1e-12, atol=1e-14)


def test_head_gradients_are_slices_and_backward_works(tiny: interp.TransformerModel) -> None:
    tokens = tiny.to_tokens(PROMPT)
    run = tiny.run_with_grads(tokens, logit_diff, ["a1<q>", "a1.h2<q>", "a0.h1@3"])
    assert torch.equal(run.gradients["a1.h2<q>"], run.gradients["a1<q>"][:, :, 2])
    with tiny.grad_cache(["a0.h1"]) as grads:  # plain loss.backward() fills the same cache
        logit_diff(tiny(tokens)).backward()
    # the two runs use different bridge switches, so they agree to float rounding only
    torch.testing.assert_close(grads["a0.h1"][:, 3], run.gradients["a0.h1@3"])


def test_module_model_input_gradient(mlp: interp.ModuleModel) -> None:
    x = torch.randn(3, 5)
    run = mlp.run_with_grads(x, lambda y: y[:, 0].sum(), ["0:in", "1"])
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(mlp.model(leaf)[:, 0].sum(), [leaf])
    torch.testing.assert_close(run.gradients["0:in"], expected)
    assert run.activations["1"].shape == (3, 8)


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_site_suggests_close_matches(tiny: interp.TransformerModel) -> None:
    with pytest.raises(UnknownSiteError, match="a1.h3"):
        tiny.run_with_cache(PROMPT, ["a1.h9"])
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        tiny.hooks({"a7": lambda x, s: x}).__enter__()


def test_wrong_patch_shape_names_site_and_shapes(tiny: interp.TransformerModel) -> None:
    with (
        pytest.raises(ShapeError, match=r"\(1, 15, 64\).*'a0', got \(3, 7\)"),
        tiny.patch("a0", torch.zeros(3, 7)),
    ):
        tiny(PROMPT)
    assert torch.equal(tiny(PROMPT), tiny(PROMPT))


def test_metric_must_be_scalar(tiny: interp.TransformerModel) -> None:
    with pytest.raises(ShapeError, match="scalar"):
        tiny.run_with_grads(PROMPT, lambda lg: lg[:, -1], ["a0"])


def test_bad_inputs(tiny: interp.TransformerModel, mlp: interp.ModuleModel) -> None:
    with pytest.raises(ShapeError, match="integer"):
        tiny(torch.zeros(1, 4))
    with pytest.raises(InterpError, match="callable"):
        tiny.hooks({"a0": 3}).__enter__()
    with pytest.raises(InterpError, match="returned"), tiny.hooks({"a0": lambda x, s: 1.0}):
        tiny(PROMPT)
    with pytest.raises(UnknownSiteError, match="0:in"):
        mlp.resolve("7")


# -- wrapping and restarting at a block ----------------------------------------------------------


def test_wrap_reads_the_spec_off_a_bridge(tiny: interp.TransformerModel) -> None:
    wrapped = interp.wrap(tiny.bridge)
    assert isinstance(wrapped, interp.TransformerModel)
    assert wrapped.spec == tiny.spec.__class__(**{**tiny.spec.to_dict(), "name": "bridge"})
    assert interp.wrap(tiny) is tiny
    assert isinstance(interp.wrap(torch.nn.Linear(2, 2)), interp.ModuleModel)


def test_restarting_at_any_block_reproduces_the_run(tiny: interp.TransformerModel) -> None:
    """forward_from on what block_inputs recorded gives the model's logits from every block, from
    a later position on (keys and values of the earlier ones reused), for stacked copies of the
    batch, up to a given block only, and with the attention output handed in; no hook remains."""
    tokens = tiny.to_tokens([PROMPT, OTHER])
    expected = tiny(tokens)
    hooks = count_hooks(tiny.model)  # after a first pass: the bridge wires some hooks of its own
    logits, inputs = tiny.block_inputs(tokens, keep_kv=True)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    last = tiny.spec.n_layers - 1
    for layer in range(tiny.spec.n_layers):
        again = tiny.forward_from(layer, inputs.resid[layer], inputs)
        torch.testing.assert_close(again, logits, atol=1e-5, rtol=0)
        later = tiny.forward_from(layer, inputs.resid[layer][:, 5:], inputs, start=5)
        torch.testing.assert_close(later, logits[:, 5:], atol=1e-5, rtol=0)
    copies = tiny.forward_from(last, inputs.resid[last].repeat(3, 1, 1), inputs)
    torch.testing.assert_close(copies, logits.repeat(3, 1, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        tiny.forward_from(0, inputs.resid[0], inputs, stop=last), inputs.resid[last]
    )
    _, cache = tiny.run_with_cache(tokens, [f"a{last}.z", f"a{last}"])
    attn_out = tiny.attention_output(last, cache[f"a{last}.z"])
    torch.testing.assert_close(attn_out, cache[f"a{last}"], atol=1e-5, rtol=0)
    given = tiny.forward_from(last, inputs.resid[last], inputs, attn_out=attn_out)
    torch.testing.assert_close(given, logits, atol=1e-5, rtol=0)
    final = torch.randn(2, 3, tiny.spec.d_model)
    vocab = torch.tensor([4, 0, 9])
    torch.testing.assert_close(tiny.unembed(final, vocab), tiny.unembed(final)[..., vocab])
    assert count_hooks(tiny.model) == hooks
    with pytest.raises(InterpError, match="keep_kv"):
        tiny.forward_from(0, inputs.resid[0][:, 5:], tiny.block_inputs(tokens)[1], start=5)
    with pytest.raises(ShapeError, match="copies"):
        tiny.forward_from(0, inputs.resid[0][:1], inputs)


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_narrowed_logits_are_the_full_ones_at_those_places(name: str) -> None:
    """narrow_logits: a forward (or a gradient run) computes only the given positions and
    token ids, and they equal the full logits there, in values and in gradients; a hook on
    the logits still sees all of them; nothing stays behind, and bad positions are named."""
    model = interp.load_model(name, dtype=torch.float64)
    tokens = model.to_tokens([PROMPT, OTHER, PROMPT])
    full = model(tokens)
    rows, at = torch.arange(3), torch.tensor([5, 3, 9])
    vocab = torch.tensor([7, 0, 30])
    with model.narrow_logits(at, vocab) as narrowed:
        out = model(tokens)
    assert narrowed and out.shape == (3, 3)
    torch.testing.assert_close(out, full[rows, at][:, vocab], rtol=1e-12, atol=1e-12)
    with model.narrow_logits(at, None):  # every token, one position a row
        torch.testing.assert_close(model(tokens), full[rows, at], rtol=1e-12, atol=1e-12)
    with model.without_logits():
        assert model(tokens).shape == (3, tokens.shape[1], 0)

    def metric(logits: torch.Tensor) -> torch.Tensor:  # the same value from either shape
        picked = logits[rows, at][:, vocab] if logits.ndim == 3 else logits
        return (picked[:, 0] - picked[:, 2]).mean()

    sites = ["r0.pre", "a1.h1", "m1"]
    expected = model.run_with_grads(tokens, metric, sites)
    with model.narrow_logits(at, vocab):
        run = model.run_with_grads(tokens, metric, sites)
    torch.testing.assert_close(run.value, expected.value)
    for site in sites:
        torch.testing.assert_close(run.gradients[site], expected.gradients[site])
    seen = []
    with (
        model.hooks({"logits": lambda x, site: seen.append(x.shape)}),
        model.narrow_logits(at, vocab),
    ):
        torch.testing.assert_close(model(tokens), full[rows, at][:, vocab])
    assert seen == [full.shape]
    hooks = count_hooks(model.model)
    with (
        pytest.raises(ShapeError, match="one position per row"),
        model.narrow_logits(at[:2], vocab),
    ):
        model(tokens)
    with pytest.raises(ShapeError, match="vocab must lie in"):
        model.narrow_logits(at, torch.tensor([10**6])).__enter__()
    with pytest.raises(ShapeError, match="1-D tensor of integers"):
        model.narrow_logits(at.float(), vocab).__enter__()
    with pytest.raises(InterpError, match="nest"), model.narrow_logits(at, vocab):
        model.without_logits().__enter__()
    assert count_hooks(model.model) == hooks
    torch.testing.assert_close(model(tokens), full)


def test_narrowed_logits_do_not_depend_on_the_rows_beside_them(
    tiny: interp.TransformerModel,
) -> None:
    """A prompt's narrowed logits are the same bits whether it runs alone or in a batch (the
    unembedding of few rows takes another summation order unless padded), so a metric does
    not depend on how prompts are chunked."""
    tokens = tiny.to_tokens([PROMPT, OTHER, PROMPT, OTHER, OTHER])
    at = torch.full((5,), tokens.shape[1] - 1)
    with tiny.narrow_logits(at, None):
        together = tiny(tokens)
    for size in (1, 2, 3):
        with tiny.narrow_logits(at[:size], None):
            alone = tiny(tokens[:size])
        assert torch.equal(alone, together[:size])


def test_transformers_output_capturing_hooks_are_not_ours() -> None:
    """transformers installs permanent output-capturing hooks the first time TransformerLens'
    own run_with_cache asks for attentions; they are the library's, not a leak of ours."""
    model = interp.load_model("tiny-gpt2")
    task_tokens = model.to_tokens(["When Mary and John went to the store, John gave"])
    assert interp.count_hooks(model) == 0
    model.bridge.run_with_cache(task_tokens)
    names = [
        getattr(fn, "__qualname__", "")
        for m in model.bridge.modules()
        for fn in m._forward_hooks.values()
    ]
    assert any(name.endswith("output_capturing_hook") for name in names)
    assert interp.count_hooks(model) == 0
    with model.hooks({"a0.z": lambda x, site: x}):
        assert interp.count_hooks(model) == 1
