"""The interactive viewer: a standalone page that embeds every edge and survives any score, and
in a real browser (the system chromium, driven by playwright) a slider whose pruned edge count
is what ``graph.top(k)`` computes, tooltips, a node's edge list, search, pan and zoom."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from interp import CircuitGraph, InterpError, ModelSpec
from interp._viewer import notebook_html, viewer_html

SPEC = ModelSpec(name="toy", architecture="gpt2", n_layers=3, n_heads=2, d_model=8)
NO_BROWSER = "the viewer's browser test needs {what}; {how}"


def scored(spec: ModelSpec = SPEC, seed: int = 0, **fields) -> CircuitGraph:
    g = CircuitGraph.from_model(spec, method="eap-ig", metric="logit_diff", task="ioi", **fields)
    gen = torch.Generator().manual_seed(seed)
    return g.with_scores(
        edge_scores=torch.randn(len(g.edges), generator=gen),
        node_scores=torch.randn(len(g.nodes), generator=gen),
    )


def with_odd_scores(g: CircuitGraph) -> CircuitGraph:
    """Infinite and unscored (NaN) edges and nodes among the ordinary ones."""
    edges, nodes = g.edge_scores.clone(), g.node_scores.clone()
    edges[[1, 4]] = torch.tensor([math.inf, -math.inf])
    edges[[2, 7, 9]] = math.nan
    nodes[[1, 2]] = torch.tensor([math.inf, math.nan])
    return g.with_scores(edge_scores=edges, node_scores=nodes)


def embedded(page: str) -> dict:
    """The page's graph data, with its base64 arrays decoded."""
    text = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)
    data = json.loads(text.group(1), parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    e = data["edges"]
    index = "<u2" if e["index_bytes"] == 2 else "<u4"
    score = "<f4" if e["score_bytes"] == 4 else "<f8"
    for key, dtype in (("src", index), ("dst", index), ("port", "u1"), ("scores", score)):
        e[key] = np.frombuffer(base64.b64decode(e[key]), dtype=dtype)
    data["nodes"]["scores"] = np.frombuffer(base64.b64decode(data["nodes"]["scores"]), "<f8")
    return data


def rank_order(g: CircuitGraph) -> list[int]:
    """Edge indices by |score|, highest first, ties by index, unscored last (as top() ranks)."""
    s = g.edge_scores.double().tolist()
    return sorted(
        range(len(s)), key=lambda i: (math.isnan(s[i]), -abs(s[i]) if s[i] == s[i] else 0, i)
    )


# -- the page, without a browser ---------------------------------------------------------------


def test_page_is_standalone() -> None:
    page = scored().top(8).to_html()
    lowered = page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", lowered)
    assert "http://" not in lowered and "https://" not in lowered
    for fetcher in ("<script src", "<link", "fetch(", "xmlhttprequest", "import(", "@import"):
        assert fetcher not in lowered
    assert page.count("<script") == 2  # the data and the viewer, both inline


def test_page_embeds_every_edge_in_top_k_order() -> None:
    g = scored(meta={"faithfulness": 0.8125, "seed": 3})
    data = embedded(g.to_html())
    e = data["edges"]
    order = rank_order(g)
    assert e["embedded"] == e["ranked"] == e["scored"] == e["total"] == len(g.edges)
    assert e["src"].tolist() == g.edge_src[order].tolist()
    assert e["dst"].tolist() == g.edge_dst[order].tolist()
    assert (e["port"] & 127).tolist() == g.edge_port[order].tolist()
    assert torch.equal(torch.from_numpy(e["scores"].copy()), g.edge_scores[order])
    assert data["nodes"]["names"] == list(g.node_names)
    header = dict(data["header"])
    assert header["method"] == "eap-ig" and header["faithfulness"] == "0.8125"
    assert header["model"].startswith("toy") and data["meta"]["seed"] == "3"
    # no circuit of its own: it opens on the top 400 (here: all), pruned
    assert data["initial"] == {"mode": "top", "k": len(g.edges)}


def test_circuit_bit_and_rows() -> None:
    g = scored().top(10, prune=False)
    data = embedded(viewer_html(g))
    order = rank_order(g)
    e = data["edges"]
    assert ((e["port"] >> 7) == 1).tolist() == g.edge_in_graph[order].tolist()
    assert data["initial"]["mode"] == "circuit"
    y = dict(zip(data["nodes"]["names"], data["nodes"]["y"], strict=True))
    assert y["input"] < y["a0.h0"] < y["m0"] < y["a1.h1"] < y["m2"] < y["logits"]  # bottom to top
    assert y["a1.h0"] == y["a1.h1"]  # a layer's heads side by side


def test_odd_scores_never_crash(tmp_path) -> None:
    g = with_odd_scores(scored()).top(12)
    page = g.to_html(tmp_path / "g.html")
    data = embedded(page)
    scores = data["edges"]["scores"]
    assert scores[0] == math.inf and scores[1] == -math.inf  # |inf| ranks first, as in top()
    assert np.isnan(scores[-3:]).all() and data["edges"]["scored"] == len(g.edges) - 3
    assert math.isinf(data["nodes"]["scores"][1]) and math.isnan(data["nodes"]["scores"][2])
    # the pictures used to fail with "alpha (nan)": infinite scores made every ratio NaN
    for fmt in ("png", "svg"):
        g.export(tmp_path / f"g.{fmt}")
        g.draw(tmp_path / f"all.{fmt}", in_graph_only=False)
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    everything_odd = g.with_scores(edge_scores=torch.full((len(g.edges),), math.inf))
    everything_odd.export(tmp_path / "inf.png")
    embedded(everything_odd.to_html())


def test_unscored_and_edgeless_graphs() -> None:
    bare = CircuitGraph.from_model(SPEC)  # every score NaN
    data = embedded(bare.to_html())
    assert data["initial"] == {"mode": "top", "k": 0} and "No edge has a score" in data["notes"][0]
    lone = embedded(CircuitGraph(["a", "b"], meta={"bad": float("nan")}).to_html())
    assert lone["edges"]["total"] == 0 and lone["meta"]["bad"] == "nan"


def test_notebook_view_caps_edges_and_says_so() -> None:
    g = scored()
    order = rank_order(g)
    mask = torch.zeros(len(g.edges), dtype=torch.bool)
    mask[[order[0], order[20], order[30]]] = True  # a circuit reaching past the strongest 5
    g = g.copy(edge_in_graph=mask)
    view = g._repr_html_()
    assert view.startswith("<iframe srcdoc=") and "&lt;!DOCTYPE html&gt;" in view
    page = re.search(r'srcdoc="(.*?)"', notebook_html(g, max_embedded=5), re.S).group(1)
    data = embedded(html.unescape(page))
    e = data["edges"]
    assert e["ranked"] == 5 and e["tail_positions"] == [20, 30] and e["embedded"] == 7
    assert e["src"][5:].tolist() == g.edge_src[[order[20], order[30]]].tolist()
    assert "5 strongest of the graph's 100 edges and the circuit's 3" in data["notes"][0]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(InterpError, match="initial_k must be an int >= 0; got -1"):
        viewer_html(scored(), initial_k=-1)


def test_drawing_says_when_edges_were_cut() -> None:
    g = scored()
    fig = g.draw(in_graph_only=False, max_edges=5, path=None)
    assert f"the strongest 5 of {len(g.edges)} edges" in fig.axes[0].get_title()


def test_the_pages_pruning_rule_is_tops() -> None:
    """The rule the page's JavaScript applies, in Python: of the first k edges by rank, keep
    those whose source is reached from a source and whose end reaches a sink."""
    g = with_odd_scores(scored(seed=4))
    order = rank_order(g)[: g.n_ranked()]
    src, dst = g.edge_src.tolist(), g.edge_dst.tolist()
    has_in, has_out = g._has_in_out()
    for k in range(0, len(order) + 1, 7):
        chosen = order[:k]
        fwd = set((~has_in).nonzero().flatten().tolist())
        bwd = set((~has_out).nonzero().flatten().tolist())
        for reached, a, b in ((fwd, src, dst), (bwd, dst, src)):
            grew = True
            while grew:
                grew = False
                for e in chosen:
                    if a[e] in reached and b[e] not in reached:
                        reached.add(b[e])
                        grew = True
        kept = {e for e in chosen if src[e] in fwd and dst[e] in bwd}
        assert kept == set(g.top(k).edge_in_graph.nonzero().flatten().tolist()), k


# -- in a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    reasons = []
    if chromium is None:
        reasons.append(NO_BROWSER.format(what="chromium", how="apt-get install chromium"))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reasons.append(NO_BROWSER.format(what="playwright", how="pip install -e '.[dev]'"))
    if reasons:
        print("\n".join(reasons))
        pytest.skip("; ".join(reasons))
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url: str, errors: list[str]):
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#count[data-edges]")
    return page


