"""Refined patching against activation patching on held-out IOI prompts, at several task sizes.

For each number of prompt pairs and each component (the residual stream per position, heads)
prints the time of activation patching (``t_exact``) and of refined patching (``t_refined``),
their ratio, and the Pearson r of refined patching's values against the exact ones. The issue's
target: ratio <= 0.05 and, on the residual stream, r >= 0.9, at every size from 4 to 64 pairs.

Activation patching of the largest tasks takes long on a CPU: ``--max-exact`` caps the pairs it
runs on; above it ``t_exact`` is extrapolated from every measured size (a power law in the
pairs fitted in log-log, marked ``~``) and r cannot be computed. Times include every run each
method makes; the load average is printed with the table, since both share the machine with
others.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os

import torch
from _common import load, parser, timed

from circuits import activation_patching, ioi_task, patching_costs, refined_patching

COMPONENTS = (("resid", True), ("heads", False))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    x = torch.stack([a.flatten().double(), b.flatten().double()])
    return float(torch.corrcoef(x)[0, 1])


def extrapolate(measured: dict[int, float], n: int) -> float:
    """``t(n)`` from a power law fitted (least squares in log-log) to every measured size."""
    x = torch.tensor([math.log(k) for k in measured], dtype=torch.float64)
    y = torch.tensor([math.log(t) for t in measured.values()], dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return math.exp(float(y.mean()) + slope * (math.log(n) - float(x.mean())))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    with contextlib.suppress(argparse.ArgumentError):  # the shared parser may offer it
        p.add_argument("--quick", action="store_true", help="a smaller run")
    p.add_argument("--max-exact", type=int, default=32, help="largest task patched exactly")
    p.add_argument("--budget", type=float, default=0.05)
    p.add_argument("--estimate", default="relp-ah")
    p.add_argument("--by", default="time", choices=["time", "cost"])
    p.add_argument(
        "--max-memory",
        default=None,
        help="both methods' working memory, e.g. 2GB (refined patching shares its runs "
        "between its stages only when every prompt's runs fit in one chunk)",
    )
    args = p.parse_args()
    sizes = [4, 8] if args.quick else args.sizes  # quick: small sizes only
    model = load(args)
    print(
        f"model {model.spec.name}: {model.spec.n_layers} layers x {model.spec.n_heads} heads; "
        f"budget {args.budget} by {args.by}, estimate {args.estimate}; threads "
        f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f} at start"
    )
    header = (
        f"{'pairs':>5} {'tokens':>6} {'component':>9} {'t_exact':>9} {'t_refined':>9} "
        f"{'ratio':>6} {'r':>6} {'r_est':>6} {'cells':>5} {'cost':>6} {'pred':>6} {'load':>5}"
    )
    print(header)
    measured: dict[str, dict[int, float]] = {c: {} for c, _ in COMPONENTS}
    for n in sizes:
        task = ioi_task(model, n, seed=0, split="test").to(model.device)
        for component, per_position in COMPONENTS:
            kwargs = {"per_position": per_position, "progress": False}
            kwargs["max_memory"] = args.max_memory
            costs = patching_costs(model, task, component, per_position=per_position)
            refined, t_refined = timed(
                lambda c=component, kw=kwargs, t=task: refined_patching(
                    model, t, c, budget=args.budget, estimate=args.estimate, by=args.by, **kw
                )
            )
            plain = refined_patching(model, task, component, budget=0.0, **kwargs).values
            if n <= args.max_exact:
                exact, t_exact = timed(
                    lambda c=component, kw=kwargs, t=task: activation_patching(model, t, c, **kw)
                )
                measured[component][n] = t_exact
                r, r_est, mark = pearson(refined.values, exact), pearson(plain, exact), " "
            else:
                t_exact, r, r_est, mark = (
                    extrapolate(measured[component], n),
                    math.nan,
                    math.nan,
                    "~",
                )
            cells = int((refined.exact & (costs > 0)).sum())
            print(
                f"{n:>5} {task.clean.shape[1]:>6} {component:>9} {mark}{t_exact:>7.1f}s "
                f"{t_refined:>8.2f}s {t_refined / t_exact:>6.3f} {r:>6.3f} {r_est:>6.3f} "
                f"{cells:>5} {refined.spent:>6.3f} {refined.time_share:>6.3f} "
                f"{os.getloadavg()[0]:>5.2f}",
                flush=True,
            )
    print(
        "ratio = t_refined / t_exact; r, r_est: Pearson r of refined patching and of the "
        "estimate alone against activation patching; cells: exact cells; cost: their share "
        "of the modelled cost; pred: refined's own prediction of its time share"
    )


if __name__ == "__main__":
    main()
