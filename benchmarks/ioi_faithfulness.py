"""IOI on the embedded model: faithfulness of top-k circuits for each method, and its time.

Not a speed comparison: the table the IOI issue asks for (edge circuits of several sizes per
method, node circuits per node method, seconds per method).
"""

from __future__ import annotations

from _common import parser, timed

import interp
from circuits import discover, faithfulness, ioi_task


def main() -> None:
    p = parser(__doc__, n_prompts=16)
    p.add_argument("--edges", default="50,200,1000,5000,20000")
    p.add_argument("--nodes", default="5,10,20,50")
    args = p.parse_args()
    model = interp.load_model(args.model)
    task = ioi_task(model, args.n_prompts, seed=0)
    edge_sizes = [int(k) for k in args.edges.split(",")]
    node_sizes = [int(k) for k in args.nodes.split(",")]
    print(f"model {model.spec.name}; IOI, {len(task)} prompt pairs (mixed templates, ABC)")
    print("method               level  seconds  " + "  ".join(f"k={k:<6}" for k in edge_sizes))
    runs = [
        ("eap", "edge"),
        ("eap-ig", "edge"),
        ("atp", "node"),
        ("eap-ig", "node"),
        ("activation-patching", "node"),
    ]
    for method, level in runs:
        graph, seconds = timed(
            lambda m=method, lv=level: discover(model, task, m, lv, progress=False)
        )
        sizes = edge_sizes if level == "edge" else node_sizes
        cells = []
        for k in sizes:
            result = faithfulness(model, graph.top(k, level=level), task)
            cells.append(
                f"{result['faithfulness']:+.3f}"
                + (f" ({result['n_edges']}e)" if level == "node" else "")
            )
        head = f"{method:<20} {level:<5} {seconds:>8.1f}  "
        print(
            head
            + "  ".join(f"{c:<8}" for c in cells)
            + ("   (k nodes: " + ",".join(map(str, sizes)) + ")" if level == "node" else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
