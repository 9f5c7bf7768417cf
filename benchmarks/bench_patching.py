"""Activation patching: ours vs TransformerLens' get_act_patch_* on the same model and prompts.

Prints the time of each, the ratio, and the largest difference between their results.
"""

from __future__ import annotations

import torch
from _common import ioi, load, parser, profile_row, timed
from _floor import Shapes, describe, matmul_rate, patching_flops
from transformer_lens import patching as tl_patching

from circuits import activation_patching


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--skip-block-every",
        action="store_true",
        help="Skip get_act_patch_block_every (slow on TransformerLens' side; --quick does).",
    )
    args = p.parse_args()
    model = load(args)
    task = ioi(model, args.n_prompts)
    shapes = Shapes.of(model, task)
    rate = matmul_rate(shapes)
    print(
        f"model {model.spec.name}: {model.spec.n_layers} layers x {model.spec.n_heads} heads; "
        f"{len(task)} prompt pairs of {task.clean.shape[1]} tokens"
    )
    _, clean_cache = model.bridge.run_with_cache(task.clean)
    rows = []

    theirs, t_tl = timed(
        lambda: tl_patching.get_act_patch_attn_head_out_all_pos(
            model.bridge, task.corrupt, clean_cache, task.logit_diff
        )
    )
    calls = {
        "heads, all positions": lambda: activation_patching(model, task, "heads", progress=False)
    }
    floors = {"heads, all positions": patching_flops(shapes, "heads") / rate}
    ours, t_ours = timed(calls["heads, all positions"])
    rows.append(("heads, all positions", t_tl, t_ours, (ours - theirs).abs().max().item()))

    if not (args.skip_block_every or args.quick):
        theirs, t_tl = timed(
            lambda: tl_patching.get_act_patch_block_every(
                model.bridge, task.corrupt, clean_cache, task.logit_diff
            )
        )
        what = "block every (resid/attn/mlp x pos)"
        calls[what] = lambda: torch.stack(
            [
                activation_patching(model, task, c, per_position=True, progress=False)
                for c in ("resid", "attn", "mlp")
            ]
        )
        floors[what] = (
            sum(patching_flops(shapes, c, per_position=True) for c in ("resid", "attn", "mlp"))
            / rate
        )
        ours, t_ours = timed(calls[what])
        rows.append(
            ("block every (resid/attn/mlp x pos)", t_tl, t_ours, (ours - theirs).abs().max().item())
        )

    print(describe(shapes, rate))
    print(
        f"{'what':<36} {'TransformerLens':>16} {'ours':>9} {'speed-up':>9} {'max diff':>10} "
        f"{'floor':>8} {'ours/floor':>11}"
    )
    for what, t_tl, t_ours, diff in rows:
        print(
            f"{what:<36} {t_tl:>15.1f}s {t_ours:>8.1f}s {t_tl / t_ours:>8.1f}x {diff:>10.2e} "
            f"{floors[what]:>7.2f}s {t_ours / floors[what]:>10.1f}x"
        )
    for what, _, t_ours, _ in rows:
        if t_ours > 1.5 * floors[what]:
            profile_row(what, calls[what], t_ours)


if __name__ == "__main__":
    main()