def shown(page) -> tuple[int, set[str]]:
    """The count the page states and the names of the edges it draws."""
    count = int(page.get_attribute("#count", "data-edges"))
    names = page.eval_on_selector_all("#edges path.edge", "ps => ps.map(p => p.dataset.name)")
    return count, set(names)


def in_graph(g: CircuitGraph) -> set[str]:
    return {e.name for e in g.edges.in_graph()}


def test_viewer_in_chromium(browser, tiny_gpt2, tmp_path) -> None:
    g = with_odd_scores(
        scored(tiny_gpt2.spec, seed=1, meta={"faithfulness": 0.75})
    )  # no circuit of its own: it opens on the top-k view
    path = g.export(tmp_path / "graph.html")
    errors: list[str] = []
    page = open_page(browser, path.as_uri(), errors)
    assert "eap-ig on tiny-gpt2" in page.text_content("#title")
    assert "faithfulness: 0.75" in page.text_content("#facts")
    n = g.n_ranked()
    assert page.get_attribute("#count", "data-k") == str(n)
    count, names = shown(page)
    assert count == len(names) == g.top(n).n_edges_in_graph > 0 and names == in_graph(g.top(n))

    # the slider, by keyboard: every k from 0 up, each count as top(k) computes it
    slider = page.locator("#k")
    slider.focus()
    page.keyboard.press("Home")
    counts = []
    for k in range(0, 41):
        if k:
            page.keyboard.press("ArrowRight")
        assert page.get_attribute("#count", "data-k") == str(k)
        count, names = shown(page)
        expected = g.top(k)
        assert count == expected.n_edges_in_graph and names == in_graph(expected), k
        counts.append(count)
    assert counts[0] == 0 and len(set(counts)) > 3  # the view grew as the slider moved

    # ... and by mouse: drag the thumb to 70 %; the page says which k it chose
    box = slider.bounding_box()
    page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + box["height"] / 2)
    k = int(page.get_attribute("#count", "data-k"))
    assert 0.5 * n < k < 0.9 * n
    count, names = shown(page)
    assert count == g.top(k).n_edges_in_graph and names == in_graph(g.top(k))
    expected = g.top(k)

    # hover a node: its tooltip names it, its kind and its score
    node = max(expected.nodes.in_graph(), key=lambda v: v.name.startswith("a"))
    page.hover(f'.node[data-name="{node.name}"]')
    tip = page.inner_text("#tip")
    assert page.is_visible("#tip") and tip.startswith(node.name)
    assert "attention head" in tip or "MLP" in tip or "input" in tip
    shown_score = re.search(r"score (\S+)", tip).group(1)
    assert shown_score in ("+inf", "unscored") or math.isclose(
        float(shown_score), node.score, rel_tol=1e-3
    )

    # hover the middle of an edge: score, rank and port as the graph has them
    point = page.evaluate(
        """() => { const p = document.querySelector('#edges path.edge:last-child');
        const q = p.getPointAtLength(p.getTotalLength() / 2).matrixTransform(p.getScreenCTM());
        return [q.x, q.y]; }"""
    )
    page.mouse.move(*point)
    tip = page.inner_text("#tip")
    name = re.match(r"(\S+->\S+)", tip).group(1)
    edge = g.edges[name]
    rank = rank_order(g).index(edge.index) + 1
    assert f"rank {rank} of {n} by |score|" in tip
    assert ("port <" + edge.port + ">") in tip if edge.port else "port none" in tip
    s = re.search(r"score (\S+)", tip).group(1)
    assert s in ("+inf", "-inf") or math.isclose(float(s), edge.score, rel_tol=1e-3)

    # click a node: its in- and out-edges in view, with their scores
    page.click(f'.node[data-name="{node.name}"]')
    ins = page.eval_on_selector_all("#in-edges tr[data-name]", "rs => rs.map(r => r.dataset.name)")
    outs = page.eval_on_selector_all(
        "#out-edges tr[data-name]", "rs => rs.map(r => r.dataset.name)"
    )
    circuit = expected.edges.in_graph()
    assert set(ins) == {e.name for e in circuit if e.dst == node.name}
    assert set(outs) == {e.name for e in circuit if e.src == node.name}
    listed = page.eval_on_selector_all(
        "#in-edges tr[data-name], #out-edges tr[data-name]",
        "rs => rs.map(r => [r.dataset.name, r.dataset.score])",
    )
    for edge_name, text in listed:
        assert float(text) == pytest.approx(g.edges[edge_name].score, rel=1e-6, nan_ok=True)

    # search selects and centres; wheel zooms; dragging the background pans
    page.fill("#search", "logits")
    page.press("#search", "Enter")
    assert "logits" in page.text_content("#details h2")
    before = page.get_attribute("#scene", "transform")
    page.mouse.move(300, 400)
    page.mouse.wheel(0, -300)
    zoomed = page.get_attribute("#scene", "transform")
    assert zoomed != before
    view = page.locator("#view").bounding_box()
    page.mouse.move(view["x"] + 20, view["y"] + 20)
    page.mouse.down()
    page.mouse.move(view["x"] + 120, view["y"] + 70, steps=4)
    page.mouse.up()
    assert page.get_attribute("#scene", "transform") != zoomed

    page.keyboard.press("Escape")
    assert page.locator(".node.selected").count() == 0
    page.click("#fit")
    page.screenshot(path=tmp_path / "viewer.png")
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    assert errors == []
    page.close()


