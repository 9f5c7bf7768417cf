"""Models users bring, through the public API at edge level: bridges built with TransformerLens'
own ``boot_transformers`` (GPT-2, Llama, and GPT-Neo, whose attention is the generic
``AttentionBridge``), TL-native models (``boot_native``: the generic ``AttentionBridge`` too),
tasks built from token ids, and a bidirectional model. Each is checked against a reference
computed without the toolkit: the model's weights (``tests/reference.py``), plain per-cell
patching with torch hooks of our own, or the same weights loaded through ``load_model``."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import transformers
from transformer_lens import patching as tl_patching
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge

import interp
from circuits import (
    Task,
    activation_patching,
    discover,
    edge_patching,
    faithfulness,
    ioi_task,
    prepare_edge_model,
)
from interp._loading import _tiny_gpt2_config, _tiny_llama_config, word_tokenizer, word_vocabulary
from tests.reference import (
    native_graph_forward,
    per_cell_patching,
    pristine_hf,
    pristine_native,
)

NATIVE = {
    "causal": {},
    "bidirectional": {"attention_dir": "bidirectional"},
    # rotary positions, RMS norms, a gated MLP and grouped keys and values
    "llama-like": {
        "n_key_value_heads": 2,
        "positional_embedding_type": "rotary",
        "normalization_type": "RMS",
        "gated_mlp": True,
        "act_fn": "silu",
    },
}


def native_config(kind: str) -> TransformerBridgeConfig:
    sizes = {"normalization_type": "LN", "act_fn": "gelu", **NATIVE[kind]}
    return TransformerBridgeConfig(
        d_model=32, d_head=8, n_heads=4, n_layers=2, n_ctx=64, d_mlp=64, seed=0,
        d_vocab=len(word_vocabulary()), **sizes,
    )  # fmt: skip


@pytest.fixture(scope="module", params=list(NATIVE))
def native(request) -> tuple[str, interp.TransformerModel]:
    bridge = TransformerBridge.boot_native(native_config(request.param), tokenizer=word_tokenizer())
    return request.param, interp.wrap(bridge)


@pytest.fixture(scope="module")
def bidirectional() -> interp.TransformerModel:
    config = native_config("bidirectional")
    return interp.wrap(TransformerBridge.boot_native(config, tokenizer=word_tokenizer()))


def user_bridge(name: str) -> interp.TransformerModel:
    """A bridge built the way TransformerLens documents it, on a config-built HF model (the
    tiny models' config and seed), wrapped with ``interp.wrap``: no ``load_model``."""
    make, cls, hub = {
        "tiny-gpt2": (_tiny_gpt2_config, transformers.GPT2LMHeadModel, "gpt2"),
        "tiny-llama": (_tiny_llama_config, transformers.LlamaForCausalLM, "meta-llama/Llama-3.2-1B"),
    }[name]  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = cls(make())
    bridge = TransformerBridge.boot_transformers(hub, hf_model=hf_model, tokenizer=word_tokenizer())
    return interp.wrap(bridge)


def logit_diff(task: Task):
    rows = torch.arange(len(task))

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[rows, task.lengths - 1]
        return (last[rows, task.answer] - last[rows, task.wrong]).mean()

    return metric


# -- a bridge the user built ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def user_and_ours(request) -> tuple[str, interp.TransformerModel, interp.TransformerModel]:
    return request.param, user_bridge(request.param), interp.load_model(request.param)


def test_user_built_bridge_scores_edges_like_load_model(user_and_ours) -> None:
    """The same weights give the same edge scores whether the bridge came from ``load_model``
    or from the user (tiny-llama's grouped keys and values are then ungrouped from the bridge
    itself: it has no ``from_hf`` record)."""
    _, user, ours = user_and_ours
    task = ioi_task(ours, 3, seed=1, template_ids=[2])
    got, expected = discover(user, task, "eap-ig", "edge"), discover(ours, task, "eap-ig", "edge")
    torch.testing.assert_close(got.edge_scores, expected.edge_scores, atol=1e-6, rtol=1e-5)
    circuit = got.top(30)
    assert faithfulness(user, circuit, task) == pytest.approx(faithfulness(ours, circuit, task))
    assert interp.count_hooks(user) == 0


def test_user_built_bridge_patches_exactly(user_and_ours) -> None:
    name, user, _ = user_and_ours
    task = ioi_task(user, 3, seed=2, template_ids=[6])
    # every edge patched is the corrupted run, measured on a pristine HF model
    model, layout = prepare_edge_model(user)
    every = layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool))
    with torch.no_grad():
        corrupted = logit_diff(task)(pristine_hf(name)(task.corrupt).logits)
    assert float(edge_patching(model, task, every)) == pytest.approx(float(corrupted), abs=1e-4)
    patched = activation_patching(user, task, "heads", progress=False)
    assert interp.count_hooks(user) == 0
    # against TransformerLens' own per-cell patching on the user's bridge (its run_with_cache
    # leaves transformers' output-capturing hooks on the model: checked last)
    _, clean_cache = user.bridge.run_with_cache(task.clean)
    reference = tl_patching.get_act_patch_attn_head_out_all_pos(
        user.bridge, task.corrupt, clean_cache, logit_diff(task)
    )
    torch.testing.assert_close(patched, reference.float(), atol=1e-4, rtol=0)


