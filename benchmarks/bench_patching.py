"""Activation patching: ours vs TransformerLens' get_act_patch_* on the same model and prompts.

Prints the time of each, the ratio, and the largest difference between their results.
"""

from __future__ import annotations

import torch
from _common import ioi, load, parser, timed
from transformer_lens import patching as tl_patching

from circuits import activation_patching


def main() -> None:
    p = parser(__doc__)
    p.add_argument(
        "--skip-block-every",
        action="store_true",
        help="Skip get_act_patch_block_every (slow on TransformerLens' side).",
    )
    args = p.parse_args()
    model = load(args)
    task = ioi(model, args.n_prompts)
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
    ours, t_ours = timed(lambda: activation_patching(model, task, "heads", progress=False))
    rows.append(("heads, all positions", t_tl, t_ours, (ours - theirs).abs().max().item()))

    if not args.skip_block_every:
        theirs, t_tl = timed(
            lambda: tl_patching.get_act_patch_block_every(
                model.bridge, task.corrupt, clean_cache, task.logit_diff
            )
        )
        ours, t_ours = timed(
            lambda: torch.stack(
                [
                    activation_patching(model, task, c, per_position=True, progress=False)
                    for c in ("resid", "attn", "mlp")
                ]
            )
        )
        rows.append(
            ("block every (resid/attn/mlp x pos)", t_tl, t_ours, (ours - theirs).abs().max().item())
        )

    print(f"{'what':<36} {'TransformerLens':>16} {'ours':>9} {'speed-up':>9} {'max diff':>10}")
    for what, t_tl, t_ours, diff in rows:
        print(f"{what:<36} {t_tl:>15.1f}s {t_ours:>8.1f}s {t_tl / t_ours:>8.1f}x {diff:>10.2e}")


if __name__ == "__main__":
    main()
