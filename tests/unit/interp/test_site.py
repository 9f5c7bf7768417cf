"""Site names: canonical strings that parse back exactly, and clear errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp import Site, UnknownSiteError

layers = st.integers(0, 60)
positions = st.none() | st.integers(-20, 200)


@st.composite
def sites(draw: st.DrawFn) -> Site:
    kind = draw(st.sampled_from(["input", "logits", "resid", "attn", "mlp", "module"]))
    if kind in ("input", "logits"):
        return Site(kind, pos=draw(positions))
    if kind == "resid":
        return Site(
            kind, draw(layers), draw(st.sampled_from(["pre", "mid", "post"])), pos=draw(positions)
        )
    if kind == "mlp":
        return Site(
            kind,
            draw(layers),
            draw(st.sampled_from(["out", "in", "pre", "post"])),
            pos=draw(positions),
        )
    if kind == "attn":
        head = draw(st.none() | st.integers(0, 40))
        port = draw(st.none() | st.sampled_from(["q", "k", "v"]))
        fields = ["out", "z", "q", "k", "v", "pattern", "scores"] + (
            [] if head is not None else ["result"]
        )
        field = None if port else draw(st.sampled_from(fields))
        return Site(kind, draw(layers), field, head, port, draw(positions))
    segment = st.from_regex(r"[A-Za-z0-9_]{1,6}", fullmatch=True)
    path = ".".join(draw(st.lists(segment, min_size=1, max_size=4)))
    return Site("module", field=draw(st.sampled_from(["in", "out"])), path=path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites())
def test_str_parse_round_trip(site: Site) -> None:
    text = str(site)
    assert Site.parse(text) == site
    assert str(Site.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input", Site("input")),
        ("logits@-1", Site("logits", pos=-1)),
        ("a3.h5", Site("attn", 3, "out", head=5)),
        ("a3.h5<q>", Site("attn", 3, "in", head=5, port="q")),
        ("a3.h5<q>@7", Site("attn", 3, "in", head=5, port="q", pos=7)),
        ("a0.pattern", Site("attn", 0, "pattern")),
        ("m11", Site("mlp", 11, "out")),
        ("m2.post@3", Site("mlp", 2, "post", pos=3)),
        ("r4.mid", Site("resid", 4, "mid")),
        ("features.0", Site("module", field="out", path="features.0")),
        ("fc1:in", Site("module", field="in", path="fc1")),
        ("module:m0", Site("module", field="out", path="m0")),
    ],
)
def test_parse_examples(text: str, expected: Site) -> None:
    assert Site.parse(text) == expected


@pytest.mark.parametrize(
    ("tl_name", "canonical"),
    [
        ("blocks.3.hook_resid_pre", "r3.pre"),
        ("blocks.3.hook_attn_out", "a3"),
        ("blocks.3.attn.hook_z", "a3.z"),
        ("blocks.3.hook_q_input", "a3<q>"),
        ("blocks.3.mlp.hook_post", "m3.post"),
        ("hook_unembed", "logits"),
    ],
)
def test_transformerlens_names_translate(tl_name: str, canonical: str) -> None:
    assert str(Site.parse(tl_name)) == canonical


@pytest.mark.parametrize(
    "bad", ["", "a3.h5.q<k>", "r3", "x3.h1@2", "a-1", "m3.z", "a3@", "logits@x", "blocks 3"]
)
def test_bad_names_raise_with_examples(bad: str) -> None:
    with pytest.raises(UnknownSiteError) as err:
        Site.parse(bad)
    assert "a3.h5" in str(err.value) or "Site" in str(err.value) or "field" in str(err.value)


def test_unknown_site_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        Site.parse("nope!")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "mlp"},  # no layer
        {"kind": "input", "layer": 2},
        {"kind": "mlp", "layer": 1, "head": 2},
        {"kind": "attn", "layer": 1, "field": "z", "port": "q"},
        {"kind": "attn", "layer": 1, "field": "in"},
        {"kind": "resid", "layer": 0},
        {"kind": "attn", "layer": -1},
        {"kind": "module", "path": "a b"},
        {"kind": "blob"},
    ],
)
def test_invalid_sites_are_rejected(kwargs: dict) -> None:
    with pytest.raises(UnknownSiteError):
        Site(**kwargs)


def test_graph_nodes_are_recognised() -> None:
    assert Site.parse("a2.h3").is_graph_node
    assert Site.parse("a2.h3<k>").is_graph_node
    assert not Site.parse("a2.z").is_graph_node
    assert not Site.parse("m1@3").is_graph_node
