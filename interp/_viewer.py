"""The interactive circuit viewer: one standalone HTML page for a :class:`~interp.CircuitGraph`.

The page is the template ``interp/data/viewer.html`` (its own CSS and JavaScript, drawing in
SVG; no library, nothing fetched, so it works offline) with the graph embedded as JSON. Edges
are embedded compactly, strongest first: endpoints, ports and scores as little-endian typed
arrays in base64, in the order of :meth:`CircuitGraph.top`'s ranking by ``|score|``. The page's
top-k slider then takes the first ``k`` edges and prunes them to paths from the sources to the
sinks exactly as :meth:`CircuitGraph.prune` does, so it shows what ``graph.top(k)`` computes;
only the visible edges are drawn, which keeps full graphs (SmolLM2: 123,211 edges) responsive.

The ``html`` export format writes this page; :meth:`CircuitGraph._repr_html_` shows it inline
in Jupyter (in an iframe, so several coexist), with at most :data:`NOTEBOOK_MAX_EDGES` edges.
"""

from __future__ import annotations

import base64
import html
import importlib.resources
import json
import math
import re
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._errors import InterpError

if TYPE_CHECKING:
    from ._graph import CircuitGraph

__all__ = ["NOTEBOOK_MAX_EDGES", "notebook_html", "viewer_data", "viewer_html"]

NOTEBOOK_MAX_EDGES = (
    20_000  # edges a notebook's inline view embeds (the strongest, plus the circuit)
)
TEMPLATE = "viewer.html"
KINDS = ("input", "head", "mlp", "logits", "other")  # the page's node kinds, by index
_HEAD = re.compile(r"a\d+\.h\d+")
_MLP = re.compile(r"m\d+")


def viewer_html(
    g: CircuitGraph,
    *,
    initial_k: int = 400,
    max_embedded: int | None = None,
    title: str | None = None,
) -> str:
    """The standalone interactive page of ``g`` (HTML text).

    Parameters
    ----------
    g : CircuitGraph
        The graph; any scores, including infinite and NaN (unscored) ones.
    initial_k : int
        The top-k view it opens with when ``g`` has no circuit of its own (no edge in graph);
        a graph with a circuit opens on that circuit.
    max_embedded : int, optional
        Embed only the strongest ``max_embedded`` edges (and the circuit's own edges); the
        slider then reaches ``k = max_embedded``, and the header says that edges were left out.
        ``None`` (the default) embeds every edge.
    title : str, optional
        The page title (``repr(g)`` by default).

    Examples
    --------
    >>> from interp import CircuitGraph, ModelSpec
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
    >>> g = CircuitGraph.from_model(spec, method="demo")
    >>> g = g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges)))
    >>> page = viewer_html(g, initial_k=5)
    >>> page.startswith("<!DOCTYPE html>"), "http" in page
    (True, False)
    """
    data = viewer_data(g, initial_k=initial_k, max_embedded=max_embedded)
    # JSON inside <script>: escape the characters that could close the element or open a comment
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    fills = {
        "__TITLE__": html.escape(title if title is not None else repr(g)),
        "__NOSCRIPT__": html.escape(_safe_summary(g)),
        "__DATA__": text,
    }
    template = (importlib.resources.files("interp") / "data" / TEMPLATE).read_text("utf-8")
    return re.sub("|".join(fills), lambda m: fills[m.group(0)], template)


def notebook_html(
    g: CircuitGraph, *, max_embedded: int = NOTEBOOK_MAX_EDGES, height: int = 640
) -> str:
    """The viewer for a notebook cell: the page in an ``iframe`` (``srcdoc``), so that its
    script and styles stay apart from the notebook's and from other views in it."""
    page = viewer_html(g, max_embedded=max_embedded)
    return (
        f'<iframe srcdoc="{html.escape(page, quote=True)}" title="{html.escape(repr(g))}" '
        f'style="width:100%;height:{int(height)}px;border:1px solid #ddd" '
        'loading="lazy"></iframe>'
    )


