"""MIB's circuit evaluation per discovery method: discover on the IOI train split, evaluate on
the held-out test split (other templates, other names).

For each method and selection rule: faithfulness at MIB's ten sizes (0.1% ... 100% of the
edges, requested and after pruning), CPR (area under the curve, higher is better), CMD (area
between the curve and 1, lower is better) and the mean. Not a speed comparison; seconds of
discovery are printed for reference.

    python benchmarks/evaluate_methods.py --model tiny-gpt2
    python benchmarks/evaluate_methods.py --methods eap,eap-ig,clean-corrupted \\
        --selections top-abs,greedy-abs --ablation corrupt --png out/evaluate.png
"""

from __future__ import annotations

import json

from _common import load, parser, timed

from circuits import discover, evaluate, ioi_task, plot_evaluations


def main() -> None:
    p = parser(__doc__, n_prompts=16)
    p.add_argument("--methods", default="eap,eap-ig", help="comma-separated registered methods")
    p.add_argument("--selections", default="top-abs", help="e.g. top-abs,greedy-abs,top-signed")
    p.add_argument("--ablation", default="corrupt", help="corrupt, mean or zero")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-prompts", type=int, default=None, help="default: --n-prompts")
    p.add_argument("--masks-per-pass", type=int, default=None)
    p.add_argument("--png", default=None, help="plot every curve to this file")
    p.add_argument(
        "--options",
        default="{}",
        help='JSON of options per method, e.g. \'{"edge-pruning": {"mask": "sigmoid"}}\'',
    )
    args = p.parse_args()
    options = json.loads(args.options)
    model = load(args)
    train = ioi_task(model, args.n_prompts, seed=args.seed, split="train")
    test = ioi_task(model, args.test_prompts or args.n_prompts, seed=args.seed, split="test")
    print(
        f"model {model.spec.name}; IOI ABC, discovery on {len(train)} train prompts, evaluation "
        f"on {len(test)} test prompts (disjoint templates and names); ablation {args.ablation}"
    )
    results = {}
    summary = []
    for method in args.methods.split(","):
        kwargs = options.get(method, {})
        graph, seconds = timed(lambda m=method, kw=kwargs: discover(model, train, m, "edge", **kw))
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
            results[label] = result
            print(f"\n== {label} (discovery {seconds:.1f} s)\n{result.summary()}", flush=True)
            summary.append((label, result.cpr, result.cmd, result.mean))
    print(f"\n{'method, selection':<32} {'CPR':>8} {'CMD':>8} {'mean f':>8}")
    for label, cpr, cmd, mean in summary:
        print(f"{label:<32} {cpr:>8.4f} {cmd:>8.4f} {mean:>8.4f}")
    if args.png:
        plot_evaluations(results, args.png)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
