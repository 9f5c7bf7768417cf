"""The export-format registry: inference by suffix, clear refusals, atomic writes."""

from __future__ import annotations

import pytest
import torch

import interp
from interp import FORMATS, CircuitGraph, InterpError, ModelSpec, register_format


@pytest.fixture
def graph() -> CircuitGraph:
    spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
    g = CircuitGraph.from_model(spec)
    g = g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges))).top(6, prune=False)
    assert g.n_edges_in_graph == 6
    return g


def test_every_suffix_picks_its_format(graph, tmp_path):
    for fmt in FORMATS.values():
        for suffix in fmt.suffixes:
            path = graph.export(tmp_path / f"g{suffix}")
            assert path.stat().st_size > 0
    assert CircuitGraph.from_json(tmp_path / "g.json") == graph
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")


def test_refusals_name_the_cause(graph, tmp_path):
    with pytest.raises(InterpError, match="suffix of 'png', not 'svg'"):
        graph.export(tmp_path / "o.png", "svg")  # used to write a PNG
    with pytest.raises(InterpError, match="Cannot tell the format"):
        graph.export(tmp_path / "o.xyz")
    with pytest.raises(InterpError, match="Did you mean 'json'"):
        graph.export(tmp_path / "o.json", "jsn")
    with pytest.raises(InterpError, match="is a directory"):
        graph.export(tmp_path, "json")
    assert list(tmp_path.iterdir()) == []
    # a format without suffixes of its own takes any file name
    assert graph.export(tmp_path / "e.json", "eap-ig").exists()


def test_a_failed_write_leaves_nothing_behind(graph, tmp_path, monkeypatch):
    target = tmp_path / "g.json"
    target.write_text("the old file")

    def half_then_fail(g, path):
        path.write_text('{"format": ')
        raise KeyboardInterrupt

    monkeypatch.setitem(
        FORMATS, "json", interp.ExportFormat("json", (".json",), half_then_fail, "broken")
    )
    with pytest.raises(KeyboardInterrupt):
        graph.export(target)
    assert target.read_text() == "the old file"
    assert [p.name for p in tmp_path.iterdir()] == ["g.json"]


def test_a_registered_format_is_one_function(graph, tmp_path, monkeypatch):
    monkeypatch.setattr(interp._formats, "FORMATS", dict(FORMATS))  # keep the registry clean

    @register_format("names", suffixes=(".names",), description="edge names, one a line")
    def write(g, path):
        path.write_text("\n".join(e.name for e in g.edges.in_graph()))

    text = graph.export(tmp_path / "c.names").read_text().splitlines()
    assert len(text) == graph.n_edges_in_graph and "->" in text[0]
    with pytest.raises(InterpError, match="already registered"):
        register_format("names", description="again")(write)
    with pytest.raises(InterpError, match="already belong to 'json'"):
        register_format("json2", suffixes=(".json",), description="clash")(write)


def test_gexf_keeps_nodes_edges_scores_and_masks(graph, tmp_path):
    import networkx as nx

    back = nx.read_gexf(graph.export(tmp_path / "g.gexf"))
    assert sorted(back.nodes) == sorted(graph.node_names)
    edges = {(s, d, k): data for s, d, k, data in back.edges(keys=True, data=True)}
    assert len(edges) == len(graph.edges)
    for view in (graph.edges[name] for name in graph.edges):
        data = edges[(view.src, view.dst, view.port)]
        assert data["score"] == pytest.approx(view.score) and data["in_graph"] == view.in_graph
