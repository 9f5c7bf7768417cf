"""The EAP-IG graph of a transformer, enumerated once, with its dense writer x reader layout.

Writers are the graph nodes that add to the residual stream: ``input``, every head, every MLP.
Readers are the places that read it: each head's ``<q>``, ``<k>``, ``<v>`` port, each MLP's
input and the final residual that ``logits`` reads. Every edge is a (writer, reader) pair, so
edge scores and patch masks are dense (readers, writers) matrices, and an edge's place in that
matrix is two integers that the layout holds for every edge (``edge_writer``, ``edge_reader``).

Sites are grouped the way the model computes them, so one hook handles a whole layer:
``a{L}.result`` holds all heads' outputs, ``a{L}<q>`` all heads' query inputs, and so on.
Grouped-query models must be ungrouped before edge methods hook them
(:func:`interp.ungrouped`), so that each query head has its own key and value input; the
layout itself depends only on the number of layers and heads and on whether attention and MLP
run in parallel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from ._spec import ModelSpec

__all__ = ["PORTS", "GraphLayout", "ReaderGroup", "WriterGroup"]

PORTS = ("", "q", "k", "v")  # a graph's port vocabulary; index 0 is "no port"


@dataclass(frozen=True)
class WriterGroup:
    """Writers whose outputs one site holds (a layer's heads, or one MLP, or the input)."""

    site: str
    index: tuple[int, ...]  # writer indices, in the order of the site's head axis (or one)
    per_head: bool


@dataclass(frozen=True)
class ReaderGroup:
    """Readers whose inputs one site holds (a layer's q, k or v inputs, an MLP, the logits)."""

    site: str
    index: tuple[int, ...]  # reader indices
    per_head: bool
    n_prior: int  # writers computed before this reader (the only ones it can read)


class GraphLayout:
    """Nodes, edges and the dense (reader, writer) place of every edge of a transformer graph.

    Build it with :meth:`of` (one layout per shape, shared); :meth:`CircuitGraph.from_model
    <interp.CircuitGraph.from_model>` takes its nodes and edges from here, and every method that
    scores or patches edges writes through ``edge_reader`` / ``edge_writer``.

    Examples
    --------
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
    >>> layout = GraphLayout.of(spec)
    >>> layout.n_writers, layout.n_readers, len(layout.edge_src)
    (4, 8, 13)
    >>> layout.writers[int(layout.edge_writer[0])], layout.readers[int(layout.edge_reader[0])]
    ('input', ('a0.h0', 'q'))
    """

    def __init__(self, n_layers: int, n_heads: int, parallel_attn_mlp: bool) -> None:
        self.key = (n_layers, n_heads, parallel_attn_mlp)
        self.parallel_attn_mlp = parallel_attn_mlp
        H = n_heads
        writers: list[str] = ["input"]
        readers: list[tuple[str, str]] = []
        writer_groups = [WriterGroup("input", (0,), False)]
        reader_groups: list[ReaderGroup] = []
        src: list[int] = []  # writer index of each edge
        dst: list[int] = []  # reader index of each edge
        for layer in range(n_layers):
            heads = [f"a{layer}.h{h}" for h in range(H)]
            n_prior = len(writers)
            port_start = len(readers)
            for port in "qkv":
                start = len(readers)
                readers += [(head, port) for head in heads]
                reader_groups.append(
                    ReaderGroup(f"a{layer}<{port}>", tuple(range(start, start + H)), True, n_prior)
                )
            # EAP-IG's edge order: per head, per upstream writer, per port
            for h in range(H):
                for u in range(n_prior):
                    for p in range(3):
                        src.append(u)
                        dst.append(port_start + p * H + h)
            start = len(writers)
            writers += heads
            writer_groups.append(
                WriterGroup(f"a{layer}.result", tuple(range(start, start + H)), True)
            )
            mlp_prior = n_prior if parallel_attn_mlp else len(writers)
            readers.append((f"m{layer}", ""))
            reader_groups.append(ReaderGroup(f"m{layer}.in", (len(readers) - 1,), False, mlp_prior))
            src += range(mlp_prior)
            dst += [len(readers) - 1] * mlp_prior
            writers.append(f"m{layer}")
            writer_groups.append(WriterGroup(f"m{layer}", (len(writers) - 1,), False))
        readers.append(("logits", ""))
        reader_groups.append(
            ReaderGroup(f"r{n_layers - 1}.post", (len(readers) - 1,), False, len(writers))
        )
        src += range(len(writers))
        dst += [len(readers) - 1] * len(writers)

        self.writers = tuple(writers)
        self.readers = tuple(readers)
        self.writer_groups = tuple(writer_groups)
        self.reader_groups = tuple(reader_groups)
        self.writer_index = {name: i for i, name in enumerate(writers)}
        self.reader_index = {key: i for i, key in enumerate(readers)}
        # graph nodes: every writer in order, then logits
        self.node_names = (*writers, "logits")
        self.node_writer = torch.cat([torch.arange(len(writers)), torch.tensor([-1])])
        self.edge_writer = torch.tensor(src, dtype=torch.long)
        self.edge_reader = torch.tensor(dst, dtype=torch.long)
        node_of_reader = torch.tensor(
            [self.node_names.index(name) if name == "logits" else self.writer_index[name]
             for name, _ in readers]
        )  # fmt: skip
        port_of_reader = torch.tensor([PORTS.index(port) for _, port in readers])
        self.edge_src = self.edge_writer  # node index = writer index
        self.edge_dst = node_of_reader[self.edge_reader]
        self.edge_port = port_of_reader[self.edge_reader]

    @classmethod
    def of(cls, spec: ModelSpec) -> GraphLayout:
        """The layout of a model's graph (built once per shape and shared)."""
        return _layout(spec.n_layers, spec.n_heads, spec.parallel_attn_mlp)

    @property
    def n_writers(self) -> int:
        return len(self.writers)

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    def __repr__(self) -> str:
        n_layers, n_heads, parallel = self.key
        return (
            f"GraphLayout({n_layers} layers, {n_heads} heads{', parallel' if parallel else ''}: "
            f"{self.n_writers} writers x {self.n_readers} readers, {len(self.edge_src)} edges)"
        )

    def to_matrix(self, values: Tensor) -> Tensor:
        """Per-edge values (edges, ...) scattered into a (readers, writers, ...) matrix, zeros
        (or False) where there is no edge."""
        out = values.new_zeros(self.n_readers, self.n_writers, *values.shape[1:])
        out[self.edge_reader.to(values.device), self.edge_writer.to(values.device)] = values
        return out

    def from_matrix(self, matrix: Tensor) -> Tensor:
        """Per-edge values read from a (..., readers, writers) matrix."""
        r, w = self.edge_reader.to(matrix.device), self.edge_writer.to(matrix.device)
        return matrix[..., r, w]

    def writer_values(self, input: Tensor, heads: Tensor, mlps: Tensor) -> Tensor:
        """Per-writer values from the input's (scalar), the heads' (layers, heads) and the
        MLPs' (layers,) ones, in writer order."""
        per_layer = torch.cat([heads, mlps[:, None]], dim=1).flatten()
        return torch.cat([input.reshape(1).to(per_layer), per_layer])

    def node_values(self, per_writer: Tensor) -> Tensor:
        """Per-node values from per-writer ones (NaN for nodes that write nothing: logits)."""
        nan = per_writer.new_full((1,), float("nan"))
        return torch.cat([per_writer, nan])[self.node_writer.to(per_writer.device)]


@functools.cache
def _layout(n_layers: int, n_heads: int, parallel_attn_mlp: bool) -> GraphLayout:
    return GraphLayout(n_layers, n_heads, parallel_attn_mlp)
