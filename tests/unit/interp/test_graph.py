"""CircuitGraph: structure, selection invariants and every format's round trip."""

from __future__ import annotations

import json
import math
import warnings

import networkx as nx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp import CircuitGraph, GraphFormatError, InterpError, ModelSpec, UnknownSiteError

SPEC = ModelSpec(name="toy", architecture="gpt2", n_layers=3, n_heads=2, d_model=8)


def scored(spec: ModelSpec = SPEC, seed: int = 0) -> CircuitGraph:
    g = CircuitGraph.from_model(spec, method="test", metric="logit_diff", task="ioi")
    gen = torch.Generator().manual_seed(seed)
    return g.with_scores(
        edge_scores=torch.randn(len(g.edges), generator=gen),
        node_scores=torch.randn(len(g.nodes), generator=gen),
    )


# -- structure -------------------------------------------------------------------------------------


def expected_edge_count(n_layers: int, n_heads: int, parallel: bool) -> int:
    """Count by hand: every reader sees every writer upstream of it."""
    total, upstream = 0, 1  # input
    for _ in range(n_layers):
        total += 3 * n_heads * upstream
        total += upstream + (0 if parallel else n_heads)
        upstream += n_heads + 1
    return total + upstream


@pytest.mark.parametrize(
    ("layers", "heads", "parallel"), [(1, 1, False), (3, 2, False), (12, 12, False), (4, 3, True)]
)
def test_full_graph_size(layers: int, heads: int, parallel: bool) -> None:
    spec = ModelSpec(
        name="m",
        architecture="x",
        n_layers=layers,
        n_heads=heads,
        d_model=heads * 4,
        parallel_attn_mlp=parallel,
    )
    g = CircuitGraph.from_model(spec)
    assert len(g.nodes) == 1 + layers * (heads + 1) + 1
    assert len(g.edges) == expected_edge_count(layers, heads, parallel)
    assert nx.is_directed_acyclic_graph(g.to_networkx())


def test_gpt2_small_graph_has_eap_igs_edge_count() -> None:
    """EAP-IG's GPT-2 small graph (and MIB's) has 32,491 edges."""
    spec = ModelSpec(name="gpt2", architecture="gpt2", n_layers=12, n_heads=12, d_model=768)
    assert len(CircuitGraph.from_model(spec).edges) == 32_491


def test_views_and_errors() -> None:
    g = scored()
    edge = g.edges["a0.h1->a2.h0<k>"]
    assert (edge.src, edge.dst, edge.port) == ("a0.h1", "a2.h0", "k")
    assert g.nodes["m1"].site is not None and g.nodes["m1"].site.kind == "mlp"
    with pytest.raises(UnknownSiteError, match="Did you mean"):
        g.nodes["a0.h7"]
    with pytest.raises(GraphFormatError, match="unique"):
        CircuitGraph(["a", "a"])
    with pytest.raises(GraphFormatError, match="not among the nodes"):
        CircuitGraph(["a", "b"], [("a", "c")])
    with pytest.raises(GraphFormatError, match="shape"):
        g.with_scores(edge_scores=torch.zeros(3))


# -- selection -------------------------------------------------------------------------------------


def on_some_path(g: CircuitGraph) -> bool:
    """Every in-graph node lies on an in-graph path from input to logits (networkx check)."""
    sub = g.to_networkx(in_graph_only=True)
    nodes = [n for n in sub.nodes]
    if not nodes:
        return True
    return all(nx.has_path(sub, "input", n) and nx.has_path(sub, n, "logits") for n in nodes)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), k=st.integers(0, 60), level=st.sampled_from(["edge", "node"]))
def test_top_then_prune_invariants(seed: int, k: int, level: str) -> None:
    g = scored(seed=seed)
    k = min(k, len(g.nodes) - 2 if level == "node" else len(g.edges))  # input, logits unranked
    top = g.top(k, level=level)
    assert on_some_path(top)
    src_in = top.node_in_graph[top.edge_src]
    dst_in = top.node_in_graph[top.edge_dst]
    assert bool((~top.edge_in_graph | (src_in & dst_in)).all())
    assert top.prune() == top  # pruning is idempotent
    unpruned = g.top(k, level=level, prune=False)
    if level == "edge":
        assert unpruned.n_edges_in_graph == k
        chosen = unpruned.edge_scores[unpruned.edge_in_graph].abs()
        rest = unpruned.edge_scores[~unpruned.edge_in_graph].abs()
        assert len(rest) == 0 or len(chosen) == 0 or chosen.min() >= rest.max()
    assert top.n_edges_in_graph <= unpruned.n_edges_in_graph
    assert g.n_edges_in_graph == 0  # the original is untouched


