"""Pictures of a ``CircuitGraph``: a drawing laid out by layer (matplotlib, PNG or SVG) and the
``html`` export, the interactive standalone page of :mod:`interp._viewer` (it works offline)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ._formats import register_format
from ._graph import CircuitGraph
from ._graph_io import _node_color, node_layer


def _chosen(
    g: CircuitGraph, in_graph_only: bool, max_edges: int
) -> tuple[list[int], list[int], int]:
    """Node and edge indices to draw: the circuit (or everything), strongest edges first; and
    how many edges there were before the cut to ``max_edges``."""
    if in_graph_only and (g.n_nodes_in_graph or g.n_edges_in_graph):
        nodes = g.node_in_graph.nonzero().flatten().tolist()
        edges = g.edge_in_graph.nonzero().flatten()
    else:
        nodes = list(range(len(g.node_names)))
        edges = torch.arange(len(g.edge_src))
    strength = g.edge_scores[edges].double().abs().nan_to_num(nan=0.0)
    edges = edges[strength.argsort(descending=True, stable=True)]
    return nodes, edges[:max_edges].tolist(), len(edges)


def _layout(g: CircuitGraph, nodes: list[int], edges: list[int]) -> dict[int, tuple[float, float]]:
    """x = position within a layer, y = layer (input at the bottom, logits on top).

    Transformer node names give their layer; other graphs are layered by longest path."""
    n_layers = g.model.n_layers if g.model else None
    layers = {i: node_layer(g.node_names[i], n_layers) for i in nodes}
    if any(v is None or math.isinf(v) for v in layers.values()):
        layers = _longest_path_layers(g, nodes, edges)
    rows: dict[float, list[int]] = {}
    for i in nodes:
        rows.setdefault(layers[i], []).append(i)
    pos = {}
    for rank, y in enumerate(sorted(rows)):  # empty layers take no room
        members = rows[y]
        width = len(members)
        for k, i in enumerate(members):
            pos[i] = ((k - (width - 1) / 2), float(rank))
    return pos


def _longest_path_layers(g: CircuitGraph, nodes: list[int], edges: list[int]) -> dict[int, float]:
    """Layer = longest path from a source (networkx's topological generations); nodes on a
    cycle share the layer of their strongly connected component."""
    import networkx as nx

    keep = set(nodes)
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(
        (s, d)
        for s, d in zip(g.edge_src[edges].tolist(), g.edge_dst[edges].tolist(), strict=True)
        if s in keep and d in keep
    )
    dag = nx.condensation(graph)
    members = dag.graph["mapping"]  # node -> its component
    depth = {c: float(k) for k, gen in enumerate(nx.topological_generations(dag)) for c in gen}
    return {i: depth[members[i]] for i in nodes}


def _finite_scale(scores: list[float]) -> float:
    """The largest finite |score| (0 when there is none): what edge widths are relative to."""
    return max((abs(x) for x in scores if math.isfinite(x)), default=0.0)


def _strength(score: float, scale: float) -> float:
    """How strongly to draw an edge, in [0, 1]: ``|score| / scale``. Infinite scores draw at
    full strength (they would make every ratio NaN), unscored (NaN) ones faintly."""
    if math.isnan(score):
        return 0.2
    if math.isinf(score):
        return 1.0
    return min(1.0, abs(score) / scale) if scale else 0.2


def draw(
    g: CircuitGraph,
    path: Any = None,
    *,
    in_graph_only: bool = True,
    max_edges: int = 400,
    ax: Any = None,
    format: str | None = None,
) -> Any:
    nodes, edges, n_edges = _chosen(g, in_graph_only, max_edges)
    pos = _layout(g, nodes, edges)
    rows = {p[1] for p in pos.values()}
    widest = max((sum(1 for p in pos.values() if p[1] == y) for y in rows), default=1)
    size = (max(6.0, min(24.0, 0.9 * widest)), max(4.0, min(14.0, 0.3 * len(rows) + 1)))
    fig = None
    if ax is None:
        if path is None:  # interactive: pyplot, so notebooks show it
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=size)
        else:  # a file: a bare Figure, no pyplot state and no backend switching
            from matplotlib.figure import Figure

            fig = Figure(figsize=size)
            ax = fig.add_subplot()
    _draw_on(g, ax, nodes, edges, pos, n_edges)
    if fig is not None:
        fig.tight_layout()
        if path is not None:
            if format is None:
                format = Path(path).suffix.lower().lstrip(".") or "png"
            fig.savefig(path, format=format, dpi=150)
    return fig if fig is not None else ax.figure


def _draw_on(
    g: CircuitGraph,
    ax: Any,
    nodes: list[int],
    edges: list[int],
    pos: dict[int, tuple[float, float]],
    n_edges: int,
) -> None:
    scale = _finite_scale([float(g.edge_scores[e]) for e in edges])
    for e in edges:
        s, d = int(g.edge_src[e]), int(g.edge_dst[e])
        if s not in pos or d not in pos:
            continue
        score = float(g.edge_scores[e])
        strength = _strength(score, scale)
        (x0, y0), (x1, y1) = pos[s], pos[d]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "lw": 0.3 + 3 * strength,
                "color": "#999999" if math.isnan(score) else "#b2182b" if score < 0 else "#2166ac",
                "alpha": 0.25 + 0.6 * strength,
                "shrinkA": 9,
                "shrinkB": 9,
            },
        )
    for i in nodes:
        x, y = pos[i]
        name = g.node_names[i]
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=8,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.3", "fc": _node_color(name), "ec": "#444444"},
        )
    xs = [p[0] for p in pos.values()] or [0]
    ys = [p[1] for p in pos.values()] or [0]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(min(ys) - 1, max(ys) + 1)
    ax.set_axis_off()
    title = g.method or "circuit"
    if g.model:
        title += f" on {g.model.name}"
    shown = (
        f"{len(edges)} edges"
        if len(edges) == n_edges
        else f"the strongest {len(edges)} of {n_edges} edges"
    )
    ax.set_title(f"{title}: {len(nodes)} nodes, {shown}")


def to_html(g: CircuitGraph, path: Any = None, *, max_edges: int = 400) -> str:
    """The interactive standalone page (:func:`interp._viewer.viewer_html`), every edge embedded;
    ``max_edges`` is the top-k it opens with when the graph has no circuit of its own."""
    from ._viewer import viewer_html

    page = viewer_html(g, initial_k=max_edges)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


# -- the export formats these functions implement ------------------------------------------------


@register_format(
    "html", suffixes=(".html", ".htm"), description="an interactive standalone page (offline)"
)
def _write_html(g: CircuitGraph, path: Path) -> None:
    to_html(g, path)


@register_format("png", suffixes=(".png",), description="a drawing laid out by layer (PNG)")
def _write_png(g: CircuitGraph, path: Path) -> None:
    draw(g, path, format="png")


@register_format("svg", suffixes=(".svg",), description="a drawing laid out by layer (SVG)")
def _write_svg(g: CircuitGraph, path: Path) -> None:
    draw(g, path, format="svg")
