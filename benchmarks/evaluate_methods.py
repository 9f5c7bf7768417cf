"""MIB's circuit evaluation per discovery method: discover on the IOI train split, evaluate on
the held-out test split (other templates, other names), over several seeds.

For each method, selection rule and seed: faithfulness at MIB's ten sizes (0.1% ... 100% of
the edges, requested and after pruning), CPR (area under the curve, higher is better), CMD
(area between the curve and 1, lower is better) and the mean. The last table gives the mean
and the spread (min to max) over the seeds at 0.5%, 1%, 2% and 5% of the edges, and each
method's discovery time relative to EAP-IG's (when EAP-IG is among the methods). Not a speed
benchmark: seconds are printed for reference.

    python benchmarks/evaluate_methods.py --model tiny-gpt2
    python benchmarks/evaluate_methods.py --methods eap,eap-ig,clean-corrupted \\
        --selections top-abs,greedy-signed --seeds 0,1,2 --n-prompts 32 --test-prompts 32 \\
        --scores out/scores --png out/evaluate.png
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _common import load, parser, timed

from circuits import discover, evaluate, ioi_task, plot_evaluations
from interp import CircuitGraph

SHOWN = (0.005, 0.01, 0.02, 0.05)


def main() -> None:
    p = parser(__doc__, n_prompts=16)
    p.add_argument("--methods", default="eap,eap-ig", help="comma-separated registered methods")
    p.add_argument("--selections", default="top-abs", help="e.g. top-abs,greedy-abs,top-signed")
    p.add_argument("--ablation", default="corrupt", help="corrupt, mean or zero")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the prompt draws")
    p.add_argument("--test-prompts", type=int, default=None, help="default: --n-prompts")
    p.add_argument("--masks-per-pass", type=int, default=None)
    p.add_argument("--png", default=None, help="plot every curve of the first seed here")
    p.add_argument("--scores", default=None, help="folder to keep (and reuse) the scored graphs")
    p.add_argument(
        "--options",
        default="{}",
        help='JSON of options per method, e.g. \'{"edge-pruning": {"mask": "sigmoid"}}\'',
    )
    args = p.parse_args()
    options = json.loads(args.options)
    seeds = [int(s) for s in args.seeds.split(",")]
    model = load(args)
    n_test = args.test_prompts or args.n_prompts
    print(
        f"model {model.spec.name}; IOI ABC, discovery on {args.n_prompts} train prompts, "
        f"evaluation on {n_test} test prompts (disjoint templates and names); ablation "
        f"{args.ablation}; seeds {seeds}"
    )
    rows, seconds, curves = [], {}, {}
    for seed in seeds:
        train = ioi_task(model, args.n_prompts, seed=seed, split="train")
        test = ioi_task(model, n_test, seed=seed, split="test")
        for method in args.methods.split(","):
            graph, took = _scored(model, train, method, options.get(method, {}), args, seed)
            seconds.setdefault(method, []).append(took)
            for selection in args.selections.split(","):
                result = evaluate(
                    model,
                    graph,
                    test,
                    selection=selection,
                    ablation=args.ablation,
                    masks_per_pass=args.masks_per_pass,
                )
                label = f"{method} {selection}"
                if seed == seeds[0]:
                    curves[label] = result
                print(f"\n== {label}, seed {seed} (discovery {took:.1f} s)\n{result.summary()}")
                table = result.table.set_index("fraction")
                rows.append(
                    {
                        "label": label,
                        "method": method,
                        "cpr": result.cpr,
                        "cmd": result.cmd,
                        **{p: float(table.loc[p, "faithfulness"]) for p in SHOWN},
                        **{f"n{p}": int(table.loc[p, "effective_edges"]) for p in SHOWN},
                    }
                )
    _summary(rows, seconds, seeds)
    if args.png:
        plot_evaluations(curves, args.png)
        print(f"wrote {args.png}")


def _scored(model, train, method: str, kwargs: dict, args, seed: int):
    """The method's scored graph on the train prompts (read from --scores when kept there)."""
    path = None
    if args.scores:
        tag = f"{model.spec.name}-{method}-{args.n_prompts}-s{seed}"
        path = Path(args.scores) / f"{tag}.json"
        if path.exists():
            graph = CircuitGraph.from_json(path)
            return graph, float(graph.meta.get("seconds", float("nan")))
    graph, took = timed(lambda: discover(model, train, method, "edge", **kwargs))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        graph.to_json(path)
    return graph, took


def _summary(rows: list[dict], seconds: dict[str, list[float]], seeds: list[int]) -> None:
    def spread(values: list[float]) -> str:
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:6.2f}"
        return f"{mean:5.2f} ({min(values):.2f}..{max(values):.2f})"

    base = seconds.get("eap-ig")
    ref = sum(base) / len(base) if base else None
    head = "".join(f"{f'{p:.1%}':>26}" for p in SHOWN)
    print(f"\nmean over seeds {seeds} (min..max); edges after pruning, first seed, in brackets")
    print(f"{'method, selection':<34}{head}{'CPR':>20}{'CMD':>20}{'time / EAP-IG':>15}")
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        cells = "".join(
            f"{spread([r[p] for r in mine]) + ' [' + str(mine[0]['n' + str(p)]) + ']':>26}"
            for p in SHOWN
        )
        took = seconds[mine[0]["method"]]
        ratio = f"{sum(took) / len(took) / ref:.2f}" if ref else "-"
        print(
            f"{label:<34}{cells}{spread([r['cpr'] for r in mine]):>20}"
            f"{spread([r['cmd'] for r in mine]):>20}{ratio:>15}"
        )


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