def test_user_built_bridge_with_the_generic_attention() -> None:
    """GPT-Neo's bridge hands attention to the wrapped HF module (the generic AttentionBridge,
    with a local-attention layer): edge patching with the forks gives the corrupted run with
    every edge patched and the clean one with none (measured on a pristine copy), and patching
    all of a head's out-edges equals patching its ``z`` with a hook of our own."""
    config = transformers.GPTNeoConfig(
        vocab_size=len(word_vocabulary()), hidden_size=32, num_layers=2, num_heads=4,
        attention_types=[[["global", "local"], 1]], window_size=6, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf_model = transformers.GPTNeoForCausalLM(config).eval()
    pristine = copy.deepcopy(hf_model)
    bridge = TransformerBridge.boot_transformers(
        "EleutherAI/gpt-neo-125M", hf_model=hf_model, tokenizer=word_tokenizer()
    )
    model = interp.wrap(bridge)
    assert type(bridge.blocks[0].attn).__name__ == "AttentionBridge"
    task = ioi_task(model, 3, seed=5, template_ids=[1])
    edge_model, layout = prepare_edge_model(model)
    n_heads, d_head = model.spec.n_heads, model.spec.d_head
    masks = torch.zeros(2 + n_heads, layout.n_readers, layout.n_writers, dtype=torch.bool)
    masks[0] = layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool))
    for h in range(n_heads):  # every out-edge of head a0.h{h}
        masks[2 + h, :, layout.writer_index[f"a0.h{h}"]] = True
    masks[2:] &= masks[0].clone()  # real edges only
    got = edge_patching(edge_model, task, masks, run="clean", source="corrupt")
    with torch.no_grad():
        for i, tokens in enumerate((task.corrupt, task.clean)):
            expected = logit_diff(task)(pristine(tokens).logits)
            assert float(got[i]) == pytest.approx(float(expected), abs=1e-5)
    heads = [(slice(None), slice(None), slice(h * d_head, (h + 1) * d_head)) for h in range(4)]
    by_z = per_cell_patching(
        model, task.clean, task.corrupt, logit_diff(task), bridge.blocks[0].attn.o, heads,
        on_input=True,
    )  # fmt: skip
    torch.testing.assert_close(got[2:], torch.stack(by_z), atol=1e-5, rtol=0)
    graph = discover(model, task, "eap-ig", "edge", ig_steps=2)
    assert graph.edge_scores.isfinite().all() and interp.count_hooks(model) == 0


# -- TransformerLens-native models: the generic AttentionBridge -----------------------------------


