"""auto-circuit peer: EAP and EAP-IG edge scores, and faithfulness of circuits of 3 sizes.

Run by ``bench_peers.py`` with the ``autocircuit`` environment's Python: ``peer_autocircuit.py
SPEC OUT``. The model is a TransformerLens 2 HookedTransformer of the shared folder, made
patchable by auto-circuit over the same graph as ours (input, heads with separate q/k/v
inputs, MLPs, logits; the metric read at the last position).

- EAP: ``mask_gradient_prune_scores`` with ``mask_val=0``: the gradient at the clean run with
  respect to edge masks that move each edge to its corrupted value (EAP, noising direction).
- EAP-IG: ``integrated_grad_samples=s - 1``: the masks of every edge together at ``s`` points
  from 0 to 1 inclusive, so ``s`` gradient passes as ours with ``ig_steps=s``.
- faithfulness: ``run_circuits`` with tree patching (edges outside the circuit take their
  corrupted value) for the top ``k`` edges of the scores it is given (ours).
"""

from __future__ import annotations

from importlib.metadata import version

from _peer_io import read_spec, timed, tokens, write
from _tl2_model import load_tl2


def our_name(edge) -> str:
    """auto-circuit's edge name in ours: ``Resid Start->A0.3.Q`` is ``input->a0.h3<q>``."""

    def node(name: str) -> tuple[str, str]:
        if name == "Resid Start":
            return "input", ""
        if name == "Resid End":
            return "logits", ""
        if name.startswith("MLP "):
            return f"m{name.split()[1]}", ""
        parts = name[1:].split(".")
        port = f"<{parts[2].lower()}>" if len(parts) == 3 else ""
        return f"a{parts[0]}.h{parts[1]}", port

    src, _ = node(edge.src.name)
    dst, port = node(edge.dest.name)
    return f"{src}->{dst}{port}"


def main() -> None:
    import torch
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune import run_circuits
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.types import AblationType, PatchType
    from auto_circuit.utils.graph_utils import patchable_model

    spec, out = read_spec()
    t = tokens(spec)
    tl = load_tl2(spec["model_dir"])
    with torch.no_grad():
        logits = tl(t["clean"])
    tl.cfg.use_attn_result = True
    tl.cfg.use_attn_in = True
    tl.cfg.use_split_qkv_input = True
    tl.cfg.use_hook_mlp_in = True
    n = len(t["clean"])
    dataset = PromptDataset(
        list(t["clean"]),
        list(t["corrupt"]),
        [a.view(1) for a in t["answer"]],
        [w.view(1) for w in t["wrong"]],
    )
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=n, shuffle=False)
    model = patchable_model(
        tl, factorized=True, slice_output="last_seq", separate_qkv=True, device=torch.device("cpu")
    )
    edges = list(model.edges)
    rows = {}

    def scores(**kw):
        return mask_gradient_prune_scores(
            model=model,
            dataloader=loader,
            official_edges=None,
            grad_function="logit",
            answer_function="avg_diff",
            **kw,
        )

    def by_name(prune_scores) -> dict[str, float]:
        return {our_name(e): float(prune_scores[e.dest.module_name][e.patch_idx]) for e in edges}

    if "eap" in spec["rows"]:
        got, seconds = timed(lambda: scores(mask_val=0.0))
        rows["eap"] = {"seconds": seconds, "scores": by_name(got)}
    if "eap_ig" in spec["rows"]:
        steps = spec["rows"]["eap_ig"]["ig_steps"]
        got, seconds = timed(lambda: scores(integrated_grad_samples=steps - 1))
        # auto-circuit sums the gradients of its passes; ours averages them
        got = {name: value / steps for name, value in by_name(got).items()}
        rows["eap_ig"] = {"seconds": seconds, "scores": got, "passes": steps}
    faith = spec["rows"].get("faith")
    if faith is not None and faith.get("scores"):
        ours = faith["scores"]
        prune_scores = model.new_prune_scores()
        for e in edges:
            prune_scores[e.dest.module_name][e.patch_idx] = ours[our_name(e)]
        sizes = faith["sizes"]

        def run():
            # the two baselines (no edge kept: the corrupted run; every edge: the clean run)
            # ride along, as ours computes them too
            counts = [0, *sizes, len(edges)]
            outs = run_circuits(
                model,
                loader,
                counts,
                prune_scores,
                patch_type=PatchType.TREE_PATCH,
                ablation_type=AblationType.RESAMPLE,
            )
            metric = []
            for by_batch in outs.values():  # in the order of counts (keys: edges kept)
                (lg,) = by_batch.values()
                index = torch.arange(len(lg))
                metric.append(float((lg[index, t["answer"]] - lg[index, t["wrong"]]).mean()))
            return metric, list(outs)

        (metric, kept), seconds = timed(run)
        rows["faith"] = {
            "seconds": seconds,
            "metric": metric[1:-1],
            "corrupt": metric[0],
            "clean": metric[-1],
            "kept": kept[1:-1],
        }
    write(out, "auto-circuit", version("auto-circuit"), logits, rows)


if __name__ == "__main__":
    main()
