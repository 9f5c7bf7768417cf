"""Formats of ``CircuitGraph``: JSON (lossless, versioned), EAP-IG's JSON, networkx and GraphML,
DOT, CSV and pandas frames. Loading validates every field and never executes code."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from ._errors import GraphFormatError, InterpError
from ._formats import register_format
from ._graph import DEFAULT_PORTS, SCORE_DTYPES, CircuitGraph, edge_name
from ._spec import ModelSpec

FORMAT = "interp-toolkit.circuit-graph"
FORMAT_VERSION = 1
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# -- floats: NaN and infinities are spelled out, so the JSON stays strict -------------------------


def _encode(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def _decode(x: Any, where: str) -> float:
    if isinstance(x, bool):
        raise GraphFormatError(f"{where}: expected a number, got a boolean.")
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str) and x in _SPECIAL:
        return _SPECIAL[x]
    raise GraphFormatError(f"{where}: expected a number, 'NaN' or '±Infinity'; got {x!r}.")


# -- our JSON -----------------------------------------------------------------------------------


def graph_to_dict(g: CircuitGraph) -> dict[str, Any]:
    dtype = {v: k for k, v in SCORE_DTYPES.items()}[g.score_dtype]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": g.version,
        "method": g.method,
        "metric": g.metric,
        "task": g.task,
        "model": g.model.to_dict() if g.model else None,
        "meta": g.meta,
        "score_dtype": dtype,
        "ports": list(g.ports),
        "nodes": {
            "names": list(g.node_names),
            "scores": [_encode(x) for x in g.node_scores.tolist()],
            "in_graph": g.node_in_graph.tolist(),
        },
        "edges": {
            "src": g.edge_src.tolist(),
            "dst": g.edge_dst.tolist(),
            "port": g.edge_port.tolist(),
            "scores": [_encode(x) for x in g.edge_scores.tolist()],
            "in_graph": g.edge_in_graph.tolist(),
        },
    }


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise GraphFormatError(f"{where}: missing key {key!r}.")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise GraphFormatError(f"{where}.{key}: expected {names}, got {type(value).__name__}.")
    return value


def _list(data: dict[str, Any], key: str, n: int | None, item: type, where: str) -> list[Any]:
    values = _require(data, key, list, where)
    if n is not None and len(values) != n:
        raise GraphFormatError(f"{where}.{key}: expected {n} entries, got {len(values)}.")
    for i, v in enumerate(values):
        if item is not object and (
            not isinstance(v, item) or (item is int and isinstance(v, bool))
        ):
            raise GraphFormatError(
                f"{where}.{key}[{i}]: expected {item.__name__}, got {type(v).__name__} ({v!r})."
            )
    return values


def graph_from_dict(data: Any) -> CircuitGraph:
    if not isinstance(data, dict):
        raise GraphFormatError(f"A circuit graph is a JSON object; got {type(data).__name__}.")
    if data.get("format") != FORMAT:
        hint = (
            " It looks like an EAP-IG graph: use CircuitGraph.from_eap_ig."
            if {"cfg", "nodes", "edges"} <= set(data)
            else ""
        )
        raise GraphFormatError(
            f"Not a circuit-graph file: 'format' is {data.get('format')!r}, expected {FORMAT!r}."
            + hint
        )
    version = _require(data, "format_version", int, "graph")
    if version > FORMAT_VERSION or version < 1:
        raise GraphFormatError(
            f"graph.format_version is {version}; this toolkit reads version {FORMAT_VERSION}. "
            "Upgrade interp-toolkit to read newer files."
        )
    expected = {
        "format",
        "format_version",
        "toolkit_version",
        "method",
        "metric",
        "task",
        "model",
        "meta",
        "score_dtype",
        "ports",
        "nodes",
        "edges",
    }
    extra, missing = sorted(set(data) - expected), sorted(expected - set(data))
    if extra or missing:
        raise GraphFormatError(f"graph: unknown keys {extra}, missing keys {missing}.")
    for key in ("method", "metric", "task"):
        if data[key] is not None and not isinstance(data[key], str):
            raise GraphFormatError(f"graph.{key}: expected a string or null.")
    dtype_name = _require(data, "score_dtype", str, "graph")
    if dtype_name not in SCORE_DTYPES:
        raise GraphFormatError(
            f"graph.score_dtype: expected one of {list(SCORE_DTYPES)}, got {dtype_name!r}."
        )
    meta = _require(data, "meta", dict, "graph")
    model = None if data["model"] is None else ModelSpec.from_dict(data["model"])
    ports = _list(data, "ports", None, str, "graph")
    nodes = _require(data, "nodes", dict, "graph")
    names = _list(nodes, "names", None, str, "graph.nodes")
    n = len(names)
    node_scores = [
        _decode(x, f"graph.nodes.scores[{i}]")
        for i, x in enumerate(_list(nodes, "scores", n, object, "graph.nodes"))
    ]
    node_in = _list(nodes, "in_graph", n, bool, "graph.nodes")
    edges = _require(data, "edges", dict, "graph")
    src = _list(edges, "src", None, int, "graph.edges")
    e = len(src)
    dst = _list(edges, "dst", e, int, "graph.edges")
    port = _list(edges, "port", e, int, "graph.edges")
    for key, idx, bound in (("src", src, n), ("dst", dst, n), ("port", port, len(ports))):
        bad = next((i for i, v in enumerate(idx) if not 0 <= v < bound), None)
        if bad is not None:
            raise GraphFormatError(
                f"graph.edges.{key}[{bad}]: index {idx[bad]} out of range (0..{bound - 1})."
            )
    edge_scores = [
        _decode(x, f"graph.edges.scores[{i}]")
        for i, x in enumerate(_list(edges, "scores", e, object, "graph.edges"))
    ]
    edge_in = _list(edges, "in_graph", e, bool, "graph.edges")
    triples = [(names[s], names[d], ports[p]) for s, d, p in zip(src, dst, port, strict=True)]
    dtype = SCORE_DTYPES[dtype_name]
    return CircuitGraph(
        names,
        triples,
        node_scores=torch.tensor(node_scores, dtype=torch.float64).to(dtype),
        node_in_graph=torch.tensor(node_in, dtype=torch.bool),
        edge_scores=torch.tensor(edge_scores, dtype=torch.float64).to(dtype),
        edge_in_graph=torch.tensor(edge_in, dtype=torch.bool),
        model=model,
        method=data["method"],
        metric=data["metric"],
        task=data["task"],
        meta=meta,
        ports=ports,
        score_dtype=dtype,
        version=_require(data, "toolkit_version", str, "graph"),
    )


def to_json(g: CircuitGraph, path: Any = None, *, indent: int | None = None) -> str:
    try:
        text = json.dumps(graph_to_dict(g), indent=indent, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GraphFormatError(
            f"The graph's meta data cannot be written as JSON ({err}); keep meta to strings, "
            "numbers, booleans, lists and dicts."
        ) from None
    if path is not None:
        Path(path).write_text(text)
    return text


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL byte in it
        return False


def _is_json_text(source: str) -> bool:
    """Whether a string is JSON text rather than a file name: it starts with ``{`` (or ``[``),
    does not end in ``.json`` and names no existing file. ``'{copy}.json'`` is a file name."""
    text = source.strip()
    return text.startswith(("{", "[")) and not text.endswith(".json") and not _is_file(source)


def read_text_file(path: Any, what: str = "graph file") -> str:
    """The UTF-8 text of a file, or a :class:`GraphFormatError` that says why it cannot be read
    (missing, a directory, unreadable, not UTF-8)."""
    where = str(path)
    path = Path(path)
    if not _is_file(where):
        try:
            is_dir = path.is_dir()
        except (OSError, ValueError):  # a name no file can have (too long, a NUL byte)
            is_dir = False
        if is_dir:
            raise GraphFormatError(f"{where!r} is a directory; give a {what} (JSON).")
        raise GraphFormatError(f"No {what} at {where[:200]!r}.")
    try:
        raw = path.read_bytes()
    except OSError as err:  # e.g. no permission to read it
        raise GraphFormatError(f"Cannot read the {what} {where!r}: {err.strerror}.") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise GraphFormatError(
            f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); a "
            f"{what} is JSON. Is it a binary file (e.g. a PNG export)?"
        ) from None


def _load_json_text(source: Any) -> tuple[Any, str]:
    """Parse JSON from a dict, JSON text (``str`` or ``bytes``) or a path; returns (data,
    description). See :meth:`CircuitGraph.from_json` for how a string is read."""
    if isinstance(source, dict):
        return source, "dict"
    if isinstance(source, bytes | bytearray):
        try:
            text, where = bytes(source).decode("utf-8"), "JSON bytes"
        except UnicodeDecodeError as err:
            raise GraphFormatError(f"JSON bytes: not UTF-8 ({err.reason}).") from None
    elif isinstance(source, str) and _is_json_text(source):
        text, where = source, "JSON text"
    elif isinstance(source, str | os.PathLike):
        text, where = read_text_file(source), str(source)
    else:
        raise GraphFormatError(
            f"A graph is read from a file path, JSON text or a dict; got {type(source).__name__}."
        )
    try:
        return json.loads(text), where
    except json.JSONDecodeError as err:
        raise GraphFormatError(
            f"{where}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "the file may be truncated."
        ) from None
    except RecursionError:
        raise GraphFormatError(
            f"{where}: JSON nested too deeply to be a circuit graph (a graph file nests a few "
            "levels)."
        ) from None


def from_json(source: Any) -> CircuitGraph:
    data, where = _load_json_text(source)
    try:
        return graph_from_dict(data)
    except GraphFormatError as err:
        raise GraphFormatError(f"{where}: {err}") from None


# -- EAP-IG ---------------------------------------------------------------------------------------


def _require_transformer(g: CircuitGraph) -> ModelSpec:
    if g.model is None:
        raise GraphFormatError(
            "EAP-IG's format describes transformer graphs; this graph has no model spec."
        )
    return g.model


def to_eap_ig(g: CircuitGraph, path: Any = None) -> dict[str, Any]:
    spec = _require_transformer(g)
    reference = CircuitGraph.from_model(spec)
    if reference.node_names != g.node_names or set(reference.edge_names()) != set(g.edge_names()):
        raise GraphFormatError(
            "Only full transformer graphs (CircuitGraph.from_model) can be written in EAP-IG's "
            "format; this one has other nodes or edges."
        )
    scored_nodes = not bool(g.node_scores.isnan().all())
    nodes: dict[str, Any] = {}
    for i, name in enumerate(g.node_names):
        nodes[name] = {"in_graph": bool(g.node_in_graph[i])}
        if scored_nodes:
            nodes[name]["score"] = float(g.node_scores[i])
    edges = {
        name: {"score": float(score), "in_graph": bool(keep)}
        for name, score, keep in zip(
            g.edge_names(), g.edge_scores.tolist(), g.edge_in_graph.tolist(), strict=True
        )
    }
    data = {
        "cfg": {
            "n_layers": spec.n_layers,
            "n_heads": spec.n_heads,
            "parallel_attn_mlp": spec.parallel_attn_mlp,
            "d_model": spec.d_model,
        },
        "nodes": nodes,
        "edges": edges,
    }
    if path is not None:
        Path(path).write_text(json.dumps(data))  # EAP-IG itself writes NaN as a bare literal
    return data


def eap_ig_sizes(n_layers: int, n_heads: int, parallel_attn_mlp: bool = False) -> tuple[int, int]:
    """Nodes and edges of EAP-IG's graph of a transformer, counted without building it.

    Writers are ``input``, every head and every MLP; a head reads (through 3 ports) what the
    earlier layers wrote, an MLP also its own layer's heads (unless attention and MLP run in
    parallel), ``logits`` everything.

    Examples
    --------
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=3, n_heads=2, d_model=8)
    >>> g = CircuitGraph.from_model(spec)
    >>> eap_ig_sizes(3, 2) == (len(g.node_names), len(g.edge_src))
    True
    """
    L, H = n_layers, n_heads
    earlier = L + (H + 1) * L * (L - 1) // 2  # sum over layers of the writers before each
    edges = (3 * H + 1) * earlier + (0 if parallel_attn_mlp else L * H) + 1 + L * (H + 1)
    return L * (H + 1) + 2, edges


def from_eap_ig(source: Any, *, name: str = "eap-ig") -> CircuitGraph:
    data, where = _load_json_text(source)
    if not isinstance(data, dict) or not {"cfg", "nodes", "edges"} <= set(data):
        raise GraphFormatError(f"{where}: an EAP-IG graph has keys 'cfg', 'nodes' and 'edges'.")
    cfg = data["cfg"]
    if not isinstance(cfg, dict):
        raise GraphFormatError(f"{where}: 'cfg' must be an object.")
    try:
        spec = ModelSpec(
            name=name,
            architecture="unknown",
            n_layers=cfg["n_layers"],
            n_heads=cfg["n_heads"],
            d_model=cfg.get("d_model", cfg["n_heads"]),
            parallel_attn_mlp=bool(cfg.get("parallel_attn_mlp", False)),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise GraphFormatError(f"{where}: cfg needs n_layers and n_heads ({err}).") from None
    for key in ("nodes", "edges"):
        if not isinstance(data[key], dict):
            raise GraphFormatError(f"{where}: '{key}' must be an object.")
    # EAP-IG writes every node and edge of the graph: the lists given bound the graph's size,
    # so a small file whose cfg claims a huge model is refused before anything is allocated
    n_nodes, n_edges = eap_ig_sizes(spec.n_layers, spec.n_heads, spec.parallel_attn_mlp)
    if n_nodes > len(data["nodes"]) or n_edges > len(data["edges"]):
        raise GraphFormatError(
            f"{where}: cfg says {spec.n_layers} layers of {spec.n_heads} heads, a graph of "
            f"{n_nodes} nodes and {n_edges} edges, but the file lists {len(data['nodes'])} "
            f"nodes and {len(data['edges'])} edges (EAP-IG writes all of them). Is cfg right?"
        )
    g = CircuitGraph.from_model(spec, method="eap-ig import")
    node_index, edge_index = g._node_index, g._edge_index()
    for key, index in (("nodes", node_index), ("edges", edge_index)):
        unknown = [k for k in data[key] if k not in index]
        if unknown:
            raise GraphFormatError(
                f"{where}: {len(unknown)} {key} do not exist in a {spec.n_layers}-layer, "
                f"{spec.n_heads}-head graph, e.g. {unknown[:3]}."
            )
    for node, info in data["nodes"].items():
        i = node_index[node]
        if isinstance(info, bool):  # very old EAP-IG files map names to booleans
            info = {"in_graph": info}
        if not isinstance(info, dict) or not isinstance(info.get("in_graph"), bool):
            raise GraphFormatError(f"{where}: nodes[{node!r}] needs a boolean 'in_graph'.")
        g.node_in_graph[i] = info["in_graph"]
        if "score" in info and info["score"] is not None:
            g.node_scores[i] = _decode(info["score"], f"{where}: nodes[{node!r}].score")
    for edge, info in data["edges"].items():
        i = edge_index[edge]
        if not isinstance(info, dict) or not isinstance(info.get("in_graph"), bool):
            raise GraphFormatError(f"{where}: edges[{edge!r}] needs 'score' and 'in_graph'.")
        g.edge_in_graph[i] = info["in_graph"]
        g.edge_scores[i] = _decode(info.get("score"), f"{where}: edges[{edge!r}].score")
    return g


# -- networkx, GraphML, DOT, CSV, pandas -----------------------------------------------------------


def node_layer(name: str, n_layers: int | None = None) -> float | None:
    """Drawing/ordering layer of a transformer node name (None for other labels)."""
    if name == "input":
        return 0.0
    if name == "logits":
        return float(2 * (n_layers or 0) + 1) if n_layers is not None else math.inf
    if name.startswith("a") and ".h" in name:
        try:
            return 2 * int(name[1 : name.index(".")]) + 1.0
        except ValueError:
            return None
    if name.startswith("m") and name[1:].isdigit():
        return 2 * int(name[1:]) + 2.0
    return None


def _graph_attrs(g: CircuitGraph) -> dict[str, Any]:
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": g.version,
        "score_dtype": {v: k for k, v in SCORE_DTYPES.items()}[g.score_dtype],
        "ports": json.dumps(list(g.ports)),
        "meta": json.dumps(g.meta),
    }
    for key in ("method", "metric", "task"):
        if getattr(g, key) is not None:
            attrs[key] = getattr(g, key)
    if g.model is not None:
        attrs["model"] = json.dumps(g.model.to_dict())
    return attrs


def to_networkx(g: CircuitGraph, *, in_graph_only: bool = False) -> Any:
    import networkx as nx

    out = nx.MultiDiGraph(**_graph_attrs(g))
    for i, name in enumerate(g.node_names):
        if in_graph_only and not g.node_in_graph[i]:
            continue
        out.add_node(name, score=float(g.node_scores[i]), in_graph=bool(g.node_in_graph[i]))
    for i, (s, d, p) in enumerate(
        zip(g.edge_src.tolist(), g.edge_dst.tolist(), g.edge_port.tolist(), strict=True)
    ):
        if in_graph_only and not g.edge_in_graph[i]:
            continue
        port = g.ports[p]
        out.add_edge(
            g.node_names[s],
            g.node_names[d],
            key=port,
            port=port,
            order=i,
            score=float(g.edge_scores[i]),
            in_graph=bool(g.edge_in_graph[i]),
        )
    return out


def from_networkx(nx_graph: Any) -> CircuitGraph:
    attrs = dict(nx_graph.graph)
    names = [str(n) for n in nx_graph.nodes]
    node_data = [nx_graph.nodes[n] for n in nx_graph.nodes]
    if nx_graph.is_multigraph():
        raw_edges = list(nx_graph.edges(keys=True, data=True))
    else:
        raw_edges = [(u, v, None, d) for u, v, d in nx_graph.edges(data=True)]
    if all("order" in d for *_, d in raw_edges):  # our own export: restore the edge order
        raw_edges.sort(key=lambda e: int(e[3]["order"]))
    edges = [(str(u), str(v), str(d.get("port", "") or "")) for u, v, _, d in raw_edges]
    ports = json.loads(attrs["ports"]) if "ports" in attrs else list(DEFAULT_PORTS)
    for _, _, p in edges:
        if p not in ports:
            ports.append(p)
    dtype = SCORE_DTYPES.get(attrs.get("score_dtype", "float32"), torch.float32)

    def floats(rows: list[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([float(r.get("score", math.nan)) for r in rows], dtype=torch.float64)

    def bools(rows: list[dict[str, Any]]) -> torch.Tensor:
        return torch.tensor([_as_bool(r.get("in_graph", False)) for r in rows], dtype=torch.bool)

    edge_rows = [d for _, _, _, d in raw_edges]
    model = ModelSpec.from_dict(json.loads(attrs["model"])) if "model" in attrs else None
    return CircuitGraph(
        names,
        edges,
        node_scores=floats(node_data).to(dtype),
        node_in_graph=bools(node_data),
        edge_scores=floats(edge_rows).to(dtype) if edge_rows else None,
        edge_in_graph=bools(edge_rows) if edge_rows else None,
        model=model,
        method=attrs.get("method"),
        metric=attrs.get("metric"),
        task=attrs.get("task"),
        meta=json.loads(attrs.get("meta", "{}")),
        ports=ports,
        score_dtype=dtype,
        version=attrs.get("toolkit_version"),
    )


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def to_graphml(g: CircuitGraph, path: Any) -> None:
    import networkx as nx

    nx.write_graphml(to_networkx(g), str(path))


def _dot_id(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(g: CircuitGraph, path: Any = None, *, in_graph_only: bool = True) -> str:
    scale = _score_scale(g, in_graph_only)
    lines = [
        "digraph circuit {",
        "  rankdir=BT;",
        '  node [shape=box, style="filled,rounded", fontname="Helvetica"];',
    ]
    for i, name in enumerate(g.node_names):
        if in_graph_only and not g.node_in_graph[i]:
            continue
        score = float(g.node_scores[i])
        label = name if math.isnan(score) else f"{name}\\n{score:.3g}"
        lines.append(f'  {_dot_id(name)} [label="{label}", fillcolor="{_node_color(name)}"];')
    for i, (s, d, p) in enumerate(
        zip(g.edge_src.tolist(), g.edge_dst.tolist(), g.edge_port.tolist(), strict=True)
    ):
        if in_graph_only and not g.edge_in_graph[i]:
            continue
        score = float(g.edge_scores[i])
        width = 0.5 + 4.5 * (abs(score) / scale if scale and not math.isnan(score) else 0)
        color = "#2166ac" if not score < 0 else "#b2182b"
        port = g.ports[p]
        label = f', label="{port}"' if port else ""
        lines.append(
            f"  {_dot_id(g.node_names[s])} -> {_dot_id(g.node_names[d])} "
            f'[penwidth={width:.2f}, color="{color}"{label}];'
        )
    lines.append("}")
    text = "\n".join(lines) + "\n"
    if path is not None:
        Path(path).write_text(text)
    return text


def _score_scale(g: CircuitGraph, in_graph_only: bool) -> float:
    scores = g.edge_scores[g.edge_in_graph] if in_graph_only else g.edge_scores
    scores = scores[~scores.isnan()].abs()
    return float(scores.max()) if len(scores) else 0.0


def _node_color(name: str) -> str:
    if name in ("input", "logits"):
        return "#dddddd"
    if name.startswith("a") and ".h" in name:
        return "#fdd0a2"
    if name.startswith("m"):
        return "#c7e9c0"
    return "#deebf7"


def nodes_df(g: CircuitGraph) -> Any:
    import pandas as pd

    n_layers = g.model.n_layers if g.model else None
    return pd.DataFrame(
        {
            "name": list(g.node_names),
            "score": g.node_scores.double().numpy(),
            "in_graph": g.node_in_graph.numpy(),
            "layer": [node_layer(n, n_layers) for n in g.node_names],
        }
    )


def edges_df(g: CircuitGraph) -> Any:
    import pandas as pd

    names = g.node_names
    return pd.DataFrame(
        {
            "name": g.edge_names(),
            "src": [names[i] for i in g.edge_src.tolist()],
            "dst": [names[i] for i in g.edge_dst.tolist()],
            "port": [g.ports[i] for i in g.edge_port.tolist()],
            "score": g.edge_scores.double().numpy(),
            "in_graph": g.edge_in_graph.numpy(),
        }
    )


def to_csv(g: CircuitGraph, path: Any) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["element", "name", "src", "dst", "port", "score", "in_graph"])
        for i, name in enumerate(g.node_names):
            writer.writerow(
                ["node", name, "", "", "", repr(float(g.node_scores[i])), bool(g.node_in_graph[i])]
            )
        names = g.node_names
        for i, (s, d, p) in enumerate(
            zip(g.edge_src.tolist(), g.edge_dst.tolist(), g.edge_port.tolist(), strict=True)
        ):
            writer.writerow(
                [
                    "edge",
                    edge_name(names[s], names[d], g.ports[p]),
                    names[s],
                    names[d],
                    g.ports[p],
                    repr(float(g.edge_scores[i])),
                    bool(g.edge_in_graph[i]),
                ]
            )


def summary(g: CircuitGraph, k: int = 10) -> str:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        # a negative k sliced off the last |k| rows ("everything except 5")
        raise InterpError(f"summary(k): k must be an int >= 0; got {k!r}.")
    lines = [repr(g)]
    if g.model:
        m = g.model
        lines.append(f"model: {m.name} ({m.architecture}, {m.n_layers} layers, {m.n_heads} heads)")
    for key in ("method", "metric", "task"):
        if getattr(g, key):
            lines.append(f"{key}: {getattr(g, key)}")
    lines.append(f"toolkit version: {g.version}")
    for title, names, scores in (
        ("nodes", list(g.node_names), g.node_scores),
        ("edges", g.edge_names() if len(g.edge_src) else [], g.edge_scores),
    ):
        scored = (~scores.isnan()).nonzero().flatten()
        if len(scored) == 0:
            continue
        order = scored[scores[scored].double().abs().argsort(descending=True)][:k]
        lines.append(f"top {len(order)} {title} by |score|:")
        for i in order.tolist():
            lines.append(f"  {names[i]:<28} {float(scores[i]):+.5g}")
    return "\n".join(lines)


# -- the export formats these functions implement ------------------------------------------------


@register_format("json", suffixes=(".json",), description="the toolkit's lossless JSON")
def _write_json(g: CircuitGraph, path: Path) -> None:
    to_json(g, path, indent=1)


@register_format("eap-ig", description="EAP-IG's Graph.to_json format (full transformer graphs)")
def _write_eap_ig(g: CircuitGraph, path: Path) -> None:
    to_eap_ig(g, path)


@register_format("graphml", suffixes=(".graphml",), description="GraphML (Gephi, Cytoscape, yEd)")
def _write_graphml(g: CircuitGraph, path: Path) -> None:
    to_graphml(g, path)


@register_format("dot", suffixes=(".dot", ".gv"), description="Graphviz DOT of the circuit")
def _write_dot(g: CircuitGraph, path: Path) -> None:
    to_dot(g, path)


@register_format("csv", suffixes=(".csv",), description="one table of nodes and edges")
def _write_csv(g: CircuitGraph, path: Path) -> None:
    to_csv(g, path)


@register_format("gexf", suffixes=(".gexf",), description="GEXF, Gephi's own format")
def _write_gexf(g: CircuitGraph, path: Path) -> None:
    import networkx as nx

    nx_graph = to_networkx(g)
    nx_graph.graph.clear()  # GEXF keeps no graph-level attributes; scores and masks stay
    nx.write_gexf(nx_graph, str(path))