def test_native_forks_leave_the_model_unchanged(native) -> None:
    """The per-head forks built for the generic AttentionBridge compute the same function, fire
    the bridge's own hooks (``hook_result`` sums to the attention output) and leave nothing
    behind."""
    _, model = native
    prompt = "When Mary and John went to the store, John gave a drink to"
    plain, cache = model.run_with_cache(prompt, ["a1", "a1.z"])
    sites = ["a0.result", "a1.result", "a0<q>", "a1<k>", "a1<v>", "m1.in"]
    with torch.no_grad(), model.cache(sites) as forked:
        logits = model(prompt)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)
    o = model.bridge.blocks[1].attn.o.original_component
    torch.testing.assert_close(forked["a1.result"].sum(2) + o.bias, cache["a1"], atol=1e-5, rtol=0)
    w = o.weight.unflatten(1, (model.spec.n_heads, model.spec.d_head))
    result = torch.einsum("bphe,mhe->bphm", cache["a1.z"], w)
    torch.testing.assert_close(forked["a1.result"], result, atol=1e-5, rtol=0)
    resid = model.run_with_cache(prompt, ["r0.pre"])[1]["r0.pre"]
    assert torch.equal(forked["a0<q>"], resid[:, :, None].expand_as(forked["a0<q>"]))
    assert interp.count_hooks(model) == 0
    assert not model.bridge.cfg.use_attn_result  # switched back off


