"""Bad circuit-graph files and sources: each gives a GraphFormatError that names the problem (or a
correct graph), never another exception, and never an unbounded allocation."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp import CircuitGraph, GraphFormatError, ModelSpec

SPEC = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=2, d_model=8)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def graph() -> CircuitGraph:
    g = CircuitGraph.from_model(SPEC, method="unit-test")
    return g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges))).top(4)


# -- sources that are not graph files ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d, "is a directory"),
        (
            lambda d: _write(d / "g.json", b"\xff\xfe{}"),
            "not UTF-8 text \\(byte 0xff at offset 0\\)",
        ),
        (lambda d: _write(d / "g.png", b"\x89PNG\r\n\x1a\n"), "not UTF-8.*PNG"),
        (lambda d: _write(d / "g.json", b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        (lambda d: _write(d / "g.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000), "too deeply"),
        (lambda d: _write(d / "g.json", b""), "not valid JSON"),
        (lambda d: _write(d / "g.json", b"[1, 2]"), "JSON object; got list"),
        (lambda d: d / "missing.json", "No graph file"),
        (lambda d: "x" * 5000, "No graph file"),  # longer than any file name
        (lambda d: "a\0b.json", "No graph file"),
        (lambda d: 5, "file path, JSON text or a dict; got int"),
    ],
)
def test_a_bad_source_is_named(tmp_path, make, message: str) -> None:
    with pytest.raises(GraphFormatError, match=message):
        CircuitGraph.from_json(make(tmp_path))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_string_that_names_a_file_is_a_path(tmp_path, monkeypatch) -> None:
    """'{copy}.json' starts with a brace but is a file name: it was parsed as JSON text."""
    g = graph()
    monkeypatch.chdir(tmp_path)
    g.to_json("{copy}.json")
    assert CircuitGraph.from_json("{copy}.json") == g
    assert CircuitGraph.from_json(str(tmp_path / "{copy}.json")) == g
    with pytest.raises(GraphFormatError, match="No graph file at '{other}.json'"):
        CircuitGraph.from_json("{other}.json")  # ends in .json: a path, even when missing
    assert CircuitGraph.from_json(g.to_json()) == g  # JSON text still reads as text
    assert CircuitGraph.from_json(g.to_json().encode()) == g


def test_an_eap_ig_cfg_bigger_than_its_lists_is_refused_before_allocating() -> None:
    """A 70-byte file claiming a million layers used to build the full graph (killed at 19.7 GB)."""
    text = '{"cfg": {"n_layers": 1000000, "n_heads": 4}, "nodes": {}, "edges": {}}'
    start = time.perf_counter()
    with pytest.raises(GraphFormatError, match="1000000 layers.*lists 0 nodes and 0 edges"):
        CircuitGraph.from_eap_ig(text)
    assert time.perf_counter() - start < 1
    full = graph().to_eap_ig()
    del full["edges"][next(iter(full["edges"]))]
    with pytest.raises(
        GraphFormatError, match="8 nodes and 46 edges, but the file lists 8 nodes and 45 edges"
    ):
        CircuitGraph.from_eap_ig(full)


@pytest.mark.parametrize(
    "cfg",
    [
        {"n_layers": True, "n_heads": 2},
        {"n_layers": 2, "n_heads": "2"},
        {"n_layers": -1, "n_heads": 2},
        {"n_layers": 2.5, "n_heads": 2},
        {"n_heads": 2},
    ],
)
def test_an_eap_ig_cfg_of_the_wrong_type_is_named(cfg) -> None:
    with pytest.raises(GraphFormatError, match="cfg needs n_layers and n_heads"):
        CircuitGraph.from_eap_ig({"cfg": cfg, "nodes": {}, "edges": {}})


@pytest.mark.parametrize(
    ("layers", "heads", "parallel"), [(1, 1, False), (3, 2, True), (4, 3, False)]
)
def test_eap_ig_sizes_count_the_graph(layers: int, heads: int, parallel: bool) -> None:
    from interp._graph_io import eap_ig_sizes

    spec = ModelSpec(
        name="t", architecture="x", n_layers=layers, n_heads=heads, d_model=4 * heads,
        parallel_attn_mlp=parallel,
    )  # fmt: skip
    g = CircuitGraph.from_model(spec)
    assert eap_ig_sizes(layers, heads, parallel) == (len(g.node_names), len(g.edge_src))


# -- property: any mutation of a good file is read correctly or refused by name -----------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data[:3]):
            yield from _paths(value, (*prefix, i))


@FAST
@given(where=st.data(), value=JSON_VALUES, delete=st.booleans())
def test_any_mutated_graph_dict_is_read_or_refused_by_name(where, value, delete: bool) -> None:
    data = graph().to_dict()
    path = where.draw(st.sampled_from(list(_paths(data))[1:]))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        g = CircuitGraph.from_dict(data)
    except GraphFormatError as err:
        assert str(err)  # a message that says something
        return
    assert CircuitGraph.from_json(g.to_json()) == g  # what is read is a real graph


@FAST
@given(cut=st.integers(min_value=0), junk=st.binary(max_size=20))
def test_any_truncated_or_garbled_file_is_refused_by_name(tmp_path_factory, cut: int, junk) -> None:
    text = graph().to_json().encode()
    path = tmp_path_factory.mktemp("g") / "g.json"
    path.write_bytes(text[: cut % len(text)] + junk)
    with pytest.raises(GraphFormatError):
        CircuitGraph.from_json(path)


def test_infinite_scores_round_trip() -> None:
    g = graph()
    scores = g.edge_scores.clone()
    scores[:3] = torch.tensor([math.inf, -math.inf, math.nan])
    g = g.with_scores(edge_scores=scores)
    back = CircuitGraph.from_json(g.to_json())
    assert back == g and json.loads(g.to_json())["edges"]["scores"][:3] == [
        "Infinity",
        "-Infinity",
        "NaN",
    ]
