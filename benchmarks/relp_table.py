"""RelP's faithfulness table: Pearson r of AtP and RelP (each rule set) against activation
patching on IOI, per component class, with the paper's GPT-2 numbers beside ours.

Components: residual stream (resid_pre), attention outputs and MLP outputs per (layer, position),
and heads (all positions). Denoising direction, as in the RelP demo. Also the faithfulness of
edge circuits of equal size found by RelP, EAP and EAP-IG.
"""

from __future__ import annotations

import contextlib

import torch
from _common import ioi, parser, timed

import interp
from circuits import (
    activation_patching,
    attribution_patching,
    discover,
    faithfulness,
    ioi_task,
    lookahead_patching,
    refined_patching,
)
from circuits._patching import COMPONENTS

PAPER = {  # GPT-2 small, Jafari et al. 2025 Table 1 (Pearson r; AtP / RelP)
    "resid": (0.753, 0.968),
    "attn": (0.979, 0.962),
    "mlp": (0.195, 0.992),
    "heads": None,
}


def _rules(name: str | None):
    return None if name is None else (lambda m: interp.gradient_rules(m, name))


def _atp(rules: str | None = None, steps: int = 1):
    """AtP / RelP; ``steps > 1``: integrated gradients along the input embeddings."""
    return lambda model, task, c, pp: attribution_patching(
        model, task, c, per_position=pp, gradient_rules=_rules(rules), ig_steps=steps
    )


def _lookahead(blocks: int, rules: str | None = None):
    """``blocks`` exact blocks after each patch, then the (rule) gradient."""
    return lambda model, task, c, pp: lookahead_patching(
        model, task, c, blocks=blocks, per_position=pp, gradient_rules=_rules(rules), progress=False
    )


def _site_ig(steps: int, rules: str | None = None):
    """Integrated gradients along each layer's own clean-to-corrupted path (every position of
    the layer interpolated together, the pass restarted at that layer, batched over steps)."""

    def estimate(model, task, component, per_position):
        base, source = task.corrupt, task.clean
        n, n_pos = base.shape
        sites = [COMPONENTS[component].format(layer=layer) for layer in range(model.spec.n_layers)]
        with torch.no_grad():
            _, src = model.run_with_cache(source, sites)
            _, cur = model.run_with_cache(base, sites)
            _, inputs = model.block_inputs(base)
            m_base = float(task.logit_diff(model(base)))
        alphas = [(k + 0.5) / steps for k in range(steps)]
        out = []
        for layer, site in enumerate(sites):
            delta = src[site] - cur[site]
            path = torch.cat([cur[site] + a * delta for a in alphas]).requires_grad_(True)
            resid = inputs.resid[layer].repeat(steps, *[1] * (inputs.resid[layer].ndim - 1))
            rules_ctx = interp.gradient_rules(model, rules) if rules else contextlib.nullcontext()
            with rules_ctx, torch.enable_grad():
                if component == "resid":
                    hooks, resid = {}, path
                else:
                    hooks = {site: lambda x, s, p=path: p}
                with model.hooks(hooks):
                    logits = model.forward_from(
                        layer, resid, inputs, positions=task.last_positions(steps)
                    )
                (grad,) = torch.autograd.grad(task.logit_diff(logits, per_copy=True).sum(), [path])
            score = grad.view(steps, *delta.shape).mean(0) * delta
            score = score.sum(-1).sum(0)  # (pos,) or (pos, head)
            out.append(score if per_position else score.sum(0))
        return m_base + torch.stack(out)

    return estimate


def _refined(estimate: str, budget: float):
    """``estimate`` for every cell, then exact patching of the largest for their cost."""
    return lambda model, task, c, pp: (
        refined_patching(
            model, task, c, budget=budget, estimate=estimate, per_position=pp, progress=False
        ).values
    )