def viewer_data(
    g: CircuitGraph, *, initial_k: int = 400, max_embedded: int | None = None
) -> dict[str, Any]:
    """What the page embeds (plain JSON); see the module docstring for the edge arrays."""
    for name, value in (("initial_k", initial_k), ("max_embedded", max_embedded)):
        if value is None and name == "max_embedded":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InterpError(f"{name} must be an int >= 0; got {value!r}.")
    ranked = g._ranked("edge", True)  # top()'s own ranking: -inf for unscored edges
    order = torch.argsort(ranked, descending=True, stable=True)
    n_scored = int((ranked > -math.inf).sum())
    n_head = n_scored if max_embedded is None else min(n_scored, max_embedded)
    tail_positions = None
    if max_embedded is not None:  # the strongest n_head, then the circuit's edges left over
        rest = torch.arange(n_head, len(order))
        rest = rest[g.edge_in_graph[order[rest]]]
        tail_positions = rest.tolist()
        order = torch.cat([order[:n_head], order[rest]])
    n_nodes = len(g.node_names)
    index_dtype = "<u2" if n_nodes < 2**16 else "<u4"
    score_dtype = "<f8" if g.score_dtype == torch.float64 else "<f4"
    port = g.edge_port[order].numpy().astype(np.uint8) | (
        g.edge_in_graph[order].numpy().astype(np.uint8) << 7
    )
    has_in, has_out = g._has_in_out()
    flags = (
        g.node_in_graph.numpy().astype(np.uint8)
        | ((~has_in).numpy().astype(np.uint8) << 1)
        | ((~has_out).numpy().astype(np.uint8) << 2)
    )
    x, y = _positions(g)
    n_circuit = g.n_edges_in_graph
    notes = []
    if len(order) < len(g.edge_src):
        notes.append(
            f"This view embeds the {n_head:,} strongest of the graph's {len(g.edge_src):,} "
            + (f"edges and the circuit's {n_circuit:,}" if n_circuit else "edges")
            + "; export it as HTML (graph.export('graph.html')) to explore them all."
        )
    if n_scored == 0:
        notes.append("No edge has a score, so the top-k view is empty.")
    return {
        "version": 1,
        "header": _header(g),
        "meta": {str(k): _short(v) for k, v in g.meta.items()},
        "notes": notes,
        "ports": list(g.ports),
        "nodes": {
            "names": list(g.node_names),
            "kind": [_kind(n) for n in g.node_names],
            "x": x,
            "y": y,
            "scores": _b64(g.node_scores.double().numpy(), "<f8"),
            "flags": _b64(flags, "u1"),  # 1: in the circuit, 2: a source, 4: a sink
        },
        "edges": {
            "total": len(g.edge_src),
            "scored": n_scored,
            "embedded": len(order),
            "ranked": n_head,  # embedded[:ranked] are ranks 1..ranked
            "tail_positions": tail_positions,  # rank - 1 of each embedded edge after those
            "circuit": n_circuit,
            "index_bytes": int(index_dtype[-1]),
            "score_bytes": int(score_dtype[-1]),
            "src": _b64(g.edge_src[order].numpy(), index_dtype),
            "dst": _b64(g.edge_dst[order].numpy(), index_dtype),
            "port": _b64(port, "u1"),  # port index; bit 7: in the circuit
            "scores": _b64(g.edge_scores[order].numpy(), score_dtype),
        },
        "initial": {
            "mode": "circuit" if n_circuit else "top",
            "k": min(initial_k, n_head),
        },
    }


def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _kind(name: str) -> int:
    if name in ("input", "logits"):
        return KINDS.index(name)
    if _HEAD.fullmatch(name):
        return KINDS.index("head")
    if _MLP.fullmatch(name):
        return KINDS.index("mlp")
    return KINDS.index("other")


def _positions(g: CircuitGraph) -> tuple[list[float], list[float]]:
    """Each node's column and row, input at the bottom and logits on top.

    A transformer graph gets one row per layer: its heads side by side, its MLP to their right
    and half a row higher (it reads them), which halves the height of the static drawing's
    layout. Other graphs are laid out as the static drawing lays them out."""
    from ._graph_draw import _layout

    kinds = [_kind(n) for n in g.node_names]
    if g.model is not None and KINDS.index("other") not in kinds:
        n_heads = g.model.n_heads
        x, y = [], []
        for name, kind in zip(g.node_names, kinds, strict=True):
            if KINDS[kind] == "head":
                layer, head = (int(part[1:]) for part in name.split("."))
                x.append(head - (n_heads - 1) / 2)
                y.append(layer + 1.0)
            elif KINDS[kind] == "mlp":
                x.append((n_heads - 1) / 2 + 1.25)
                y.append(int(name[1:]) + 1.5)
            else:
                x.append(0.0)
                y.append(0.0 if name == "input" else g.model.n_layers + 1.0)
        return x, y
    nodes = list(range(len(g.node_names)))
    pos = _layout(g, nodes, list(range(len(g.edge_src))))
    return [round(pos[i][0], 3) for i in nodes], [round(pos[i][1], 3) for i in nodes]


def _header(g: CircuitGraph) -> list[list[str]]:
    """(label, text) pairs for the page's header: how the graph was made, and on what."""
    facts = [[key, str(getattr(g, key))] for key in ("method", "metric", "task") if getattr(g, key)]
    for key, value in g.meta.items():
        if "faithful" in str(key).lower():
            facts.append([str(key), _short(value)])
    if g.model:
        m = g.model
        facts.append(
            ["model", f"{m.name} ({m.architecture}, {m.n_layers} layers × {m.n_heads} heads)"]
        )
    if "n_prompts" in g.meta:
        facts.append(["prompts", _short(g.meta["n_prompts"])])
    facts.append(["toolkit", str(g.version)])
    return facts


def _short(value: Any, limit: int = 160) -> str:
    """A one-line text form of a meta value (numbers to 4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _safe_summary(g: CircuitGraph) -> str:
    try:
        return g.summary()
    except Exception:  # the summary is only a fallback for a browser without JavaScript
        return repr(g)
