"""``ModelSpec``: the shape of a transformer, from which graph and site indices are derived."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ._errors import GraphFormatError

__all__ = ["ModelSpec", "is_causal", "spec_from_bridge"]


@dataclass(frozen=True)
class ModelSpec:
    """Sizes and layout of a transformer (everything a graph or a site table needs).

    Examples
    --------
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=4, d_model=32)
    >>> spec.n_kv_heads, spec.d_head
    (4, 8)
    """

    name: str
    architecture: str
    n_layers: int
    n_heads: int
    d_model: int
    n_kv_heads: int | None = None
    d_head: int | None = None
    d_mlp: int | None = None
    d_vocab: int | None = None
    n_ctx: int | None = None
    parallel_attn_mlp: bool = False
    causal: bool = True
    """Whether each position attends only to itself and earlier ones (a decoder). Patching
    skips the positions before a patch only when it is."""

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "d_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelSpec.{name} must be an int >= 1; got {value!r}.")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.d_head is None:
            object.__setattr__(self, "d_head", self.d_model // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelSpec.n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                f"({self.n_kv_heads})."
            )

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The KV head that query head ``head`` reads keys and values from."""
        return head // self.group_size

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Inverse of :meth:`to_dict`; rejects unknown or missing keys with a clear error."""
        if not isinstance(data, dict):
            raise GraphFormatError(f"model spec must be an object; got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        missing = sorted({"name", "architecture", "n_layers", "n_heads", "d_model"} - set(data))
        if extra or missing:
            raise GraphFormatError(
                f"model spec has unknown keys {extra} and is missing keys {missing}."
            )
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise GraphFormatError(f"model spec is invalid: {err}") from None


def spec_from_bridge(bridge: Any, name: str) -> ModelSpec:
    """A :class:`ModelSpec` read off a bridge's config."""
    cfg = bridge.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    return ModelSpec(
        name=name,
        architecture=str(
            getattr(cfg, "architecture", None) or type(bridge.original_model).__name__
        ),
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_model=int(cfg.d_model),
        d_head=int(cfg.d_head),
        d_mlp=int(cfg.d_mlp) if getattr(cfg, "d_mlp", None) else None,
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(cfg.n_ctx) if getattr(cfg, "n_ctx", None) else None,
        parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        causal=is_causal(bridge),
    )


def is_causal(bridge: Any) -> bool:
    """Whether a bridge's attention is causal, read from the model as it is now.

    Not causal when the bridge's config says its attention is not (``attention_dir``, which
    TransformerLens sets to ``"bidirectional"`` for encoders and diffusion LMs and which
    ``boot_native`` obeys), when any attention bridge is marked ``is_causal = False``, or when
    the attention modules it wraps or the wrapped Hugging Face model's config say
    ``is_causal = False``.
    """
    if getattr(bridge.cfg, "attention_dir", "causal") != "causal":
        return False
    for block in getattr(bridge, "blocks", ()):
        attn = block._modules.get("attn") if hasattr(block, "_modules") else None
        if attn is None:
            continue
        original = getattr(attn, "original_component", None)
        if False in (getattr(attn, "is_causal", True), getattr(original, "is_causal", True)):
            return False
    config = getattr(bridge.__dict__.get("original_model"), "config", None)
    return getattr(config, "is_causal", True) is not False
