"""``Site``: the one way to name a place in a model.

A site's string form is canonical and :meth:`Site.parse` is its exact inverse. Transformer
graph nodes use the names of EAP-IG (``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``, reader ports
``<q>``, ``<k>``, ``<v>``) so graphs move between the two toolkits; the rest of the grammar
extends those names:

=====================  ======================================================================
``input``              the embeddings as the first block reads them (resid_pre of layer 0)
``logits``             the unembedding output
``r{L}.pre|mid|post``  the residual stream before layer L, between its attention and MLP, after it
                       (on the TransformerLens 4 bridge ``r{L}.mid`` is the copy the MLP branch
                       reads: patching it changes the MLP's input, not the residual passing by)
``a{L}``               the attention block's output (all heads plus the output bias)
``a{L}.h{H}``          head H's output, written to the residual stream (no output bias)
``a{L}.result``        every head's output at once, shape (batch, pos, head, d_model)
``a{L}[.h{H}].z|q|k|v|pattern|scores``   attention internals, per head when ``.h{H}`` is given
``a{L}[.h{H}]<q|k|v>``  the reader port: the residual the head's query/key/value is computed from
``m{L}``               the MLP output; ``m{L}.in`` its input, ``m{L}.pre|post`` its hidden layer
``@{P}``               a suffix that selects one token position (negative counts from the end)
=====================  ======================================================================

Sites of plain ``torch.nn.Module`` models are module paths (``features.0``, ``fc2``) with an
optional ``:in`` suffix for the module's input. A path that would read as a transformer site is
written with the prefix ``module:``.

Head indices of k/v sites are query heads. On grouped-query models a query head's k/v (and its
``<k>``/``<v>`` port) belong to the KV head it shares with its group: ``H // (n_heads // n_kv)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._errors import UnknownSiteError, did_you_mean

__all__ = ["Site", "SiteLike"]

KINDS = ("input", "logits", "resid", "attn", "mlp", "module")
FIELDS = {
    "input": ("out",),
    "logits": ("out",),
    "resid": ("pre", "mid", "post"),
    "attn": ("out", "in", "result", "z", "q", "k", "v", "pattern", "scores"),
    "mlp": ("out", "in", "pre", "post"),
    "module": ("out", "in"),
}
DEFAULT_FIELD = {"input": "out", "logits": "out", "attn": "out", "mlp": "out", "module": "out"}
PORTS = ("q", "k", "v")

_POS = r"(?:@(?P<pos>-?\d+))?"
_TRANSFORMER = re.compile(
    r"^(?:"
    r"(?P<special>input|logits)"
    r"|a(?P<a_layer>\d+)(?:\.h(?P<head>\d+))?(?:\.(?P<a_field>result|z|q|k|v|pattern|scores))?"
    r"(?:<(?P<port>q|k|v)>)?"
    r"|m(?P<m_layer>\d+)(?:\.(?P<m_field>in|pre|post))?"
    r"|r(?P<r_layer>\d+)\.(?P<r_field>pre|mid|post)"
    r")" + _POS + "$"
)
_MODULE_PATH = re.compile(r"^[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*$")
_MODULE = re.compile(r"^(?:module:)?(?P<path>[^:@]+)(?::(?P<field>in|out))?" + _POS + "$")

# TransformerLens hook names users already know, translated to sites.
_TL_NAMES = {
    "hook_resid_pre": ("resid", "pre"),
    "hook_resid_mid": ("resid", "mid"),
    "hook_resid_post": ("resid", "post"),
    "hook_attn_out": ("attn", "out"),
    "hook_mlp_out": ("mlp", "out"),
    "hook_mlp_in": ("mlp", "in"),
    "hook_q_input": ("attn", "in", "q"),
    "hook_k_input": ("attn", "in", "k"),
    "hook_v_input": ("attn", "in", "v"),
    "attn.hook_q": ("attn", "q"),
    "attn.hook_k": ("attn", "k"),
    "attn.hook_v": ("attn", "v"),
    "attn.hook_z": ("attn", "z"),
    "attn.hook_pattern": ("attn", "pattern"),
    "attn.hook_attn_scores": ("attn", "scores"),
    "mlp.hook_pre": ("mlp", "pre"),
    "mlp.hook_post": ("mlp", "post"),
}
_TL = re.compile(r"^blocks\.(?P<layer>\d+)\.(?P<name>[a-z_.]+)$")


def _check_index(name: str, value: int | None, *, allow_negative: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnknownSiteError(f"Site {name} must be an int, got {value!r}.")
    if value < 0 and not allow_negative:
        raise UnknownSiteError(f"Site {name} must be >= 0, got {value}.")


@dataclass(frozen=True)
class Site:
    """A place in a model: what component, which layer, head, port and token position.

    Parameters
    ----------
    kind : {"input", "logits", "resid", "attn", "mlp", "module"}
        The component.
    layer : int, optional
        Block index (required for resid, attn and mlp; absent otherwise).
    field : str, optional
        Which tensor of the component (see the module docstring); defaults to its output.
    head : int, optional
        Attention head (attn only).
    port : {"q", "k", "v"}, optional
        Reader port of an attention head: the residual its query/key/value reads.
    pos : int, optional
        One token position; negative positions count from the end.
    path : str, optional
        Module path (kind "module" only).

    Examples
    --------
    >>> Site.parse("a3.h5<q>@7")
    Site(kind='attn', layer=3, field='in', head=5, port='q', pos=7, path=None)
    >>> str(Site("mlp", 2))
    'm2'
    """

    kind: str
    layer: int | None = None
    field: str | None = None
    head: int | None = None
    port: str | None = None
    pos: int | None = None
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UnknownSiteError(
                f"Site kind must be one of {', '.join(KINDS)}; got {self.kind!r}."
                + did_you_mean(str(self.kind), KINDS)
            )
        field = self.field
        if field is None:
            if self.port is not None:
                field = "in"
            elif self.kind in DEFAULT_FIELD:
                field = DEFAULT_FIELD[self.kind]
            else:
                raise UnknownSiteError(
                    f"Site of kind {self.kind!r} needs a field, one of {', '.join(FIELDS[self.kind])}."
                )
            object.__setattr__(self, "field", field)
        if field not in FIELDS[self.kind]:
            raise UnknownSiteError(
                f"Field {field!r} does not exist for a {self.kind} site; "
                f"expected one of {', '.join(FIELDS[self.kind])}."
            )
        _check_index("layer", self.layer)
        _check_index("head", self.head)
        _check_index("pos", self.pos, allow_negative=True)
        needs_layer = self.kind in ("resid", "attn", "mlp")
        if needs_layer and self.layer is None:
            raise UnknownSiteError(f"A {self.kind} site needs a layer.")
        if not needs_layer and self.layer is not None:
            raise UnknownSiteError(f"A {self.kind} site has no layer; got layer={self.layer}.")
        if self.head is not None and self.kind != "attn":
            raise UnknownSiteError(f"Only attention sites have heads; got a {self.kind} site.")
        if self.port is not None and (self.kind != "attn" or self.port not in PORTS):
            raise UnknownSiteError(
                f"Reader ports are q, k or v on attention sites; got port={self.port!r} "
                f"on a {self.kind} site."
            )
        if self.kind == "attn" and field == "result" and self.head is not None:
            raise UnknownSiteError(
                f"One head's output is written 'a{self.layer}.h{self.head}', without '.result'."
            )
        if self.kind == "attn" and (field == "in") != (self.port is not None):
            raise UnknownSiteError(
                "An attention input site names its reader port: use <q>, <k> or <v>, e.g. 'a3.h5<q>'."
            )
        if self.kind == "module":
            if not isinstance(self.path, str) or not _MODULE_PATH.match(self.path):
                raise UnknownSiteError(
                    f"A module site needs a dotted module path such as 'features.0'; got {self.path!r}."
                )
            if self.pos is not None:
                raise UnknownSiteError(
                    "Module sites select whole tensors; positions are not supported."
                )
        elif self.path is not None:
            raise UnknownSiteError(f"Only module sites have a path; got a {self.kind} site.")

    # -- names --------------------------------------------------------------------------------

    def __str__(self) -> str:
        pos = "" if self.pos is None else f"@{self.pos}"
        if self.kind in ("input", "logits"):
            return self.kind + pos
        if self.kind == "resid":
            return f"r{self.layer}.{self.field}{pos}"
        if self.kind == "mlp":
            field = "" if self.field == "out" else f".{self.field}"
            return f"m{self.layer}{field}{pos}"
        if self.kind == "attn":
            head = "" if self.head is None else f".h{self.head}"
            field = "" if self.field in ("out", "in") else f".{self.field}"
            port = "" if self.port is None else f"<{self.port}>"
            return f"a{self.layer}{head}{field}{port}{pos}"
        field = ":in" if self.field == "in" else ""
        prefix = "module:" if _looks_transformer(self.path) else ""
        return f"{prefix}{self.path}{field}"

    def __repr__(self) -> str:
        return (
            f"Site(kind={self.kind!r}, layer={self.layer!r}, field={self.field!r}, "
            f"head={self.head!r}, port={self.port!r}, pos={self.pos!r}, path={self.path!r})"
        )

    @classmethod
    def parse(cls, name: str | Site) -> Site:
        """Parse a site name (the exact inverse of ``str``).

        TransformerLens hook names (``blocks.3.hook_attn_out``) are accepted too and translated.

        Raises
        ------
        UnknownSiteError
            When the name does not follow the grammar.
        """
        if isinstance(name, Site):
            return name
        if not isinstance(name, str):
            raise UnknownSiteError(f"A site name must be a str or Site; got {type(name).__name__}.")
        m = _TRANSFORMER.match(name)
        if m:
            pos = None if m["pos"] is None else int(m["pos"])
            if m["special"]:
                return cls(m["special"], pos=pos)
            if m["a_layer"] is not None:
                head = None if m["head"] is None else int(m["head"])
                return cls("attn", int(m["a_layer"]), m["a_field"], head, m["port"], pos)
            if m["m_layer"] is not None:
                return cls("mlp", int(m["m_layer"]), m["m_field"], pos=pos)
            return cls("resid", int(m["r_layer"]), m["r_field"], pos=pos)
        tl = _TL.match(name)
        if tl and tl["name"] in _TL_NAMES:
            kind, field, *port = _TL_NAMES[tl["name"]]
            return cls(kind, int(tl["layer"]), field, port=port[0] if port else None)
        if name == "hook_unembed":
            return cls("logits")
        m = _MODULE.match(name)
        if m and _MODULE_PATH.match(m["path"]) and m["pos"] is None:
            if not name.startswith("module:") and _looks_transformer(m["path"]):
                raise UnknownSiteError(_bad_name_message(name))
            return cls("module", field=m["field"] or "out", path=m["path"])
        raise UnknownSiteError(_bad_name_message(name))

    # -- derived ------------------------------------------------------------------------------

    def replace(self, **changes: object) -> Site:
        """A copy with some attributes changed (validated like a new site)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if "port" in changes and changes["port"] is None and "field" not in changes:
            values["field"] = None
        values.update(changes)
        return Site(**values)

    @property
    def is_graph_node(self) -> bool:
        """Whether the site is a node (or reader port) of the EAP-IG transformer graph."""
        if self.pos is not None:
            return False
        if self.kind in ("input", "logits"):
            return True
        if self.kind == "mlp":
            return self.field == "out"
        return self.kind == "attn" and self.head is not None and self.field in ("out", "in")


SiteLike = Site | str


def _looks_transformer(path: str) -> bool:
    return bool(re.match(r"^(?:input|logits|[amr]\d+)(?:[.<@]|$)", path))


_EXAMPLES = (
    "'input', 'a3.h5', 'a3.h5<q>', 'a3.z', 'm2', 'm2.post', 'r4.pre', 'logits@-1', 'features.0'"
)


def _bad_name_message(name: str) -> str:
    return (
        f"{name!r} is not a site name. Site names look like {_EXAMPLES} "
        "(module paths of plain models; prefix 'module:' if one reads like a transformer site)."
    )