ESTIMATORS = [
    ("atp", _atp()),
    ("relp", _atp("relp")),
    ("relp-ah", _atp("relp-ah")),
    ("attnlrp", _atp("attnlrp")),
    ("atp-ig5", _atp(None, 5)),
    ("relp-ig5", _atp("relp", 5)),
    ("look1", _lookahead(1)),
    ("look2-ah", _lookahead(2, "relp-ah")),
    ("look4-ah", _lookahead(4, "relp-ah")),
    ("site-ig2", _site_ig(2)),
    ("sig4-ah", _site_ig(4, "relp-ah")),
    ("ref3-ah", _refined("relp-ah", 0.03)),
    ("ref5-ah", _refined("relp-ah", 0.05)),
    ("ref7-ah", _refined("relp-ah", 0.075)),
    ("ref7-atp", _refined("atp", 0.075)),
]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--edges", default="200,1000,5000")
    p.add_argument("--no-circuits", action="store_true")
    p.add_argument("--components", default="resid,attn,mlp,heads")
    p.add_argument("--estimators", default=",".join(name for name, _ in ESTIMATORS))
    p.add_argument(
        "--mixed",
        action="store_true",
        help="every seed mixes all templates (right-padded), as the reference does",
    )
    p.add_argument("--seeds", default="0", help="IOI seeds; the table is printed per seed")
    args = p.parse_args()
    model = interp.load_model(args.model)
    chosen = [(n, f) for n, f in ESTIMATORS if n in args.estimators.split(",")]
    for seed in [int(s) for s in args.seeds.split(",")]:
        templates = None if args.mixed else [seed % 15]
        task = ioi_task(model, args.n_prompts, seed=seed, template_ids=templates)
        print(
            f"\nmodel {model.spec.name}; IOI seed {seed}, {len(task)} pairs of up to "
            f"{task.clean.shape[1]} tokens (templates {templates or 'all'}), denoising"
        )
        table(model, task, args.components.split(","), chosen)
    if args.no_circuits:
        return
    task = ioi(model, args.n_prompts)
    circuits(model, task, [int(k) for k in args.edges.split(",")])


def table(model: interp.TransformerModel, task, components: list[str], estimators) -> None:
    header = f"{'component':<10} {'points':>6}  " + "  ".join(f"{e[0]:>8}" for e in estimators)
    print(header + "   paper GPT-2 small (AtP / RelP)")
    costs: dict[str, list[float]] = {e[0]: [] for e in estimators}
    for component in components:
        per_position = component != "heads"
        truth, seconds = timed(
            lambda c=component, pp=per_position: activation_patching(
                model, task, c, per_position=pp, progress=False
            )
        )
        cells = []
        for name, method in estimators:
            estimate, spent = timed(
                lambda c=component, pp=per_position, f=method: f(model, task, c, pp)
            )
            costs[name].append(spent / seconds)
            cells.append(pearson(estimate, truth))
        paper = PAPER[component]
        ref = f"{paper[0]:.3f} / {paper[1]:.3f}" if paper else "-"
        print(
            f"{component:<10} {truth.numel():>6}  "
            + "  ".join(f"{c:>8.3f}" for c in cells)
            + f"   {ref}   (patching {seconds:.0f} s)",
            flush=True,
        )
    print("cost / patching  " + "  ".join(f"{sum(v) / len(v):>8.3f}" for v in costs.values()))


def circuits(model: interp.TransformerModel, task, sizes: list[int]) -> None:
    print("\nedge circuits, faithfulness at k edges: " + ", ".join(map(str, sizes)))
    for method in ("eap", "eap-ig", "relp", "relp-ah"):
        graph = discover(model, task, method, "edge", progress=False)
        values = [faithfulness(model, graph.top(k), task)["faithfulness"] for k in sizes]
        print(
            f"{method:<10} "
            + "  ".join(f"{v:+.3f}" for v in values)
            + f"   ({graph.meta['seconds']:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
