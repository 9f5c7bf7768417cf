"""Restarting a transformer's forward pass at a block: the engine behind
:meth:`TransformerModel.block_inputs <interp.TransformerModel.block_inputs>`,
``forward_from``, ``attention_output``, ``unembed`` and ``narrow_logits``.

:func:`block_inputs` runs a bridge once and keeps what every block received; :func:`forward_from`
then runs blocks ``layer..`` only, on any number of copies of a (patched) residual, optionally
from a later position on (the earlier positions' keys and values are read from the recorded run)
and unembedding only the positions and token ids a metric reads. Patching methods use it so that
work below a patched layer is not redone.

:func:`narrow_logits` makes a whole forward pass unembed only the positions and token ids a
metric reads (or nothing, for runs kept only for their activations): the full unembedding of
every position costs as much as several blocks (a third of GPT-2 small's forward at 16 tokens).

These functions take the TransformerLens bridge itself; the model wrapper's methods of the same
names are the public entry points and document the arguments.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._errors import InterpError, ShapeError

__all__ = [
    "BlockInputs",
    "attention_output",
    "block_inputs",
    "forward_from",
    "narrow_logits",
    "unembed",
]


@dataclass
class BlockInputs:
    """What every block received in one forward pass: its residual input and the other
    arguments (attention mask, position embeddings...), kept to restart the pass at a block."""

    resid: list[Tensor]
    args: list[tuple[Any, ...]]
    kwargs: list[dict[str, Any]]
    batch: int
    kv: dict[int, tuple[Tensor, Tensor]] | None = None
    """Each layer's attention keys and values (after rotary), when recorded."""


@torch.no_grad()
def block_inputs(
    bridge: nn.Module, tokens: Tensor, *, keep_kv: bool = False
) -> tuple[Tensor, BlockInputs]:
    """Run ``bridge`` once on token ids (batch, pos); return its logits and what each block
    received (and, with ``keep_kv``, every layer's keys and values)."""
    blocks = bridge.blocks
    got: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    recorder = _PrefixKV()
    handles: list[Any] = []
    try:  # hooks are registered inside the try, so that whatever raises, none stays behind
        for i, block in enumerate(blocks):
            handles.append(
                block.register_forward_pre_hook(
                    lambda mod, args, kwargs, i=i: got.__setitem__(i, (args, kwargs)),
                    with_kwargs=True,
                )
            )
        if keep_kv:
            _inject_kv(bridge, range(len(blocks)), recorder, handles)
        logits = bridge(tokens, use_cache=False)
    finally:
        _remove(handles)
    order = range(len(blocks))
    return logits, BlockInputs(
        resid=[got[i][0][0].detach() for i in order],
        args=[got[i][0][1:] for i in order],
        kwargs=[got[i][1] for i in order],
        batch=tokens.shape[0],
        kv=recorder.recorded if keep_kv else None,
    )


