"""AtP / EAP / EAP-IG against identities and exact patching."""

from __future__ import annotations

import torch

import interp
from circuits import (
    activation_patching,
    attribution_patching,
    edge_attribution,
    exact_edge_scores,
    ioi_task,
    node_attribution,
)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def frozen_final_norm(model: interp.TransformerModel, task) -> object:
    """Fix the final norm's scale at its corrupted-run value: the model is then linear from
    the last MLP's output to the logits."""
    _, cache = model.bridge.run_with_cache(task.corrupt, names_filter=["ln_final.hook_scale"])
    scale = cache["ln_final.hook_scale"]
    last = scale[torch.arange(len(task)), task.lengths - 1]

    def fix(x, hook):
        ref = scale if x.ndim == 3 else last
        return ref.repeat(x.shape[0] // ref.shape[0], *([1] * (ref.ndim - 1)))

    return model.bridge.hooks(fwd_hooks=[("ln_final.hook_scale", fix)])


def test_atp_equals_patching_where_the_model_is_linear(tiny) -> None:
    model = interp.load_model(tiny.spec.name, dtype=torch.float64)
    task = ioi_task(model, 4, seed=0, template_ids=[0])
    with frozen_final_norm(model, task):
        exact = activation_patching(model, task, "mlp", per_position=True, progress=False)
        atp = attribution_patching(model, task, "mlp", per_position=True)
    last = model.spec.n_layers - 1
    torch.testing.assert_close(atp[last], exact[last], rtol=0, atol=1e-6)
    assert not torch.allclose(atp[0], exact[0], atol=1e-6)  # nonlinear further down


def test_atp_tracks_activation_patching(tiny) -> None:
    task = ioi_task(tiny, 6, seed=0, template_ids=[0])
    exact = activation_patching(tiny, task, "heads", progress=False)
    assert pearson(attribution_patching(tiny, task, "heads").flatten(), exact.flatten()) > 0.99


def test_edge_scores_sum_to_writer_node_scores(tiny) -> None:
    task = ioi_task(tiny, 6, seed=1)
    graph = edge_attribution(tiny, None, task)
    sums = torch.zeros(len(graph.nodes), dtype=torch.float64)
    sums.index_add_(0, graph.edge_src, graph.edge_scores.double())
    nodes = node_attribution(tiny, None, task)
    scored = ~nodes.node_scores.isnan()
    torch.testing.assert_close(
        sums[scored].float(), nodes.node_scores[scored], rtol=1e-4, atol=1e-7
    )
    torch.testing.assert_close(
        graph.node_scores[scored], nodes.node_scores[scored], rtol=1e-4, atol=1e-7
    )


def test_eap_ig_with_one_step_is_eap(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=2)
    eap = edge_attribution(tiny_gpt2, None, task)
    ig1 = edge_attribution(tiny_gpt2, None, task, ig_steps=1)
    assert torch.equal(eap.edge_scores, ig1.edge_scores)
    ig5 = edge_attribution(tiny_gpt2, None, task, ig_steps=5)
    assert ig5.method == "eap-ig" and not torch.equal(ig5.edge_scores, eap.edge_scores)


def test_edge_methods_track_exact_edge_patching(tiny) -> None:
    task = ioi_task(tiny, 6, seed=0, template_ids=[0])
    graph = interp.CircuitGraph.from_model(tiny)
    exact = exact_edge_scores(tiny, graph, task, progress=False)
    eap = edge_attribution(tiny, graph, task).edge_scores
    ig = edge_attribution(tiny, graph, task, ig_steps=8).edge_scores
    assert pearson(ig, exact) > 0.99
    assert pearson(ig, exact) > pearson(eap, exact) > 0.7


def test_batching_does_not_change_scores(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 6, seed=4)
    one = edge_attribution(tiny_gpt2, None, task, ig_steps=2, rows_per_pass=64)
    many = edge_attribution(tiny_gpt2, None, task, ig_steps=2, rows_per_pass=4)
    torch.testing.assert_close(one.edge_scores, many.edge_scores, rtol=1e-4, atol=1e-7)


def test_grouped_query_attention_is_ungrouped(tiny_llama) -> None:
    """TransformerLens' edge attribution refuses GQA; here each query head gets its own k/v
    port, and the ports of one KV group add up to the shared input's score."""
    assert tiny_llama.spec.n_kv_heads < tiny_llama.spec.n_heads
    task = ioi_task(tiny_llama, 4, seed=0, template_ids=[0])
    graph = edge_attribution(tiny_llama, None, task)
    per_head = [graph.edges[f"a0.h{h}->a1.h{h2}<k>"].score for h in range(4) for h2 in range(4)]
    assert all(abs(s) > 0 for s in per_head)
    # shared KV input of group 0 in the grouped model: gradient at a1<k>[:, :, 0]
    base, source = task.corrupt, task.clean
    _, src = tiny_llama.run_with_cache(source, ["a0.h1"])
    run = tiny_llama.run_with_grads(base, task.logit_diff, ["a0.h1", "a1<k>"])
    delta = src["a0.h1"] - run.activations["a0.h1"]
    shared = float((delta * run.gradients["a1<k>"][:, :, 0]).sum())
    group = sum(graph.edges[f"a0.h1->a1.h{h}<k>"].score for h in (0, 1))
    assert abs(group - shared) < 1e-5 * max(1.0, abs(shared))


def test_eap_equals_transformerlens_edge_attribution(tiny_gpt2) -> None:
    """TransformerLens' own EAP (per example, per position) summed over positions, averaged
    over prompts, equals our batched EAP edge for edge."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    from circuits import task_from_pairs

    clean = [
        "When Mary and John went to the store, John gave a drink to",
        "When Mary and John went to the garden, John gave a ring to",
    ]
    corrupt = [
        "When Lisa and Kevin went to the store, Adam gave a drink to",
        "When Kevin and Adam went to the garden, Lisa gave a ring to",
    ]
    task = task_from_pairs(tiny_gpt2, clean, corrupt, [" Mary"] * 2, [" John"] * 2)
    ours = edge_attribution(tiny_gpt2, None, task)

    def metric(logits):
        return (logits[:, -1, task.answer[0]] - logits[:, -1, task.wrong[0]]).mean()

    for p in tiny_gpt2.bridge.parameters():  # TransformerLens backpropagates into parameters
        p.requires_grad_(True)
    try:
        theirs = attribution_patch(
            tiny_gpt2.bridge,
            task.clean,
            task.corrupt,
            metric,
            EdgeAttributionConfig(granularity="edge"),
        )
    finally:
        for p in tiny_gpt2.bridge.parameters():
            p.requires_grad_(False)
    kinds = {
        "embed": "input",
        "mlp_out": "m{l}",
        "attn_head_out": "a{l}.h{h}",
        "mlp_in": "m{l}",
        "logits": "logits",
        "q_input": "a{l}.h{h}<q>",
        "k_input": "a{l}.h{h}<k>",
        "v_input": "a{l}.h{h}<v>",
    }
    summed: dict[str, float] = {}
    for (writer, reader), score in theirs.edge_scores.items():
        src = kinds[writer.kind].format(l=writer.layer, h=writer.head)
        dst = kinds[reader.kind].format(l=reader.layer, h=reader.head)
        name = f"{src}->{dst}"
        summed[name] = summed.get(name, 0.0) + score
    assert set(summed) == set(ours.edges)
    index = ours._edge_index()
    expected = torch.tensor([summed[n] for n in summed], dtype=torch.float64)
    got = torch.stack([ours.edge_scores[index[n]] for n in summed]).double()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_relp_equals_atp_where_its_rules_have_nothing_to_change() -> None:
    """With a linear MLP activation the Identity rule's gain f(z)/z is 1: RelP with the
    activation rules must give AtP's scores exactly, while on the GELU model they differ."""
    task_of = lambda m: ioi_task(m, 4, seed=0, template_ids=[0])  # noqa: E731
    rules = lambda m: interp.gradient_rules(m, ("identity", "half"))  # noqa: E731
    scores = {}
    for act in ("linear", "gelu_new"):
        model = interp.load_model("tiny-gpt2", dtype=torch.float64, activation_function=act)
        task = task_of(model)
        atp = attribution_patching(model, task, "mlp", per_position=True)
        relp = attribution_patching(model, task, "mlp", per_position=True, gradient_rules=rules)
        scores[act] = (atp, relp)
    # equal up to the rule's 1e-6 stabiliser in f(z) / (z + eps)
    torch.testing.assert_close(*scores["linear"], atol=1e-6, rtol=1e-5)
    gap = {act: float((atp - relp).abs().max()) for act, (atp, relp) in scores.items()}
    assert gap["gelu_new"] > 100 * gap["linear"], gap


def reference_activation_ig(model: interp.TransformerModel, task, steps: int) -> torch.Tensor:
    """EAP-IG-activations as MIB's ``get_scores_ig_activations`` writes it, one run per
    (writer group, step), each group's output replaced by a constant point of its path."""
    from circuits import prepare_edge_model

    edge_model, layout = prepare_edge_model(model)
    base, source = task.corrupt, task.clean  # denoising
    writers = [g.site for g in layout.writer_groups]
    readers = [g.site for g in layout.reader_groups]
    _, src = edge_model.run_with_cache(source, writers)
    _, own = edge_model.run_with_cache(base, writers)
    total = {site: 0.0 for site in readers}
    runs = 0
    for site in writers:
        for k in range(steps):
            point = (own[site] + k / steps * (src[site] - own[site])).detach()
            with edge_model.hooks({site: lambda x, _, p=point: p + 0 * x}):
                run = edge_model.run_with_grads(base, task.measure, readers)
            for reader in readers:
                total[reader] = total[reader] + run.gradients[reader]
            runs += 1
    deltas = []
    for g in layout.writer_groups:
        delta = src[g.site] - own[g.site]
        deltas.append(delta if g.per_head else delta[:, :, None])
    deltas = torch.cat(deltas, dim=2).double()  # (n, pos, writers, d)
    edges = torch.zeros(layout.n_readers, layout.n_writers, dtype=torch.float64)
    for g in layout.reader_groups:
        grad = (total[g.site] / runs).double()
        grad = grad if g.per_head else grad[:, :, None]
        for j, row in enumerate(g.index):
            edges[row, : g.n_prior] = torch.einsum(
                "npwd,npd->w", deltas[:, :, : g.n_prior], grad[:, :, j]
            )
    return layout.from_matrix(edges)


def test_eap_ig_over_activations_equals_a_run_per_group_and_step(tiny_gpt2, tiny_llama) -> None:
    for model in (tiny_gpt2, tiny_llama):
        task = ioi_task(model, 3, seed=5, template_ids=[0])
        want = reference_activation_ig(model, task, steps=3)
        # 2 prompts per pass with one copy each: prompts and copies both split across passes
        got = edge_attribution(
            model, None, task, ig_steps=3, ig_over="activations", rows_per_pass=2
        )
        assert got.meta["ig_over"] == "activations"
        torch.testing.assert_close(got.edge_scores.double(), want, rtol=1e-4, atol=1e-6)
        inputs = edge_attribution(model, None, task, ig_steps=3)
        assert not torch.allclose(inputs.edge_scores.double(), want, rtol=1e-3, atol=1e-5)


def test_node_attribution_shows_a_progress_bar(tiny_gpt2, capsys) -> None:
    task = ioi_task(tiny_gpt2, 4, seed=0)
    quiet = node_attribution(tiny_gpt2, None, task, rows_per_pass=2, progress=False)
    assert "attribution" not in capsys.readouterr().err
    shown = node_attribution(tiny_gpt2, None, task, rows_per_pass=2, progress=True)
    assert "attribution" in capsys.readouterr().err
    torch.testing.assert_close(quiet.node_scores, shown.node_scores, equal_nan=True)