def test_threshold_equals_top_k_for_distinct_scores() -> None:
    g = scored(seed=3)
    cut = float(g.edge_scores.abs().sort(descending=True).values[9])
    assert g.threshold(cut) == g.top(10)
    assert g.threshold(cut, prune=False).n_edges_in_graph == 10


def test_selection_errors() -> None:
    g = scored()
    with pytest.raises(Exception, match="only"):
        g.top(10**6)
    with pytest.raises(Exception, match="level"):
        g.top(3, level="neuron")
    with pytest.raises(Exception, match="number"):
        g.threshold(float("nan"))


def test_prune_by_hand() -> None:
    g = CircuitGraph(
        ["input", "x", "y", "logits"],
        [("input", "x"), ("x", "logits"), ("input", "y"), ("y", "x")],
        edge_in_graph=[True, True, True, False],
        node_in_graph=[True] * 4,
    )
    p = g.prune()  # y is reached from input but leads nowhere inside the circuit
    assert p.node_in_graph.tolist() == [True, True, False, True]
    assert p.edge_in_graph.tolist() == [True, True, False, False]


def greedy_by_brute_force(g: CircuitGraph, k: int, absolute: bool) -> set[int]:
    """EAP-IG's apply_greedy written the slow way: k times, scan every edge into the circuit."""
    scores = g.edge_scores.double()
    scores = scores.abs() if absolute else scores
    has_out = set(g.edge_src.tolist())
    circuit = {n for n in range(len(g.node_names)) if n not in has_out}  # the sinks
    chosen: set[int] = set()
    for _ in range(k):
        best = None
        for e in range(len(g.edge_src)):
            if e in chosen or int(g.edge_dst[e]) not in circuit or math.isnan(scores[e]):
                continue
            if best is None or scores[e] > scores[best]:  # ties: the lower index, seen first
                best = e
        if best is None:
            break
        chosen.add(best)
        circuit.add(int(g.edge_src[best]))
    return chosen


def reaches_logits(g: CircuitGraph) -> bool:
    """Every in-graph edge leads to logits through in-graph edges (networkx check)."""
    sub = g.to_networkx(in_graph_only=True)
    ends = {v for _, v in sub.edges()}
    return not ends or ("logits" in sub and all(nx.has_path(sub, v, "logits") for v in ends))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), k=st.integers(0, 60), absolute=st.booleans())
