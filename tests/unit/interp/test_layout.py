"""The graph index: one enumeration of a transformer graph and each edge's dense place."""

from __future__ import annotations

import pytest
import torch

from interp import CircuitGraph, GraphLayout, InterpError, ModelSpec


def _reference_edges(n_layers: int, n_heads: int, parallel: bool) -> list[tuple[str, str, str]]:
    """EAP-IG's graph written out by name, independently of the layout's index arithmetic."""
    edges, upstream = [], ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for head in heads:
            edges += [(u, head, p) for u in upstream for p in "qkv"]
        mlp_reads = upstream if parallel else upstream + heads
        edges += [(u, f"m{layer}", "") for u in mlp_reads]
        upstream = upstream + heads + [f"m{layer}"]
    return edges + [(u, "logits", "") for u in upstream]


@pytest.mark.parametrize("shape", [(1, 1, False), (2, 3, False), (3, 2, True)])
def test_layout_enumerates_eap_ig_graph_and_places_every_edge(shape):
    n_layers, n_heads, parallel = shape
    spec = ModelSpec("toy", "gpt2", n_layers, n_heads, 8 * n_heads, parallel_attn_mlp=parallel)
    graph = CircuitGraph.from_model(spec)
    reference = _reference_edges(*shape)
    names = graph.node_names
    ours = [
        (names[s], names[d], graph.ports[p])
        for s, d, p in zip(
            graph.edge_src.tolist(), graph.edge_dst.tolist(), graph.edge_port.tolist(), strict=True
        )
    ]
    assert ours == reference
    layout = graph.layout
    # the dense place of each edge names the same writer and (reader, port)
    for i, (src, dst, port) in enumerate(reference):
        assert layout.writers[int(layout.edge_writer[i])] == src
        assert layout.readers[int(layout.edge_reader[i])] == (dst, port)
    # a reader group reads exactly the writers computed before it
    for group in layout.reader_groups:
        readers = set(group.index)
        read = {
            int(w)
            for w, r in zip(layout.edge_writer, layout.edge_reader, strict=True)
            if int(r) in readers
        }
        assert read == set(range(group.n_prior))


def test_matrix_round_trip_and_node_values():
    spec = ModelSpec("toy", "gpt2", 2, 2, 8)
    layout = GraphLayout.of(spec)
    values = torch.randn(len(layout.edge_src), dtype=torch.float64)
    matrix = layout.to_matrix(values)
    assert torch.equal(layout.from_matrix(matrix), values)
    assert int((matrix != 0).sum()) == len(values)  # no two edges share a place
    heads, mlps = torch.arange(4.0).view(2, 2), torch.tensor([10.0, 11.0])
    per_writer = layout.writer_values(torch.tensor(-1.0), heads, mlps)
    graph = CircuitGraph.from_model(spec)
    nodes = layout.node_values(per_writer)
    by_name = dict(zip(graph.node_names, nodes.tolist(), strict=True))
    assert by_name["input"] == -1.0 and by_name["a1.h0"] == 2.0 and by_name["m1"] == 11.0
    assert torch.isnan(torch.tensor(by_name["logits"]))


def test_layout_is_shared_per_shape_and_survives_files(tmp_path):
    spec = ModelSpec("toy", "llama", 2, 4, 16, n_kv_heads=2)
    graph = CircuitGraph.from_model(spec)
    assert graph.layout is GraphLayout.of(ModelSpec("other", "gpt2", 2, 4, 32))
    loaded = CircuitGraph.from_json(graph.to_json())
    assert loaded.layout is graph.layout  # rebuilt from the spec and checked, not stored


def test_a_graph_that_is_not_its_models_full_graph_has_no_layout():
    spec = ModelSpec("toy", "gpt2", 1, 2, 8)
    full = CircuitGraph.from_model(spec)
    partial = CircuitGraph(full.node_names, [("input", "logits")], model=spec)
    with pytest.raises(InterpError, match="not the full graph of its model"):
        _ = partial.layout
    with pytest.raises(InterpError, match="no model spec"):
        _ = CircuitGraph(["a", "b"], [("a", "b")]).layout
