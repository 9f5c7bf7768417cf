"""How the EAP-IG graph of a transformer maps onto sites of the hooked model.

Writers are the graph nodes that add to the residual stream: ``input``, every head, every MLP.
Readers are the places that read it: each head's ``<q>``, ``<k>``, ``<v>`` port, each MLP's
input and the final residual that ``logits`` reads. Every edge is a (writer, reader) pair.

Sites are grouped the way the model computes them, so one hook handles a whole layer:
``a{L}.result`` holds all heads' outputs, ``a{L}<q>`` all heads' query inputs, and so on.
Grouped-query models must be ungrouped first (:func:`interp.ungroup_gqa`), so that each query
head has its own key and value input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from interp import CircuitGraph, InterpError, ModelSpec

__all__ = ["GraphLayout"]


@dataclass(frozen=True)
class WriterGroup:
    site: str
    index: tuple[int, ...]  # writer indices, in the order of the site's head axis (or one)
    per_head: bool


@dataclass(frozen=True)
class ReaderGroup:
    site: str
    index: tuple[int, ...]  # reader indices
    per_head: bool
    n_prior: int  # writers computed before this reader (the only ones it can read)


class GraphLayout:
    """Writer and reader indices of a model's graph, and the sites that hold them."""

    def __init__(self, spec: ModelSpec) -> None:
        if spec.parallel_attn_mlp:
            raise InterpError("Edge methods support sequential attention/MLP blocks only.")
        if spec.n_kv_heads != spec.n_heads:
            raise InterpError(
                "Edge-level graphs need one key/value input per query head; ungroup the model "
                "first with interp.ungroup_gqa(model)."
            )
        self.spec = spec
        H, last = spec.n_heads, spec.n_layers - 1
        writers: list[str] = ["input"]
        readers: list[tuple[str, str]] = []
        self.writer_groups: list[WriterGroup] = [WriterGroup("input", (0,), False)]
        self.reader_groups: list[ReaderGroup] = []
        for layer in range(spec.n_layers):
            heads = [f"a{layer}.h{h}" for h in range(H)]
            for port in "qkv":
                start = len(readers)
                readers += [(head, port) for head in heads]
                self.reader_groups.append(
                    ReaderGroup(
                        f"a{layer}<{port}>", tuple(range(start, start + H)), True, len(writers)
                    )
                )
            start = len(writers)
            writers += heads
            self.writer_groups.append(
                WriterGroup(f"a{layer}.result", tuple(range(start, start + H)), True)
            )
            readers.append((f"m{layer}", ""))
            self.reader_groups.append(
                ReaderGroup(f"m{layer}.in", (len(readers) - 1,), False, len(writers))
            )
            writers.append(f"m{layer}")
            self.writer_groups.append(WriterGroup(f"m{layer}", (len(writers) - 1,), False))
        readers.append(("logits", ""))
        self.reader_groups.append(
            ReaderGroup(f"r{last}.post", (len(readers) - 1,), False, len(writers))
        )
        self.writers = writers
        self.readers = readers
        self.writer_index = {name: i for i, name in enumerate(writers)}
        self.reader_index = {key: i for i, key in enumerate(readers)}

    @property
    def n_writers(self) -> int:
        return len(self.writers)

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    def edge_index(self, graph: CircuitGraph) -> tuple[Tensor, Tensor]:
        """(writer, reader) index of every edge of a graph built for this model."""
        names = graph.node_names
        try:
            w = [self.writer_index[names[s]] for s in graph.edge_src.tolist()]
            r = [
                self.reader_index[(names[d], graph.ports[p])]
                for d, p in zip(graph.edge_dst.tolist(), graph.edge_port.tolist(), strict=True)
            ]
        except KeyError as err:
            raise InterpError(
                f"The graph has an edge end {err.args[0]!r} that is not part of this model's "
                f"graph ({self.spec.n_layers} layers, {self.spec.n_heads} heads)."
            ) from None
        return torch.tensor(w, dtype=torch.long), torch.tensor(r, dtype=torch.long)

    def to_matrix(self, graph: CircuitGraph, values: Tensor) -> Tensor:
        """Scatter per-edge values into a (reader, writer) matrix (zeros elsewhere)."""
        w, r = self.edge_index(graph)
        out = torch.zeros(self.n_readers, self.n_writers, dtype=values.dtype)
        out[r, w] = values
        return out

    def from_matrix(self, graph: CircuitGraph, matrix: Tensor) -> Tensor:
        """Per-edge values read from a (reader, writer) matrix."""
        w, r = self.edge_index(graph)
        return matrix[r, w]

    def node_values(self, graph: CircuitGraph, per_writer: Tensor) -> Tensor:
        """Per-node values from per-writer ones (NaN for nodes that write nothing: logits)."""
        out = torch.full((len(graph.node_names),), float("nan"), dtype=per_writer.dtype)
        for i, name in enumerate(graph.node_names):
            if name in self.writer_index:
                out[i] = per_writer[self.writer_index[name]]
        return out
