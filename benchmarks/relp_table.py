"""RelP's faithfulness table: Pearson r of AtP and RelP (each rule set) against activation
patching on IOI, per component class, with the paper's GPT-2 numbers beside ours.

Components: residual stream (resid_pre), attention outputs and MLP outputs per (layer, position),
and heads (all positions). Denoising direction, as in the RelP demo. Also the faithfulness of
edge circuits of equal size found by RelP, EAP and EAP-IG.
"""

from __future__ import annotations

import torch
from _common import ioi, parser, timed

import interp
from circuits import activation_patching, attribution_patching, discover, faithfulness, ioi_task

PAPER = {  # GPT-2 small, Jafari et al. 2025 Table 1 (Pearson r; AtP / RelP)
    "resid": (0.753, 0.968), "attn": (0.979, 0.962), "mlp": (0.195, 0.992), "heads": None,
}
# (name, rule set, integrated-gradient steps along the input embeddings)
ESTIMATORS = [("atp", None, 1), ("relp", "relp", 1), ("relp-ah", "relp-ah", 1),
              ("attnlrp", "attnlrp", 1), ("atp-ig5", None, 5), ("relp-ig5", "relp", 5)]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--edges", default="200,1000,5000")
    p.add_argument("--no-circuits", action="store_true")
    p.add_argument("--seeds", default="0", help="IOI seeds; the table is printed per seed")
    args = p.parse_args()
    model = interp.load_model(args.model)
    for seed in [int(s) for s in args.seeds.split(",")]:
        task = ioi_task(model, args.n_prompts, seed=seed, template_ids=[seed % 15])
        print(f"\nmodel {model.spec.name}; IOI seed {seed}, {len(task)} pairs of "
              f"{task.clean.shape[1]} tokens (template {seed % 15}), denoising")
        table(model, task)
    if args.no_circuits:
        return
    task = ioi(model, args.n_prompts)
    circuits(model, task, [int(k) for k in args.edges.split(",")])


def table(model: interp.TransformerModel, task) -> None:
    header = f"{'component':<10} {'points':>6}  " + "  ".join(f"{e[0]:>8}" for e in ESTIMATORS)
    print(header + "   paper GPT-2 small (AtP / RelP)")
    costs: dict[str, list[float]] = {e[0]: [] for e in ESTIMATORS}
    for component, per_position in (("resid", True), ("attn", True), ("mlp", True),
                                    ("heads", False)):
        truth, seconds = timed(lambda c=component, pp=per_position: activation_patching(
            model, task, c, per_position=pp, progress=False))
        cells = []
        for name, rules, steps in ESTIMATORS:
            factory = None if rules is None else (lambda m, r=rules: interp.gradient_rules(m, r))
            estimate, spent = timed(lambda c=component, pp=per_position, f=factory, k=steps:
                                    attribution_patching(model, task, c, per_position=pp,
                                                         gradient_rules=f, ig_steps=k))
            costs[name].append(spent / seconds)
            cells.append(pearson(estimate, truth))
        paper = PAPER[component]
        ref = f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "-"
        print(f"{component:<10} {truth.numel():>6}  " + "  ".join(f"{c:>8.3f}" for c in cells)
              + f"   {ref}   (patching {seconds:.0f} s)", flush=True)
    print("cost / patching  " + "  ".join(f"{sum(v) / len(v):>8.3f}" for v in costs.values()))


def circuits(model: interp.TransformerModel, task, sizes: list[int]) -> None:
    print("\nedge circuits, faithfulness at k edges: " + ", ".join(map(str, sizes)))
    for method in ("eap", "eap-ig", "relp", "relp-ah"):
        graph = discover(model, task, method, "edge", progress=False)
        values = [faithfulness(model, graph.top(k), task)["faithfulness"] for k in sizes]
        print(f"{method:<10} " + "  ".join(f"{v:+.3f}" for v in values)
              + f"   ({graph.meta['seconds']:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