def test_native_edge_patching_equals_the_weights(native) -> None:
    """Edge patching with the forks equals path patching computed from the model's weights
    (float64), for single edges into every kind of reader and for random sets of edges."""
    kind, model = native
    task = ioi_task(model, 3, seed=4, template_ids=[1])
    edge_model, layout = prepare_edge_model(model)
    reference = pristine_native(native_config(kind))
    _, source = native_graph_forward(reference, task.clean)
    generator = torch.Generator().manual_seed(0)
    n_edges = len(layout.edge_src)
    picks = [
        *(torch.tensor([i]) for i in (0, 1, 2, n_edges // 2, n_edges - 1)),  # q, k, v, mlp, logits
        *(torch.randperm(n_edges, generator=generator)[:k] for k in (3, 20, n_edges // 2)),
    ]
    masks = torch.zeros(len(picks), layout.n_readers, layout.n_writers, dtype=torch.bool)
    expected = []
    for i, pick in enumerate(picks):
        masks[i, layout.edge_reader[pick], layout.edge_writer[pick]] = True
        edges = [
            (layout.writers[int(layout.edge_writer[e])], layout.readers[int(layout.edge_reader[e])])
            for e in pick
        ]
        logits, _ = native_graph_forward(reference, task.corrupt, source=source, edges=edges)
        expected.append(logit_diff(task)(logits))
    got = edge_patching(edge_model, task, masks, run="corrupt", source="clean")
    torch.testing.assert_close(got.double(), torch.stack(expected), atol=1e-4, rtol=0)


def test_native_eap_equals_the_gradients_of_the_weights(native) -> None:
    """``discover(..., "eap", "edge")`` on a native model: (clean - corrupted writer output) .
    (gradient of the metric at the reader's own residual copy), from the weights by autograd."""
    kind, model = native
    task = ioi_task(model, 3, seed=2, template_ids=[4])
    graph = discover(model, task, "eap", "edge")
    layout = graph.layout
    reference = pristine_native(native_config(kind))
    _, clean = native_graph_forward(reference, task.clean)
    probes = {
        reader: torch.zeros(
            *task.corrupt.shape, model.spec.d_model, dtype=torch.float64
        ).requires_grad_(True)
        for reader in layout.readers
    }
    logits, corrupt = native_graph_forward(reference, task.corrupt, probes=probes)
    grads = torch.autograd.grad(logit_diff(task)(logits), list(probes.values()))
    grads = dict(zip(probes, grads, strict=True))
    expected = torch.stack(
        [
            ((clean[w] - corrupt[w]).detach() * grads[r]).sum()
            for w, r in (
                (layout.writers[int(w)], layout.readers[int(r)])
                for w, r in zip(layout.edge_writer, layout.edge_reader, strict=True)
            )
        ]
    )
    scale = float(expected.abs().max())
    torch.testing.assert_close(graph.edge_scores.double(), expected, atol=1e-4 * scale, rtol=0)


def test_native_discovery_runs_through_the_public_api(native) -> None:
    _, model = native
    task = ioi_task(model, 4, seed=0, template_ids=[0])
    graph = discover(model, task, "eap-ig", "edge", ig_steps=3)
    assert graph.edge_scores.isfinite().all() and graph.edge_scores.abs().sum() > 0
    result = faithfulness(model, graph.top(40), task)
    assert result["n_edges"] <= 40
    assert interp.count_hooks(model) == 0


def test_unsupported_attention_names_what_is_missing(bidirectional, monkeypatch) -> None:
    task = ioi_task(bidirectional, 2, template_ids=[0])
    # an output projection the forks cannot split by head
    monkeypatch.setitem(
        bidirectional.bridge.blocks[1].attn.o._modules, "_original_component", torch.nn.Identity()
    )
    with pytest.raises(interp.InterpError, match=r"Block 1 .* linear projections \['o'\]"):
        discover(bidirectional, task, "eap", "edge")
    assert interp.count_hooks(bidirectional) == 0
    assert not bidirectional.bridge.cfg.use_split_qkv_input


# -- bidirectional attention: no causal shortcuts -------------------------------------------------


def test_causality_is_read_from_the_model(bidirectional) -> None:
    assert not bidirectional.spec.causal and not bidirectional.causal
    assert interp.load_model("tiny-gpt2").causal
    # a spec that claims causal attention does not make a bidirectional bridge causal
    wrong = interp.ModelSpec(**{**bidirectional.spec.to_dict(), "causal": True})
    assert not interp.wrap(bidirectional.bridge, wrong).causal
    _, inputs = bidirectional.block_inputs("When Mary and John went", keep_kv=True)
    with pytest.raises(interp.InterpError, match="bidirectional"):
        bidirectional.forward_from(0, inputs.resid[0][:, 2:], inputs, start=2)


@pytest.mark.parametrize(
    ("component", "per_position"),
    [("heads", True), ("resid", True), ("mlp", True), ("attn", False), ("heads", False)],
)
def test_bidirectional_patching_equals_plain_per_cell_patching(
    bidirectional, component: str, per_position: bool
) -> None:
    """Every cell equals a plain forward pass with that one activation patched by a hook of our
    own. In a bidirectional model a patch reaches the positions before it, and positions
    before the first differing token differ too, so a causal shortcut would fail here."""
    model, bridge = bidirectional, bidirectional.bridge
    task = ioi_task(model, 3, seed=6, template_ids=[5])
    got = activation_patching(
        model, task, component, per_position=per_position, tokens_per_pass=60, progress=False
    )
    n_pos, d_head = task.clean.shape[1], model.spec.d_head
    heads = range(model.spec.n_heads) if component == "heads" else [None]
    positions = range(n_pos) if per_position else [None]
    cells = list(itertools.product(positions, heads))
    expected = torch.empty_like(got)
    for layer, block in enumerate(bridge.blocks):
        module, on_input = {
            "heads": (block.attn.o, True),  # its input is z, the heads side by side
            "attn": (block.attn.o, False),
            "mlp": (block.mlp, False),
            "resid": (block, True),
        }[component]
        indices = [
            (slice(None), slice(None) if pos is None else pos)
            + (() if head is None else (slice(head * d_head, (head + 1) * d_head),))
            for pos, head in cells
        ]
        values = per_cell_patching(
            model, task.corrupt, task.clean, logit_diff(task), module, indices, on_input=on_input
        )
        expected[layer] = torch.stack(values).view(expected.shape[1:])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    if per_position:  # the first token where clean and corrupted differ
        first = int((task.clean != task.corrupt).any(0).nonzero()[0])
        base = logit_diff(task)(model(task.corrupt))
        assert (expected[:, :first] - base).abs().max() > 1e-4  # what a causal shortcut skips


def test_bidirectional_edge_discovery(bidirectional) -> None:
    task = ioi_task(bidirectional, 3, seed=3, template_ids=[0])
    graph = discover(bidirectional, task, "activation-patching", "edge")
    # every edge patched alone, exactly: m(patched) - m(corrupted), from the weights
    reference = pristine_native(native_config("bidirectional"))
    _, source = native_graph_forward(reference, task.clean)
    base = logit_diff(task)(native_graph_forward(reference, task.corrupt)[0])
    layout = graph.layout
    for e in (0, 7, len(layout.edge_src) - 1):
        edge = (
            layout.writers[int(layout.edge_writer[e])],
            layout.readers[int(layout.edge_reader[e])],
        )
        logits, _ = native_graph_forward(reference, task.corrupt, source=source, edges=[edge])
        expected = logit_diff(task)(logits) - base
        assert float(graph.edge_scores[e]) == pytest.approx(expected.item(), abs=1e-4)


# -- tasks from token ids ---------------------------------------------------------------------------


def test_task_from_token_ids_runs_like_the_text_task(tiny_gpt2) -> None:
    """A Task made of token ids only (no texts) goes through edge discovery, split into
    chunks of prompts (``Task.subset``), and gives the text task's scores."""
    text = ioi_task(tiny_gpt2, 6, seed=4)
    ids = Task(
        name="ids",
        clean=text.clean,
        corrupt=text.corrupt,
        lengths=text.lengths,
        answer=text.answer,
        wrong=text.wrong,
    )
    assert ids.clean_text == () and ids.subset([1, 3]).clean_text == ()
    for method in ("eap-ig", "clean-corrupted"):
        got = discover(tiny_gpt2, ids, method, "edge", rows_per_pass=4)
        expected = discover(tiny_gpt2, text, method, "edge")
        torch.testing.assert_close(got.edge_scores, expected.edge_scores, atol=1e-6, rtol=1e-5)
    circuit = got.top(50)
    assert faithfulness(tiny_gpt2, circuit, ids) == pytest.approx(
        faithfulness(tiny_gpt2, circuit, text)
    )


def test_token_ids_without_bos_patch_exactly(tiny_gpt2) -> None:
    """Random token ids that differ from the first position on (no BOS): the causal restart
    starts at each patch's position, and every cell still equals plain per-cell patching."""
    generator = torch.Generator().manual_seed(1)
    clean = torch.randint(2, len(word_vocabulary()), (3, 7), generator=generator)
    corrupt = clean.clone()
    corrupt[:, 0] = torch.randint(2, len(word_vocabulary()), (3,), generator=generator)
    corrupt[:, 4] = torch.randint(2, len(word_vocabulary()), (3,), generator=generator)
    task = Task(
        name="ids",
        clean=clean,
        corrupt=corrupt,
        lengths=torch.full((3,), 7),
        answer=clean[:, 1],
        wrong=clean[:, 2],
        prepend_bos=False,
    )
    got = activation_patching(tiny_gpt2, task, "resid", per_position=True, progress=False)
    graph = discover(tiny_gpt2, task, "eap", "edge")
    assert graph.edge_scores.isfinite().all()
    for layer, block in enumerate(tiny_gpt2.bridge.blocks):
        cells = [(slice(None), pos) for pos in range(7)]
        expected = per_cell_patching(
            tiny_gpt2, corrupt, clean, logit_diff(task), block, cells, on_input=True
        )
        torch.testing.assert_close(got[layer], torch.stack(expected), atol=1e-5, rtol=0)


def test_bidirectional_discovery_refuses_prompts_of_several_lengths(bidirectional) -> None:
    """Without an attention mask a bidirectional model's real tokens would attend to padding."""
    task = ioi_task(bidirectional, 4, seed=0)
    assert not task.equal_lengths
    with pytest.raises(interp.InterpError, match="one\\s+length"):
        discover(bidirectional, task, "eap", "edge")


def test_native_models_take_the_lrp_rules(native) -> None:
    """RelP's identity rule reads the MLP's activation from the bridge's own config when
    there is no Hugging Face one (it used to raise AttributeError on native models)."""
    _, model = native
    task = ioi_task(model, 2, seed=0, template_ids=[0])
    eap = discover(model, task, "eap", "edge")
    for rules in ("relp-ah", "attnlrp"):
        graph = discover(model, task, rules, "edge")
        assert graph.edge_scores.isfinite().all() and graph.edge_scores.abs().sum() > 0
        assert not torch.allclose(graph.edge_scores, eap.edge_scores, rtol=1e-3, atol=1e-6)
    assert interp.count_hooks(model) == 0