def test_circuit_view_and_notebook_iframe_in_chromium(browser, tiny_gpt2, tmp_path) -> None:
    g = scored(tiny_gpt2.spec, seed=2).top(30, strategy="greedy")
    (tmp_path / "nb.html").write_text(
        "<!DOCTYPE html><html><body>" + g._repr_html_() + g._repr_html_() + "</body></html>"
    )
    errors: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto((tmp_path / "nb.html").as_uri())
    frames = page.frame_locator("iframe")
    for i in range(2):  # two views in one notebook, each its own page
        count = frames.nth(i).locator("#count")
        count.wait_for()
        assert count.get_attribute("data-mode") == "circuit"
        assert int(count.get_attribute("data-edges")) == g.n_edges_in_graph
        assert frames.nth(i).locator("#edges path.edge").count() == g.n_edges_in_graph
    assert errors == []
    page.close()


def test_full_size_graph_is_compact(tmp_path) -> None:
    """SmolLM2's full graph (123,211 edges) as one page: every edge, in about 1.5 MB."""
    spec = ModelSpec(
        name="smollm2-shaped", architecture="llama", n_layers=30, n_heads=9, d_model=576
    )
    g = scored(spec)
    page = g.to_html()
    assert len(g.edges) == 123_211 and len(page) < 2_000_000
    assert embedded(page)["edges"]["embedded"] == 123_211
