"""Batched activation patching against TransformerLens' own patching functions."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tl_patching

import interp
from circuits import activation_patching, ioi_task, lookahead_patching

CASES = [
    ("heads", False, tl_patching.get_act_patch_attn_head_out_all_pos),
    ("heads", True, tl_patching.get_act_patch_attn_head_out_by_pos),
    ("resid", True, tl_patching.get_act_patch_resid_pre),
    ("attn", True, tl_patching.get_act_patch_attn_out),
    ("mlp", True, tl_patching.get_act_patch_mlp_out),
]


@pytest.mark.parametrize(("component", "per_position", "reference"), CASES)
def test_equals_transformerlens(
    tiny: interp.TransformerModel, component, per_position, reference
) -> None:
    task = ioi_task(tiny, 5, seed=2, template_ids=[3])
    _, clean_cache = tiny.bridge.run_with_cache(task.clean)
    expected = reference(tiny.bridge, task.corrupt, clean_cache, task.logit_diff)
    # a small budget forces several passes per layer, exercising the chunking
    ours = activation_patching(
        tiny, task, component, per_position=per_position, tokens_per_pass=40, progress=False
    )
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected.float(), atol=1e-4, rtol=0)


def test_block_every_matches(tiny_llama: interp.TransformerModel) -> None:
    task = ioi_task(tiny_llama, 3, seed=5, template_ids=[0])
    _, clean_cache = tiny_llama.bridge.run_with_cache(task.clean)
    expected = tl_patching.get_act_patch_block_every(
        tiny_llama.bridge, task.corrupt, clean_cache, task.logit_diff
    )
    ours = torch.stack(
        [
            activation_patching(tiny_llama, task, c, per_position=True, progress=False)
            for c in ("resid", "attn", "mlp")
        ]
    )
    torch.testing.assert_close(ours, expected.float(), atol=1e-4, rtol=0)


def test_noising_patches_corrupted_values_into_the_clean_run(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=1, template_ids=[0])
    ours = activation_patching(tiny_gpt2, task, "heads", direction="noising", progress=False)
    _, corrupt = tiny_gpt2.run_with_cache(task.corrupt, ["a1.z"])
    with tiny_gpt2.patch("a1.h2.z", corrupt["a1.z"][:, :, 2]):
        expected = task.logit_diff(tiny_gpt2(task.clean))
    torch.testing.assert_close(ours[1, 2], expected, atol=1e-5, rtol=0)


def test_mixed_lengths_use_each_prompts_last_token(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 6, seed=0)  # several templates: right-padded prompts
    assert not task.equal_lengths
    values = activation_patching(tiny_gpt2, task, "mlp", progress=False)
    _, clean = tiny_gpt2.run_with_cache(task.clean, ["m0"])
    with tiny_gpt2.patch("m0", clean["m0"]):
        expected = task.logit_diff(tiny_gpt2(task.corrupt))
    torch.testing.assert_close(values[0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("component", ["resid", "heads"])
def test_mixed_lengths_per_position_equal_one_patch_at_a_time(tiny, component) -> None:
    """Per-position cells skip the positions before the patch (and before the first differing
    token); on right-padded prompts of several lengths each cell must still equal a plain
    forward pass with that one activation patched."""
    task = ioi_task(tiny, 4, seed=3)
    assert not task.equal_lengths
    values = activation_patching(
        tiny, task, component, per_position=True, tokens_per_pass=200, progress=False
    )
    site = "r{L}.pre" if component == "resid" else "a{L}.z"
    n_pos = task.clean.shape[1]
    for layer in range(tiny.spec.n_layers):
        name = site.format(L=layer)
        _, clean = tiny.run_with_cache(task.clean, [name])
        for pos in range(n_pos):
            patched = tiny.run_with_cache(task.corrupt, [name])[1][name].clone()
            if component == "resid":
                patched[:, pos] = clean[name][:, pos]
                cell = values[layer, pos]
            else:
                patched[:, pos, 1] = clean[name][:, pos, 1]
                cell = values[layer, pos, 1]
            with tiny.patch(name, patched):
                expected = task.logit_diff(tiny(task.corrupt))
            torch.testing.assert_close(cell, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("component", ["resid", "attn"])
def test_lookahead_is_exact_blocks_then_the_gradient(tiny, component) -> None:
    """With one exact block, a layer-0 cell is m(base) + grad(r1) . (r1 patched - r1 base),
    the patched r1 from a plain forward pass with that one activation patched."""
    task = ioi_task(tiny, 4, seed=3)  # mixed lengths
    ours = lookahead_patching(tiny, task, component, blocks=1, progress=False)
    site = "r0.pre" if component == "resid" else "a0"
    run = tiny.run_with_grads(task.corrupt, task.logit_diff, ["r1.pre"])
    _, clean = tiny.run_with_cache(task.clean, [site])
    _, corrupt = tiny.run_with_cache(task.corrupt, [site])
    for pos in range(task.clean.shape[1]):
        patched = corrupt[site].clone()
        patched[:, pos] = clean[site][:, pos]
        with tiny.patch(site, patched):
            _, after = tiny.run_with_cache(task.corrupt, ["r1.pre"])
        delta = after["r1.pre"] - run.activations["r1.pre"]
        expected = run.value + (delta * run.gradients["r1.pre"]).sum()
        torch.testing.assert_close(ours[0, pos], expected.to(ours.dtype), atol=1e-5, rtol=0)
    # the last layer has no block after it to extrapolate from: it is patched exactly
    exact = activation_patching(tiny, task, component, per_position=True, progress=False)
    torch.testing.assert_close(ours[-1], exact[-1], atol=1e-5, rtol=0)
    with pytest.raises(interp.InterpError, match="blocks"):
        lookahead_patching(tiny, task, component, blocks=0)


@pytest.mark.parametrize("broken", ["unsliced", "shifted", "attention"])
def test_shortcuts_fall_back_when_they_are_not_exact(tiny_llama, monkeypatch, broken) -> None:
    """If restarting at a later position, or handing a block its attention output instead of
    running the attention, does not reproduce the model's logits (here: the per-position block
    arguments are left whole or shifted; the attention output handed over in a form the block
    reads wrongly), patching warns and runs everything; results stay exact."""
    import interp._restart as hooked

    task = ioi_task(tiny_llama, 3, seed=5, template_ids=[0])
    component = "heads" if broken == "attention" else "resid"
    expected = activation_patching(tiny_llama, task, component, per_position=True, progress=False)
    if broken == "attention":
        original = hooked._Returning
        monkeypatch.setattr(
            hooked, "_Returning", lambda module, value: original(module, (value[0] * 0.5, None))
        )
    else:
        original = hooked._from_position
        wrong = {
            "unsliced": lambda obj, start, n_pos: obj,
            "shifted": lambda obj, start, n_pos: original(obj, max(start - 1, 0), n_pos - 1),
        }
        monkeypatch.setattr(hooked, "_from_position", wrong[broken])
    with pytest.warns(UserWarning, match="every position is recomputed"):
        ours = activation_patching(tiny_llama, task, component, per_position=True, progress=False)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_forward_from_reads_only_what_is_asked(tiny) -> None:
    """Unembedding only some positions and token ids gives the same logits as the full pass;
    a hook on the last block still sees every position (its MLP is then not narrowed)."""
    task = ioi_task(tiny, 4, seed=3)  # mixed lengths: one read position per row
    logits, inputs = tiny.block_inputs(task.corrupt, keep_kv=True)
    rows, last = torch.arange(len(task)), task.last_positions()
    vocab = torch.tensor([3, 5, 11])
    out = tiny.forward_from(0, inputs.resid[0], inputs, positions=last, vocab=vocab)
    torch.testing.assert_close(out, logits[rows, last][:, vocab], atol=1e-5, rtol=0)
    shapes = []
    top = tiny.spec.n_layers - 1
    with tiny.hooks({f"m{top}": lambda x, site: shapes.append(x.shape)}):
        tiny.forward_from(0, inputs.resid[0], inputs, positions=last)
    assert shapes == [logits.shape[:2] + (tiny.spec.d_model,)]


def test_bad_arguments(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(interp.InterpError, match="component"):
        activation_patching(tiny_gpt2, task, "neurons")
    with pytest.raises(interp.InterpError, match="direction"):
        activation_patching(tiny_gpt2, task, "heads", direction="sideways")
