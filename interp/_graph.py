"""``CircuitGraph``: the one object every method returns.

Nodes are names (sites of a transformer, or any label for other analyses) with scores and an
``in_graph`` mask; edges are (writer, reader, port) triples with scores and an ``in_graph`` mask.
Storage is a handful of tensors, so selection is tensor work; ``graph.nodes[name]`` and
``graph.edges[name]`` are read-only views. Every selection returns a new graph.

Transformer graphs follow EAP-IG: nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``; an edge
into an attention head enters through its ``q``, ``k`` or ``v`` port and is named
``a0.h1->a2.h3<q>``. Unscored nodes and edges hold NaN.
"""

from __future__ import annotations

import heapq
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ._errors import GraphFormatError, InterpError, UnknownSiteError, check_option, did_you_mean
from ._layout import PORTS, GraphLayout
from ._site import Site
from ._spec import ModelSpec

__all__ = ["CircuitGraph", "EdgeView", "NodeView"]

Level = Literal["edge", "node"]
Strategy = Literal["global", "greedy"]  # how top(k) picks its k edges
DEFAULT_PORTS = PORTS
SCORE_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class NodeView:
    """A read-only view of one node."""

    graph: CircuitGraph
    index: int

    @property
    def name(self) -> str:
        return self.graph.node_names[self.index]

    @property
    def score(self) -> float:
        return float(self.graph.node_scores[self.index])

    @property
    def in_graph(self) -> bool:
        return bool(self.graph.node_in_graph[self.index])

    @property
    def site(self) -> Site | None:
        """The node as a :class:`Site` (``None`` for labels that are not site names)."""
        try:
            return Site.parse(self.name)
        except UnknownSiteError:
            return None

    def __repr__(self) -> str:
        return f"Node({self.name!r}, score={self.score:.6g}, in_graph={self.in_graph})"


@dataclass(frozen=True)
class EdgeView:
    """A read-only view of one edge."""

    graph: CircuitGraph
    index: int

    @property
    def src(self) -> str:
        return self.graph.node_names[int(self.graph.edge_src[self.index])]

    @property
    def dst(self) -> str:
        return self.graph.node_names[int(self.graph.edge_dst[self.index])]

    @property
    def port(self) -> str:
        return self.graph.ports[int(self.graph.edge_port[self.index])]

    @property
    def name(self) -> str:
        return edge_name(self.src, self.dst, self.port)

    @property
    def score(self) -> float:
        return float(self.graph.edge_scores[self.index])

    @property
    def in_graph(self) -> bool:
        return bool(self.graph.edge_in_graph[self.index])

    def __repr__(self) -> str:
        return f"Edge({self.name!r}, score={self.score:.6g}, in_graph={self.in_graph})"


def edge_name(src: str, dst: str, port: str = "") -> str:
    """EAP-IG's edge name: ``src->dst`` or ``src->dst<port>``."""
    return f"{src}->{dst}<{port}>" if port else f"{src}->{dst}"


class _Views(Mapping):
    def __init__(self, graph: CircuitGraph, kind: str) -> None:
        self._graph, self._kind = graph, kind

    def _index(self) -> dict[str, int]:
        return self._graph._node_index if self._kind == "node" else self._graph._edge_index()

    def __getitem__(self, name: str) -> NodeView | EdgeView:
        index = self._index().get(name)
        if index is None:
            raise UnknownSiteError(
                f"The graph has no {self._kind} {name!r}." + did_you_mean(name, self._index())
            )
        return (
            NodeView(self._graph, index) if self._kind == "node" else EdgeView(self._graph, index)
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._graph.node_names) if self._kind == "node" else len(self._graph.edge_src)

    def in_graph(self) -> list[NodeView | EdgeView]:
        """Views of the members that are in the graph."""
        mask = self._graph.node_in_graph if self._kind == "node" else self._graph.edge_in_graph
        return [self[name] for name, keep in zip(self, mask.tolist(), strict=True) if keep]


