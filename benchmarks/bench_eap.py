"""Edge attribution (EAP): ours vs TransformerLens' tools.analysis.attribution_patch(edge).

On a GPT-2-shaped model by default: TransformerLens refuses grouped-query attention. Its edge
scores are per position; they are summed over positions to compare with ours.
"""

from __future__ import annotations

import torch
from _common import fixed_name_task, load, parser, profile_row, timed
from _floor import Shapes, describe, gradient_flops, matmul_rate
from transformer_lens.tools.analysis.attribution_patching import (
    EdgeAttributionConfig,
    attribution_patch,
)

from circuits import edge_attribution


def our_name(node) -> tuple[str, str]:
    kind, layer, head = node.kind, node.layer, node.head
    names = {
        "embed": ("input", ""),
        "attn_head_out": (f"a{layer}.h{head}", ""),
        "mlp_out": (f"m{layer}", ""),
        "q_input": (f"a{layer}.h{head}", "q"),
        "k_input": (f"a{layer}.h{head}", "k"),
        "v_input": (f"a{layer}.h{head}", "v"),
        "mlp_in": (f"m{layer}", ""),
        "logits": ("logits", ""),
    }
    return names[kind]


def main() -> None:
    args = parser(__doc__, model="gpt2-shaped", n_prompts=4).parse_args()
    model = load(args)
    task = fixed_name_task(model, args.n_prompts).to(model.device)
    model(task.clean)  # warm-up
    shapes = Shapes.of(model, task)
    rate = matmul_rate(shapes)
    print(
        f"model {model.spec.name}: {model.spec.n_layers} layers x {model.spec.n_heads} heads; "
        f"{len(task)} prompt pairs of {task.clean.shape[1]} tokens"
    )

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, task.answer[0]] - logits[:, -1, task.wrong[0]]).mean()

    # TransformerLens backpropagates through the parameters (as models load by default);
    # ours are frozen at load time, activations still carry gradients.
    for p in model.bridge.parameters():
        p.requires_grad_(True)
    theirs, t_tl = timed(
        lambda: attribution_patch(
            model.bridge,
            task.clean,
            task.corrupt,
            metric,
            EdgeAttributionConfig(granularity="edge"),
        )
    )
    for p in model.bridge.parameters():
        p.requires_grad_(False)
    ours, t_ours = timed(lambda: edge_attribution(model, None, task, progress=False))

    summed: dict[str, float] = {}
    for (writer, reader), score in theirs.edge_scores.items():
        src, (dst, port) = our_name(writer)[0], our_name(reader)
        name = f"{src}->{dst}<{port}>" if port else f"{src}->{dst}"
        summed[name] = summed.get(name, 0.0) + float(score)
    index = ours._edge_index()
    a = torch.tensor([summed[n] for n in summed])
    b = torch.stack([ours.edge_scores[index[n]] for n in summed]).double()
    print(
        f"edges compared: {len(summed)} of {len(ours.edges)}; max |difference| "
        f"{(a - b).abs().max():.2e} (largest |score| {b.abs().max():.2e})"
    )
    floor = gradient_flops(shapes, 1) / rate
    print(describe(shapes, rate))
    print(f"{'what':<28} {'TransformerLens':>16} {'ours':>9} {'speed-up':>9} {'ours/floor':>11}")
    print(
        f"{'EAP, every edge':<28} {t_tl:>15.1f}s {t_ours:>8.1f}s {t_tl / t_ours:>8.1f}x "
        f"{t_ours / floor:>10.1f}x"
    )
    if t_ours > 1.5 * floor:
        profile_row("EAP", lambda: edge_attribution(model, None, task, progress=False), t_ours)


if __name__ == "__main__":
    main()