def forward_from(
    bridge: nn.Module,
    layer: int,
    resid: Tensor,
    inputs: BlockInputs,
    *,
    positions: Tensor | None = None,
    start: int = 0,
    stop: int | None = None,
    vocab: Tensor | None = None,
    attn_out: Tensor | None = None,
    hooked_layers: Set[int | None] = frozenset(),
) -> Tensor:
    """Run ``bridge``'s blocks ``layer..`` on a residual, then its final norm and unembedding.

    ``hooked_layers``: layers that carry a hook of the caller; the last block's MLP is only
    narrowed to ``positions`` when its layer is not among them (a hook must see every position).
    """
    n_layers = len(bridge.blocks)
    end = n_layers if stop is None else stop
    _check_int("layer", layer, 0, n_layers)  # n_layers: no block left, only the unembedding
    if stop is not None:
        _check_int("stop", stop, layer, n_layers)
    if resid.shape[0] % inputs.batch:
        raise ShapeError(
            f"forward_from needs copies of the recorded batch of {inputs.batch}; "
            f"got a residual of batch {resid.shape[0]}."
        )
    n_pos = inputs.resid[0].shape[1]
    _check_int("start", start, 0, n_pos - 1)
    if resid.shape[1] != n_pos - start:
        raise ShapeError(
            f"forward_from(start={start}) needs a residual of {n_pos - start} "
            f"positions; got {resid.shape[1]}."
        )
    if start and inputs.kv is None:
        raise InterpError("forward_from(start=...) needs block_inputs(..., keep_kv=True).")
    if positions is not None and stop is None:
        positions = torch.as_tensor(positions)
        if positions.shape != (resid.shape[0],):
            raise ShapeError(
                f"forward_from needs one position per residual row ({resid.shape[0]}); got "
                f"positions of shape {tuple(positions.shape)}."
            )
    copies = resid.shape[0] // inputs.batch
    handles: list[Any] = []
    given = None
    h = resid
    try:  # hooks are registered inside the try, so that whatever raises, none stays behind
        if start:
            prefix = {
                i: tuple(_tile(t[..., :start, :], inputs.batch, copies) for t in kv)
                for i, kv in inputs.kv.items()
                if layer <= i < end
            }
            _inject_kv(bridge, range(layer, end), _PrefixKV(prefix), handles)
        last = bridge.blocks[end - 1]
        if (
            stop is None
            and positions is not None
            and end - 1 > layer
            and end - 1 not in hooked_layers
        ):
            handles += _mlp_at_rows(last.mlp, positions - start)
        if attn_out is not None:
            given = _Returning(bridge.blocks[layer].attn, (attn_out, None))
            handles.append(given)
        for i in range(layer, end):
            args = _tile(_from_position(inputs.args[i], start, n_pos), inputs.batch, copies)
            kwargs = _tile(_from_position(inputs.kwargs[i], start, n_pos), inputs.batch, copies)
            out = bridge.blocks[i](h, *args, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
    finally:
        _remove(handles)
    if given is not None and not given.called:
        raise InterpError(
            f"Block {layer} did not call its attention module, so the attention "
            "output given to forward_from was not used."
        )
    if stop is not None:
        return h
    if positions is not None:
        h = h[torch.arange(h.shape[0], device=h.device), positions - start]
    return unembed(bridge, bridge.ln_final(h), vocab)


def attention_output(bridge: nn.Module, layer: int, z: Tensor) -> Tensor:
    """Block ``layer``'s attention output for head outputs ``z`` (batch, pos, head, d_head)."""
    return bridge.blocks[layer].attn.o(z.flatten(-2))


def unembed(bridge: nn.Module, x: Tensor, vocab: Tensor | None = None) -> Tensor:
    """Logits of a normalised final residual, for every token or only the ids in ``vocab``."""
    head = bridge.unembed.original_component
    if vocab is None:
        return bridge.unembed(x)
    if not _plain_linear(head):
        return bridge.unembed(x)[..., vocab.to(x.device)]
    return _linear_rows(head, x, vocab)


@contextlib.contextmanager
def narrow_logits(
    bridge: nn.Module,
    positions: Tensor | None,
    vocab: Tensor | None,
    hooked: Callable[[], bool] = lambda: False,
) -> Iterator[None]:
    """While open, ``bridge``'s unembedding computes only row ``i``'s position
    ``positions[i]`` (all positions when ``None``) and only the token ids in ``vocab`` (all
    when ``None``; an empty tensor: no logits at all). A forward then returns logits of shape
    (batch, len(vocab)) instead of (batch, pos, d_vocab).

    The numbers are those of the full unembedding at these places. When ``hooked()`` says a
    hook sits on the logits, or the unembedding is not a plain linear layer, the full logits
    are computed (the hook sees them all) and then narrowed."""
    component = bridge.unembed
    if "forward" in component.__dict__:
        raise InterpError("narrow_logits contexts do not nest.")
    _check_ids("positions", positions, None)
    _check_ids("vocab", vocab, component.original_component.weight.shape[0])
    full = component.forward
    head = component.original_component

    def rows(x: Tensor) -> Tensor:
        if positions is None:
            return x
        if positions.shape != (x.shape[0],):
            raise ShapeError(
                f"narrow_logits needs one position per row of the batch ({x.shape[0]}); got "
                f"positions of shape {tuple(positions.shape)}."
            )
        at = positions.to(x.device)
        return x[torch.arange(x.shape[0], device=x.device), at]

    def forward(hidden: Tensor, **kwargs: Any) -> Tensor:
        if kwargs or hooked() or not _plain_linear(head):
            out = rows(full(hidden, **kwargs))
            return out if vocab is None else out[..., vocab.to(out.device)]
        return _linear_rows(head, rows(hidden), vocab)

    # on the instance itself: bridge components forward attribute sets to the module they wrap
    object.__setattr__(component, "forward", forward)
    try:
        yield
    finally:
        component.__dict__.pop("forward", None)


def _check_ids(name: str, ids: Tensor | None, size: int | None) -> None:
    """``ids``: None or a 1-D integer tensor, each in ``0..size-1`` (``>= 0`` without size)."""
    if ids is None:
        return
    if not isinstance(ids, Tensor) or ids.ndim != 1 or ids.is_floating_point():
        raise ShapeError(f"narrow_logits: {name} must be a 1-D tensor of integers; got {ids!r}.")
    bad = (ids < 0) | (ids >= size) if size is not None else ids < 0
    if bool(bad.any()):
        limit = f"0..{size - 1}" if size is not None else ">= 0"
        raise ShapeError(f"narrow_logits: {name} must lie in {limit}; got {int(ids[bad][0])}.")


def _plain_linear(head: nn.Module) -> bool:
    """A linear layer whose weights are in place (not offloaded to the meta device)."""
    return isinstance(head, nn.Linear) and head.weight.device.type != "meta"


_MIN_ROWS = 4  # MKL sums a product of fewer rows in another order (1e-6 relative apart)


def _linear_rows(head: nn.Linear, x: Tensor, vocab: Tensor | None) -> Tensor:
    """``head(x)`` restricted to the output features ``vocab`` (all when ``None``), without
    computing the others; on the layer's device.

    At least :data:`_MIN_ROWS` rows go through the product (zero rows pad a smaller input), so
    a row's logits do not depend on how many rows are computed with it: a task's metric is
    then the same number whatever chunks its prompts go in (the learned masks' optimiser
    would otherwise turn rounding differences into different steps)."""
    weight = head.weight
    x = x.to(weight.device)
    bias = head.bias
    if vocab is not None:
        vocab = vocab.to(weight.device)
        weight, bias = weight[vocab], None if bias is None else bias[vocab]
    rows = x.reshape(-1, x.shape[-1])
    if 0 < len(rows) < _MIN_ROWS:
        padded = torch.cat([rows, rows.new_zeros(_MIN_ROWS - len(rows), rows.shape[-1])])
        return F.linear(padded, weight, bias)[: len(rows)].reshape(*x.shape[:-1], -1)
    return F.linear(x, weight, bias)


# -- helpers ----------------------------------------------------------------------------------


def _tile(obj: Any, batch: int, copies: int) -> Any:
    """Repeat every tensor whose first axis is the batch ``copies`` times (copy-major); drop
    KV caches, which a restarted pass must not extend."""
    from transformers.cache_utils import Cache

    if isinstance(obj, Cache):
        return None
    if isinstance(obj, Tensor):
        if copies > 1 and obj.ndim and obj.shape[0] == batch and batch > 1:
            return obj.repeat(copies, *([1] * (obj.ndim - 1)))
        if copies > 1 and obj.ndim and obj.shape[0] == batch == 1:
            return obj.expand(copies, *obj.shape[1:])
        return obj
    if isinstance(obj, tuple):
        return tuple(_tile(x, batch, copies) for x in obj)
    if isinstance(obj, list):
        return [_tile(x, batch, copies) for x in obj]
    if isinstance(obj, dict):
        return {k: _tile(v, batch, copies) for k, v in obj.items()}
    return obj


class _PrefixKV:
    """Stands in for a KV cache inside the bridge's attention: records every layer's keys and
    values (``prefix=None``), or puts recorded ones in front of the keys and values computed."""

    def __init__(self, prefix: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        self.prefix = prefix
        self.recorded: dict[int, tuple[Tensor, Tensor]] = {}

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        if self.prefix is None:
            self.recorded[layer_idx] = (k.detach(), v.detach())
            return k, v
        pk, pv = self.prefix[layer_idx]
        return torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)


def _inject_kv(
    bridge: nn.Module, layers: Iterable[int], cache: _PrefixKV, handles: list[Any]
) -> None:
    """Hand ``cache`` to the attention of the given blocks as their ``past_key_values``; each
    hook's handle goes to ``handles`` as soon as it is registered."""

    def inject(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
        return args, {**kwargs, "past_key_values": cache}

    for i in layers:
        handles.append(bridge.blocks[i].attn.register_forward_pre_hook(inject, with_kwargs=True))


def _remove(handles: list[Any]) -> None:
    """Remove hooks (and :class:`_Returning` patches), the last registered first."""
    for handle in reversed(handles):
        handle.remove()


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    try:
        ok = not isinstance(value, bool) and low <= operator.index(value) <= high
    except TypeError:
        ok = False
    if not ok:
        raise InterpError(f"forward_from: {name} must be an int in {low}..{high}; got {value!r}.")


class _Returning:
    """Makes a module return a given value without computing anything (its hooks still run);
    ``remove()`` undoes it, like a hook's handle. ``called``: whether the module was called."""

    def __init__(self, module: nn.Module, value: Any) -> None:
        self.module, self.called = module, False

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.called = True
            return value

        # on the instance itself: bridge components forward attribute sets to the module they wrap
        object.__setattr__(module, "forward", forward)

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _mlp_at_rows(mlp: nn.Module, positions: Tensor) -> list[Any]:
    """Make a block's MLP compute one position per row (it acts on each position alone); the
    other positions of its output are zero, for a pass that reads only these positions."""
    shape: list[torch.Size] = []

    def gather(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        shape[:] = [x.shape]
        rows = torch.arange(x.shape[0], device=x.device)
        return (x[rows, positions.to(x.device)][:, None], *args[1:])

    def scatter(module: nn.Module, args: Any, out: Tensor) -> Tensor:
        full = out.new_zeros(*shape[0][:2], out.shape[-1])
        rows = torch.arange(full.shape[0], device=full.device)
        full[rows, positions.to(full.device)] = out[:, 0]
        return full

    return [mlp.register_forward_pre_hook(gather), mlp.register_forward_hook(scatter)]


def _from_position(obj: Any, start: int, n_pos: int) -> Any:
    """Block arguments for positions ``start..`` only: masks lose their first query rows,
    per-position tensors (position ids, rotary cos/sin) their first positions."""
    if not start:
        return obj
    if isinstance(obj, Tensor):
        if obj.ndim == 4 and obj.shape[-2] == obj.shape[-1] == n_pos:
            return obj[..., start:, :]
        if obj.ndim >= 2 and obj.shape[1] == n_pos:
            return obj[:, start:]
        return obj
    if isinstance(obj, tuple | list):
        return type(obj)(_from_position(x, start, n_pos) for x in obj)
    if isinstance(obj, dict):
        return {k: _from_position(v, start, n_pos) for k, v in obj.items()}
    return obj