class CircuitGraph:
    """Scores and circuit masks over the nodes and edges of a model's computational graph.

    Parameters
    ----------
    nodes : sequence of str
        Node names, unique (for transformers: EAP-IG names, see :meth:`from_model`).
    edges : sequence of (src, dst) or (src, dst, port)
        Edges by node name; ``port`` is ``""`` or one of ``ports``.
    node_scores, edge_scores : tensor or sequence of float, optional
        NaN where unscored (the default).
    node_in_graph, edge_in_graph : bool tensor or sequence, optional
        Circuit membership (all ``False`` by default).
    model : ModelSpec, optional
        The model the graph describes.
    method, metric, task : str, optional
        How the scores were made.
    meta : dict, optional
        Anything else (JSON-serialisable).
    ports : sequence of str
        Port vocabulary, ``("", "q", "k", "v")`` by default.
    score_dtype : torch.dtype
        float32 (default) or float64.

    Examples
    --------
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
    >>> g = CircuitGraph.from_model(spec)
    >>> len(g.nodes), len(g.edges)
    (5, 13)
    >>> g.edges["input->a0.h1<k>"].score
    nan
    """

    def __init__(
        self,
        nodes: Sequence[str],
        edges: Sequence[tuple[str, ...]] = (),
        *,
        node_scores: Tensor | Sequence[float] | None = None,
        node_in_graph: Tensor | Sequence[bool] | None = None,
        edge_scores: Tensor | Sequence[float] | None = None,
        edge_in_graph: Tensor | Sequence[bool] | None = None,
        model: ModelSpec | None = None,
        method: str | None = None,
        metric: str | None = None,
        task: str | None = None,
        meta: dict[str, Any] | None = None,
        ports: Sequence[str] = DEFAULT_PORTS,
        score_dtype: torch.dtype = torch.float32,
        version: str | None = None,
    ) -> None:
        self.node_names = tuple(nodes)
        self._node_index = {name: i for i, name in enumerate(self.node_names)}
        if len(self._node_index) != len(self.node_names):
            dupes = sorted({n for n in self.node_names if self.node_names.count(n) > 1})
            raise GraphFormatError(f"Node names must be unique; repeated: {dupes[:5]}.")
        for name in self.node_names:
            if not isinstance(name, str) or not name:
                raise GraphFormatError(f"Node names must be non-empty strings; got {name!r}.")
        self.ports = tuple(ports)
        if "" not in self.ports:
            raise GraphFormatError("The port vocabulary must contain '' (no port).")
        port_index = {p: i for i, p in enumerate(self.ports)}
        src, dst, port = [], [], []
        for edge in edges:
            if len(edge) not in (2, 3):
                raise GraphFormatError(f"An edge is (src, dst) or (src, dst, port); got {edge!r}.")
            s, d, *p = edge
            for end in (s, d):
                if end not in self._node_index:
                    raise GraphFormatError(
                        f"Edge {edge!r} names node {end!r}, which is not among the nodes."
                        + did_you_mean(str(end), self.node_names)
                    )
            p = p[0] if p else ""
            if p not in port_index:
                raise GraphFormatError(f"Edge {edge!r} has port {p!r}; known ports: {self.ports}.")
            src.append(self._node_index[s])
            dst.append(self._node_index[d])
            port.append(port_index[p])
        if len(set(zip(src, dst, port, strict=True))) != len(src):
            raise GraphFormatError("Edges must be unique: some (src, dst, port) appears twice.")
        self.edge_src = torch.tensor(src, dtype=torch.long)
        self.edge_dst = torch.tensor(dst, dtype=torch.long)
        self.edge_port = torch.tensor(port, dtype=torch.long)
        if score_dtype not in SCORE_DTYPES.values():
            raise GraphFormatError(f"score_dtype must be float32 or float64; got {score_dtype}.")
        n, e = len(self.node_names), len(src)
        self.node_scores = _scores(node_scores, n, score_dtype, "node_scores")
        self.edge_scores = _scores(edge_scores, e, score_dtype, "edge_scores")
        self.node_in_graph = _mask(node_in_graph, n, "node_in_graph")
        self.edge_in_graph = _mask(edge_in_graph, e, "edge_in_graph")
        if model is not None and not isinstance(model, ModelSpec):
            raise GraphFormatError(f"model must be a ModelSpec; got {type(model).__name__}.")
        self.model = model
        self.method, self.metric, self.task = method, metric, task
        self.meta = dict(meta or {})
        self.version = version or _version()
        self._edge_index_cache: dict[str, int] | None = None
        self._layout: GraphLayout | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model: Any, **kwargs: Any) -> CircuitGraph:
        """The full EAP-IG graph of a transformer: every edge from a writer to a later reader.

        ``model`` is a :class:`ModelSpec` or anything with a ``.spec`` (a loaded model).
        Writers are ``input``, every head and every MLP; readers are every head (through its
        ``q``, ``k`` and ``v`` ports), every MLP and ``logits``. An MLP reads the heads of its own
        layer unless attention and MLP run in parallel.
        """
        spec = model if isinstance(model, ModelSpec) else getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise InterpError(
                f"from_model needs a ModelSpec or a loaded model; got {type(model).__name__}."
            )
        layout = GraphLayout.of(spec)
        edge_scores = kwargs.pop("edge_scores", None)
        edge_in_graph = kwargs.pop("edge_in_graph", None)
        graph = cls(layout.node_names, model=spec, **kwargs)
        if graph.ports != PORTS:
            raise InterpError(f"Transformer graphs use the ports {PORTS}; got {graph.ports}.")
        n = len(layout.edge_src)
        graph.edge_src, graph.edge_dst, graph.edge_port = (
            layout.edge_src,
            layout.edge_dst,
            layout.edge_port,
        )  # shared, never written: every selection replaces masks and scores, not these
        graph.edge_scores = _scores(edge_scores, n, graph.score_dtype, "edge_scores")
        graph.edge_in_graph = _mask(edge_in_graph, n, "edge_in_graph")
        graph._layout = layout
        return graph

    @property
    def layout(self) -> GraphLayout:
        """The dense (reader, writer) layout of a full transformer graph: where each edge sits in
        edge-score and patch-mask matrices (see :class:`interp.GraphLayout`).

        Graphs from :meth:`from_model` carry it; a graph read from a file gets it once its nodes
        and edges are checked to be its model's full graph, in order.
        """
        if self._layout is None:
            if self.model is None:
                raise InterpError(
                    "This graph has no model spec, so it has no transformer layout; build it "
                    "with CircuitGraph.from_model(model)."
                )
            layout = GraphLayout.of(self.model)
            same = (
                self.node_names == layout.node_names
                and self.ports == PORTS
                and all(
                    torch.equal(getattr(self, name), getattr(layout, name))
                    for name in ("edge_src", "edge_dst", "edge_port")
                )
            )
            if not same:
                raise InterpError(
                    "This graph's nodes and edges are not the full graph of its model "
                    f"({self.model.n_layers} layers, {self.model.n_heads} heads) in "
                    "CircuitGraph.from_model's order, so edge methods cannot place its edges."
                )
            self._layout = layout
        return self._layout

    def copy(self, **changes: Any) -> CircuitGraph:
        """A new graph sharing nothing mutable with this one, with some fields changed."""
        new = object.__new__(CircuitGraph)
        new.__dict__.update(self.__dict__)
        for name in ("node_scores", "edge_scores", "node_in_graph", "edge_in_graph"):
            setattr(new, name, getattr(self, name).clone())
        new.meta = dict(self.meta)
        for key, value in changes.items():
            if not hasattr(new, key):
                raise InterpError(f"CircuitGraph has no field {key!r}.")
            setattr(new, key, value)
        return new

    def with_scores(
        self,
        node_scores: Tensor | None = None,
        edge_scores: Tensor | None = None,
        **fields: Any,
    ) -> CircuitGraph:
        """A new graph with the given scores (shapes checked), e.g. the output of a method."""
        new = self.copy(**fields)
        if node_scores is not None:
            new.node_scores = _scores(
                node_scores, len(self.node_names), self.score_dtype, "node_scores"
            )
        if edge_scores is not None:
            new.edge_scores = _scores(
                edge_scores, len(self.edge_src), self.score_dtype, "edge_scores"
            )
        return new

    # -- views and sizes ----------------------------------------------------------------------

    @property
    def nodes(self) -> _Views:
        """Mapping from node name to a read-only :class:`NodeView`."""
        return _Views(self, "node")

    @property
    def edges(self) -> _Views:
        """Mapping from edge name to a read-only :class:`EdgeView`."""
        return _Views(self, "edge")

    @property
    def node_index(self) -> Mapping[str, int]:
        """Node name to its position in ``node_names`` (and in every per-node tensor)."""
        return MappingProxyType(self._node_index)

    @property
    def score_dtype(self) -> torch.dtype:
        return self.node_scores.dtype

    def _edge_index(self) -> dict[str, int]:
        if self._edge_index_cache is None:
            self._edge_index_cache = {name: i for i, name in enumerate(self.edge_names())}
        return self._edge_index_cache

    def edge_names(self) -> list[str]:
        """Every edge's EAP-IG name, in storage order."""
        names, ports = self.node_names, self.ports
        return [
            edge_name(names[s], names[d], ports[p])
            for s, d, p in zip(
                self.edge_src.tolist(), self.edge_dst.tolist(), self.edge_port.tolist(), strict=True
            )
        ]

    @property
    def n_nodes_in_graph(self) -> int:
        return int(self.node_in_graph.sum())

    @property
    def n_edges_in_graph(self) -> int:
        return int(self.edge_in_graph.sum())

    def __repr__(self) -> str:
        model = self.model.name if self.model else "no model"
        return (
            f"CircuitGraph({model}, method={self.method!r}: {len(self.node_names)} nodes "
            f"({self.n_nodes_in_graph} in graph), {len(self.edge_src)} edges "
            f"({self.n_edges_in_graph} in graph))"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CircuitGraph):
            return NotImplemented
        return (
            self.node_names == other.node_names
            and self.ports == other.ports
            and all(
                torch.equal(getattr(self, n), getattr(other, n))
                for n in ("edge_src", "edge_dst", "edge_port", "node_in_graph", "edge_in_graph")
            )
            and _same_scores(self.node_scores, other.node_scores)
            and _same_scores(self.edge_scores, other.edge_scores)
            and (self.model, self.method, self.metric, self.task, self.meta, self.version)
            == (other.model, other.method, other.metric, other.task, other.meta, other.version)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable tensors inside

    # -- selection ----------------------------------------------------------------------------

    def _ranked(self, level: Level, absolute: bool) -> Tensor:
        """Scores to rank by; -inf for what is never ranked (unscored, and at node level the
        sources and sinks, which always stay in)."""
        scores = self._level_scores(level).double()
        scores = scores.abs() if absolute else scores
        skip = scores.isnan() | (self._ends() if level == "node" else False)
        return torch.where(skip, torch.full_like(scores, -math.inf), scores)

    def _has_in_out(self) -> tuple[Tensor, Tensor]:
        """Which nodes have an incoming and which an outgoing edge in the full graph."""
        n = len(self.node_names)
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[self.edge_dst] = True
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[self.edge_src] = True
        return has_in, has_out

    def _ends(self) -> Tensor:
        """Sources (no incoming edge) and sinks (no outgoing edge) of a graph with edges."""
        if len(self.edge_src) == 0:
            return torch.zeros(len(self.node_names), dtype=torch.bool)
        has_in, has_out = self._has_in_out()
        return ~has_in | ~has_out

    def _level_scores(self, level: Level) -> Tensor:
        if level == "edge":
            return self.edge_scores
        if level == "node":
            return self.node_scores
        raise InterpError(f"level must be 'edge' or 'node'; got {level!r}.")

    def _select(self, chosen: Tensor, level: Level, prune: bool) -> CircuitGraph:
        new = self.copy()
        if level == "edge":
            new.edge_in_graph = chosen
            touched = torch.zeros_like(new.node_in_graph)
            touched[self.edge_src[chosen]] = True
            touched[self.edge_dst[chosen]] = True
            new.node_in_graph = touched
        else:
            # unscored nodes, sources and sinks (input, logits) stay in
            new.node_in_graph = chosen | self.node_scores.isnan() | self._ends()
            new.edge_in_graph = new.node_in_graph[self.edge_src] & new.node_in_graph[self.edge_dst]
        if not prune:
            return new
        pruned = new.prune()
        if bool(chosen.any()) and pruned.n_edges_in_graph == 0 and len(self.edge_src):
            warnings.warn(
                f"None of the {int(chosen.sum())} chosen {level}s lies on a path from the input "
                "to the logits, so the circuit is empty after pruning (prune=False keeps them; "
                "greedy selection, strategy='greedy', grows connected circuits).",
                stacklevel=3,
            )
        return pruned

    def n_ranked(self, level: Level = "edge") -> int:
        """How many edges (or nodes) :meth:`top` can choose from: the scored ones, and at node
        level not the sources and sinks (``input`` and ``logits``), which always stay in."""
        return int((self._ranked(level, True) > -math.inf).sum())

    def top(
        self,
        k: int,
        *,
        level: Level = "edge",
        absolute: bool = True,
        prune: bool = True,
        strategy: Strategy = "global",
    ) -> CircuitGraph:
        """A new graph whose circuit is the ``k`` highest-scoring edges (or nodes).

        Parameters
        ----------
        k : int
            How many edges (or nodes) to choose, at most :meth:`n_ranked`.
        level : {"edge", "node"}
            At node level, unscored (NaN) nodes such as ``input`` and ``logits`` stay in and the
            edges between chosen nodes join.
        absolute : bool
            Rank by ``|score|`` (the default) or by the signed score, so that the ``k`` most
            positive come first (negative ones only once every positive one is in).
        prune : bool
            Then keep only what lies on a path from input to logits (:meth:`prune`), so the
            circuit can end up with fewer than ``k`` edges.
        strategy : {"global", "greedy"}
            ``global`` takes the ``k`` best of all edges (EAP-IG's ``apply_topn``). ``greedy``
            (edges only; EAP-IG's ``apply_greedy``) grows the circuit from the logits: it starts
            with the sinks (``logits``) and repeatedly adds the best edge whose destination is
            already in the circuit, so every chosen edge reaches the logits through chosen
            edges; ``prune`` then drops those that do not reach the input. Unscored edges are
            never chosen, so greedy stops early when only they lead further.

        Examples
        --------
        >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=2, d_model=8)
        >>> g = CircuitGraph.from_model(spec)
        >>> g = g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges)))
        >>> g.top(5, prune=False).n_edges_in_graph
        5
        >>> greedy = g.top(5, strategy="greedy", prune=False)
        >>> sorted(e.dst for e in greedy.edges.in_graph())[-1]
        'logits'
        """
        check_option("strategy", strategy, Strategy)
        scores = self._ranked(level, absolute)
        n_scored = int((scores > -math.inf).sum())
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise InterpError(f"k must be an int >= 0; got {k!r}.")
        if k > n_scored:
            raise InterpError(f"k={k} but the graph has only {n_scored} scored {level}s.")
        if strategy == "greedy":
            if level != "edge":
                raise InterpError(
                    "Greedy selection grows a circuit edge by edge; use level='edge' (or "
                    "strategy='global' for nodes)."
                )
            return self._select(self._greedy(k, scores), level, prune)
        chosen = torch.zeros(scores.shape, dtype=torch.bool)
        chosen[torch.argsort(scores, descending=True, stable=True)[:k]] = True
        return self._select(chosen, level, prune)

    def _greedy(self, k: int, scores: Tensor) -> Tensor:
        """Mask of the ``k`` edges that greedy growth from the sinks picks (``scores``: -inf
        for unscored edges, which are never picked).

        One heap entry per node in the circuit: its best incoming edge not yet taken. Each
        node's incoming edges are sorted once, so growing to ``k`` edges costs O(E log E) for
        the sort and O(k log N) for the heap. Ties go to the lower edge index, as in
        :meth:`top`.
        """
        n_nodes = len(self.node_names)
        score = scores.numpy()
        dst = self.edge_dst.numpy()
        # incoming edges grouped by node, best first, ties by edge index; unscored ones last
        order = np.lexsort((np.arange(len(score)), -score, dst))
        order = order[score[order] > -np.inf]
        counts = np.bincount(dst[order], minlength=n_nodes)
        ends = np.cumsum(counts)
        starts, ends = (ends - counts).tolist(), ends.tolist()
        order_list, score_list = order.tolist(), score.tolist()
        src = self.edge_src.tolist()
        heap: list[tuple[float, int, int, int]] = []  # (-score, edge, node, place in order)

        def offer(node: int, at: int) -> None:
            if at < ends[node]:
                edge = order_list[at]
                heapq.heappush(heap, (-score_list[edge], edge, node, at))

        _, has_out = self._has_in_out()
        in_circuit = (~has_out).tolist()  # the sinks (logits)
        for node in range(n_nodes):
            if in_circuit[node]:
                offer(node, starts[node])
        chosen = torch.zeros(len(self.edge_src), dtype=torch.bool)
        taken: list[int] = []
        while heap and len(taken) < k:
            _, edge, node, at = heapq.heappop(heap)
            taken.append(edge)
            offer(node, at + 1)
            parent = src[edge]
            if not in_circuit[parent]:
                in_circuit[parent] = True
                offer(parent, starts[parent])
        chosen[torch.tensor(taken, dtype=torch.long)] = True
        return chosen

    def threshold(
        self, x: float, *, level: Level = "edge", absolute: bool = True, prune: bool = True
    ) -> CircuitGraph:
        """A new graph whose circuit is every edge (or node) scoring at least ``x``."""
        if not isinstance(x, int | float) or math.isnan(x):
            raise InterpError(f"threshold must be a number; got {x!r}.")
        return self._select(self._ranked(level, absolute) >= x, level, prune)

    def prune(self) -> CircuitGraph:
        """A new graph keeping only circuit nodes and edges on a path from a source to a sink.

        Sources are nodes without incoming edges in the full graph (``input``), sinks nodes
        without outgoing edges (``logits``). A graph without edges is returned unchanged.
        """
        new = self.copy()
        if len(self.edge_src) == 0:
            return new
        src, dst = self.edge_src, self.edge_dst
        node = self.node_in_graph
        active = self.edge_in_graph & node[src] & node[dst]
        has_in, has_out = self._has_in_out()
        forward = _reach(node & ~has_in, src[active], dst[active])
        backward = _reach(node & ~has_out, dst[active], src[active])
        new.node_in_graph = node & forward & backward
        new.edge_in_graph = active & new.node_in_graph[src] & new.node_in_graph[dst]
        return new

    # -- formats (implemented in _graph_io) ----------------------------------------------------

    def export(self, path: Any, format: str | None = None) -> Any:
        """Write the graph to ``path`` in a registered format (``interp.FORMATS``), inferred from
        the suffix unless given; the file is written atomically. Returns the path.

        Examples
        --------
        >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
        >>> sorted(FORMATS)[:3]
        ['csv', 'dot', 'eap-ig']
        """
        from ._formats import export

        return export(self, path, format)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (see :func:`to_json`)."""
        from ._graph_io import graph_to_dict

        return graph_to_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CircuitGraph:
        """Inverse of :meth:`to_dict`; validates everything and names what is wrong."""
        from ._graph_io import graph_from_dict

        return graph_from_dict(data)

    def to_json(self, path: Any = None, *, indent: int | None = None) -> str:
        """The graph as JSON text (lossless); also written to ``path`` when given."""
        from ._graph_io import to_json

        return to_json(self, path, indent=indent)

    @classmethod
    def from_json(cls, source: Any) -> CircuitGraph:
        """Load from a file path, JSON text or a dict. Never executes code.

        A ``str`` is a path when it names an existing file or ends in ``.json`` (so
        ``'{copy}.json'`` is a file name), and JSON text when it starts with ``{``; a
        ``pathlib.Path`` is always a path. A file must be UTF-8 JSON; anything malformed (a
        directory, binary data, truncated or deeply nested JSON, a wrong field) raises a
        :class:`GraphFormatError` that names the problem.
        """
        from ._graph_io import from_json

        return from_json(source)

    def to_eap_ig(self, path: Any = None) -> dict[str, Any]:
        """EAP-IG's JSON graph format (transformer graphs only); written to ``path`` if given."""
        from ._graph_io import to_eap_ig

        return to_eap_ig(self, path)

    @classmethod
    def from_eap_ig(cls, source: Any, *, name: str = "eap-ig") -> CircuitGraph:
        """Import a graph saved by EAP-IG's ``Graph.to_json`` (a path, JSON string or dict)."""
        from ._graph_io import from_eap_ig

        return from_eap_ig(source, name=name)

    def to_networkx(self, *, in_graph_only: bool = False) -> Any:
        """A ``networkx.MultiDiGraph`` (edge key = port) with scores and masks as attributes."""
        from ._graph_io import to_networkx

        return to_networkx(self, in_graph_only=in_graph_only)

    @classmethod
    def from_networkx(cls, nx_graph: Any) -> CircuitGraph:
        """Inverse of :meth:`to_networkx` (also reads graphs loaded from GraphML)."""
        from ._graph_io import from_networkx

        return from_networkx(nx_graph)

    def to_graphml(self, path: Any) -> None:
        """Write GraphML (readable by networkx, Gephi, Cytoscape, yEd)."""
        from ._graph_io import to_graphml

        to_graphml(self, path)

    def to_dot(self, path: Any = None, *, in_graph_only: bool = True) -> str:
        """Graphviz DOT text of the circuit (written to ``path`` if given)."""
        from ._graph_io import to_dot

        return to_dot(self, path, in_graph_only=in_graph_only)

    def to_csv(self, path: Any) -> None:
        """One CSV table of nodes and edges (column ``element`` tells which)."""
        from ._graph_io import to_csv

        to_csv(self, path)

    def nodes_df(self) -> Any:
        """A pandas DataFrame with one row per node."""
        from ._graph_io import nodes_df

        return nodes_df(self)

    def edges_df(self) -> Any:
        """A pandas DataFrame with one row per edge."""
        from ._graph_io import edges_df

        return edges_df(self)

    def draw(
        self, path: Any = None, *, in_graph_only: bool = True, max_edges: int = 400, ax: Any = None
    ) -> Any:
        """Draw the circuit laid out by layer (matplotlib); saved as PNG or SVG by extension."""
        from ._graph_draw import draw

        return draw(self, path, in_graph_only=in_graph_only, max_edges=max_edges, ax=ax)

    def to_html(self, path: Any = None, *, max_edges: int = 400) -> str:
        """A standalone interactive page (pan, zoom, hover, a top-k slider; no network needed)."""
        from ._graph_draw import to_html

        return to_html(self, path, max_edges=max_edges)

    def _repr_html_(self) -> str:
        """Jupyter's rich display: the interactive viewer inline (the page of ``to_html`` in an
        iframe, with at most the strongest 20,000 edges and the circuit embedded)."""
        from ._viewer import notebook_html

        return notebook_html(self)

    def summary(self, k: int = 10) -> str:
        """A short text summary: sizes, provenance and the top components."""
        from ._graph_io import summary

        return summary(self, k)


def _reach(start: Tensor, frm: Tensor, to: Tensor) -> Tensor:
    """Nodes reachable from ``start`` along edges ``frm -> to`` (fixed point of one-step spread)."""
    reached = start.clone()
    while True:
        step = reached.clone()
        step[to[reached[frm]]] = True
        if torch.equal(step, reached):
            return reached
        reached = step


def _scores(values: Any, n: int, dtype: torch.dtype, what: str) -> Tensor:
    if values is None:
        return torch.full((n,), math.nan, dtype=dtype)
    if isinstance(values, Tensor):
        t = values.detach().to("cpu", dtype)
    else:  # lists of floats straight to the score dtype (not through float32)
        t = torch.as_tensor(values, dtype=dtype)
    if t.shape != (n,):
        raise GraphFormatError(f"{what} must have shape ({n},); got {tuple(t.shape)}.")
    return t.clone()


def _mask(values: Any, n: int, what: str) -> Tensor:
    if values is None:
        return torch.zeros(n, dtype=torch.bool)
    t = torch.as_tensor(values).detach().to("cpu")
    if t.shape != (n,):
        raise GraphFormatError(f"{what} must have shape ({n},); got {tuple(t.shape)}.")
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    if t.dtype != torch.bool:
        raise GraphFormatError(f"{what} must be booleans; got {t.dtype}.")
    return t.clone()


def _same_scores(a: Tensor, b: Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])