def test_greedy_equals_brute_force_and_reaches_the_logits(
    seed: int, k: int, absolute: bool
) -> None:
    g = scored(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    unscored = torch.rand(len(g.edges), generator=gen) < 0.1
    g = g.with_scores(edge_scores=torch.where(unscored, math.nan, g.edge_scores))
    k = min(k, g.n_ranked())
    greedy = g.top(k, strategy="greedy", absolute=absolute, prune=False)
    assert set(greedy.edge_in_graph.nonzero().flatten().tolist()) == greedy_by_brute_force(
        g, k, absolute
    )
    assert reaches_logits(greedy)
    assert (
        greedy.n_edges_in_graph <= k and not greedy.edge_scores[greedy.edge_in_graph].isnan().any()
    )
    pruned = g.top(k, strategy="greedy", absolute=absolute)
    assert pruned == greedy.prune() and on_some_path(pruned)


def hand_graph(**changes: float) -> CircuitGraph:
    scores = {"input->a": 3.0, "input->b": 10.0, "a->b": 0.1, "a->logits": 1.0}
    scores.update({"b->logits": 0.5, "input->logits": 2.0, **changes})
    edges = [tuple(name.split("->")) for name in scores]
    return CircuitGraph(["input", "a", "b", "logits"], edges, edge_scores=list(scores.values()))


def chosen_names(g: CircuitGraph) -> set[str]:
    return {e.name for e in g.edges.in_graph()}


def test_greedy_by_hand() -> None:
    g = hand_graph()
    # logits' in-edges: input->logits 2 first, then a->logits 1, which brings a in; its
    # in-edge input->a 3 beats b->logits 0.5. Top-3 instead takes input->b (10), which leads
    # nowhere: b is not in the circuit.
    greedy = g.top(3, strategy="greedy", prune=False)
    assert chosen_names(greedy) == {"input->logits", "a->logits", "input->a"}
    top = g.top(3, prune=False)
    assert chosen_names(top) == {"input->b", "input->a", "input->logits"}
    assert not reaches_logits(top) and reaches_logits(greedy)
    assert chosen_names(g.top(3)) == {"input->logits"}  # top-3 pruned keeps one edge
    assert g.top(3, strategy="greedy") == greedy  # greedy's edges all reach the input here
    # signed: a strongly negative edge into logits comes last instead of first
    negative = hand_graph(**{"b->logits": -5.0})
    assert chosen_names(negative.top(2, strategy="greedy", prune=False)) == {
        "b->logits",
        "input->b",
    }
    assert chosen_names(negative.top(2, strategy="greedy", absolute=False, prune=False)) == {
        "input->logits",
        "a->logits",
    }


def test_greedy_keeps_no_dangling_edge_where_top_k_does() -> None:
    # strong edges into the first layers, weak ones onward: top-k keeps edges that reach
    # nothing, greedy only edges into the circuit
    g = scored(seed=1)
    layer = torch.tensor([int(g.node_names[d][1]) if d < len(g.node_names) - 1 else 9
                          for d in g.edge_dst.tolist()])  # fmt: skip
    g = g.with_scores(edge_scores=g.edge_scores.abs() + 10.0 * (layer == 0))
    for k in (5, 20, 40):
        top, greedy = g.top(k, prune=False), g.top(k, strategy="greedy", prune=False)
        assert not reaches_logits(top)
        assert reaches_logits(greedy)
        assert g.top(k).n_edges_in_graph < g.top(k, strategy="greedy").n_edges_in_graph


def test_greedy_errors() -> None:
    g = scored()
    with pytest.raises(InterpError, match="strategy must be one of"):
        g.top(3, strategy="greed")
    with pytest.raises(InterpError, match="level='edge'"):
        g.top(3, level="node", strategy="greedy")
    with pytest.raises(InterpError, match="only"):
        g.top(10**6, strategy="greedy")


# -- formats ---------------------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def graphs(draw: st.DrawFn) -> CircuitGraph:
    nodes = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    edges = draw(
        st.lists(
            st.tuples(
                st.sampled_from(nodes), st.sampled_from(nodes), st.sampled_from(["", "q", "k", "v"])
            ),
            max_size=12,
            unique=True,
        )
    )
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    spec = draw(st.none() | st.just(SPEC))
    return CircuitGraph(
        nodes,
        edges,
        node_scores=draw(st.lists(floats, min_size=len(nodes), max_size=len(nodes))),
        edge_scores=draw(st.lists(floats, min_size=len(edges), max_size=len(edges))),
        node_in_graph=draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes))),
        edge_in_graph=draw(st.lists(st.booleans(), min_size=len(edges), max_size=len(edges))),
        model=spec,
        method=draw(st.none() | st.text(max_size=5)),
        task=draw(st.none() | names),
        meta=draw(st.dictionaries(st.text(max_size=4), json_values, max_size=3)),
        score_dtype=dtype,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_json_round_trip_is_lossless(g: CircuitGraph) -> None:
    text = g.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert CircuitGraph.from_json(text) == g
    assert CircuitGraph.from_dict(g.to_dict()) == g


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_networkx_round_trip(g: CircuitGraph) -> None:
    assert CircuitGraph.from_networkx(g.to_networkx()) == g


def test_json_file_and_graphml_round_trip(tmp_path) -> None:
    g = scored().top(12)
    g.to_json(tmp_path / "g.json")
    assert CircuitGraph.from_json(tmp_path / "g.json") == g
    assert CircuitGraph.from_json(str(tmp_path / "g.json")) == g
    g.to_graphml(tmp_path / "g.graphml")
    assert CircuitGraph.from_networkx(nx.read_graphml(tmp_path / "g.graphml")) == g


def test_eap_ig_round_trip(tmp_path) -> None:
    g = scored().top(7)
    data = g.to_eap_ig(tmp_path / "eap.json")
    assert set(data) == {"cfg", "nodes", "edges"}
    assert data["cfg"] == {"n_layers": 3, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8}
    assert data["edges"]["input->a0.h0<q>"] == {
        "score": float(g.edges["input->a0.h0<q>"].score),
        "in_graph": g.edges["input->a0.h0<q>"].in_graph,
    }
    back = CircuitGraph.from_eap_ig(tmp_path / "eap.json")
    assert back.edge_names() == g.edge_names()
    assert torch.equal(back.edge_scores, g.edge_scores)
    assert torch.equal(back.node_scores, g.node_scores)
    assert torch.equal(back.edge_in_graph, g.edge_in_graph)
    assert torch.equal(back.node_in_graph, g.node_in_graph)


def test_eap_ig_reads_bare_nan_and_rejects_unknown_edges(tmp_path) -> None:
    g = CircuitGraph.from_model(SPEC)
    text = json.dumps(g.to_eap_ig())  # unscored edges: Python writes a bare NaN, as EAP-IG does
    assert "NaN" in text
    assert math.isnan(CircuitGraph.from_eap_ig(text).edges["input->m0"].score)
    data = g.to_eap_ig()
    data["edges"]["a9.h0->logits"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(GraphFormatError, match="a9.h0->logits"):
        CircuitGraph.from_eap_ig(data)


def test_csv_dot_dataframes(tmp_path) -> None:
    g = scored().top(5)
    g.to_csv(tmp_path / "g.csv")
    import pandas as pd

    table = pd.read_csv(tmp_path / "g.csv")
    assert (table["element"] == "node").sum() == len(g.nodes)
    edges = table[table["element"] == "edge"].reset_index(drop=True)
    assert edges["name"].tolist() == g.edge_names()
    assert torch.equal(torch.tensor(edges["score"].to_numpy(), dtype=torch.float32), g.edge_scores)
    dot = g.to_dot()
    for edge in g.edges.in_graph():
        assert f'"{edge.src}" -> "{edge.dst}"' in dot
    assert dot.count("->") == g.n_edges_in_graph
    assert g.edges_df()["in_graph"].sum() == g.n_edges_in_graph
    assert list(g.nodes_df()["name"]) == list(g.node_names)


def test_pictures_and_offline_html(tmp_path) -> None:
    g = scored().top(6)
    for suffix, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        g.draw(tmp_path / f"g.{suffix}")
        assert (tmp_path / f"g.{suffix}").read_bytes().startswith(magic)
    page = g.to_html(tmp_path / "g.html")
    assert "<svg" in page and "a0.h" in page
    lowered = page.lower()
    assert "<script src" not in lowered and "cdn" not in lowered and "<link" not in lowered


# -- malformed input -------------------------------------------------------------------------------


def test_malformed_files_name_the_problem(tmp_path) -> None:
    g = scored().top(3)
    text = g.to_json()
    (tmp_path / "cut.json").write_text(text[: len(text) // 2])
    with pytest.raises(GraphFormatError, match="truncated"):
        CircuitGraph.from_json(tmp_path / "cut.json")
    with pytest.raises(GraphFormatError, match="No graph file"):
        CircuitGraph.from_json(tmp_path / "missing.json")

    def broken(mutate) -> dict:
        data = json.loads(text)
        mutate(data)
        return data

    cases = [
        (lambda d: d.pop("nodes"), "missing keys \\['nodes'\\]"),
        (lambda d: d.update(format_version=99), "format_version is 99"),
        (lambda d: d.update(format="something"), "Not a circuit-graph"),
        (lambda d: d["edges"]["src"].__setitem__(0, 10**6), r"edges.src\[0\]: index 1000000"),
        (lambda d: d["edges"]["scores"].__setitem__(2, "high"), r"edges.scores\[2\]"),
        (lambda d: d["nodes"]["in_graph"].pop(), "nodes.in_graph: expected 11 entries"),
        (lambda d: d.update(score_dtype="float16"), "score_dtype"),
        (lambda d: d["model"].pop("n_layers"), "n_layers"),
        (lambda d: d["edges"].update(dst="x"), "edges.dst: expected list"),
    ]
    for mutate, message in cases:
        with pytest.raises(GraphFormatError, match=message):
            CircuitGraph.from_dict(broken(mutate))
    eap = json.dumps(g.to_eap_ig())
    with pytest.raises(GraphFormatError, match="from_eap_ig"):
        CircuitGraph.from_json(eap)


def test_meta_must_be_json(tmp_path) -> None:
    g = CircuitGraph(["a"], meta={"bad": object()})
    with pytest.raises(GraphFormatError, match="meta"):
        g.to_json()


def test_drawing_layers_non_transformer_graphs_by_longest_path() -> None:
    from interp._graph_draw import _longest_path_layers

    g = CircuitGraph(
        ["a", "b", "c", "x", "y"],
        [("a", "b"), ("b", "c"), ("a", "c"), ("c", "x"), ("x", "y"), ("y", "x")],
    )
    layers = _longest_path_layers(g, list(range(5)), list(range(6)))
    # c is two steps from a (not one, as the shortcut a->c would say); x and y form a cycle
    assert layers == {0: 0.0, 1: 1.0, 2: 2.0, 3: 3.0, 4: 3.0}


def test_a_circuit_emptied_by_pruning_says_why() -> None:
    spec = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=2, d_model=8)
    graph = CircuitGraph.from_model(spec)
    names = graph.edge_names()
    scores = torch.zeros(len(names))
    scores[names.index("input->a0.h0<q>")] = 1.0  # a head that reaches no logits edge
    graph = graph.with_scores(edge_scores=scores)
    with pytest.warns(UserWarning, match="empty after pruning"):
        assert graph.top(1).n_edges_in_graph == 0
    assert graph.top(1, prune=False).n_edges_in_graph == 1
    scores[names.index("a0.h0->logits")] = 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert graph.with_scores(edge_scores=scores).top(2).n_edges_in_graph == 2
