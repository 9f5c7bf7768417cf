"""Per-head forks for attention bridges that have none of their own.

Edge methods need two fine-grained views of every attention layer: each head's output before
the heads are summed (``hook_result``, switched on by ``use_attn_result``) and a residual copy
per head for its query, key and value inputs (``hook_q_input`` ... , ``use_split_qkv_input``).
TransformerLens' GPT-2 and Llama attention bridges compute both themselves; its generic
``AttentionBridge`` (``boot_native`` models, and architectures whose attention the bridge hands
to the wrapped module) delegates the whole computation and refuses the switches.

Such an attention still calls its ``q``/``k``/``v``/``o`` projections as submodules, so the same
views are built here from forward hooks on those projections, exactly as TransformerLens builds
them: the pre-``ln1`` residual is forked per head, fires ``hook_q_input`` (etc.), goes through
``ln1`` per head and through that head's rows of ``W_Q``; ``z`` goes through each head's columns
of ``W_O``, fires ``hook_result``, and is summed with ``b_O``. The bridge's own ``HookPoint``\\ s
fire, so sites bind to the same names on every bridge. :func:`set_switch` turns a switch on or off
either way, and :func:`switch_is_on` tells whether it is on.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InterpError

__all__ = ["EMULATED", "set_switch", "switch_is_on"]

EMULATED = ("use_attn_result", "use_split_qkv_input")
"""Bridge switches this module can provide for attention bridges that refuse them."""

# bridge -> {switch: hook handles of the emulation}; weak so a dropped bridge is not kept alive
_ON: weakref.WeakKeyDictionary[nn.Module, dict[str, list[Any]]] = weakref.WeakKeyDictionary()


def switch_is_on(bridge: nn.Module, flag: str) -> bool:
    """Whether a bridge switch is on, natively (its config flag) or emulated here."""
    return bool(getattr(bridge.cfg, flag, False)) or flag in _ON.get(bridge, {})


def set_switch(bridge: nn.Module, flag: str, on: bool) -> None:
    """Turn a bridge switch on or off: the bridge's own ``set_<flag>`` where its attention
    supports it, the hooks of this module where it does not (every attention layer must then
    be a plain ``AttentionBridge`` with linear ``q``/``k``/``v``/``o`` projections)."""
    emulated = _ON.setdefault(bridge, {})
    if not on:
        for handle in reversed(emulated.pop(flag, [])):
            handle.remove()
        if bool(getattr(bridge.cfg, flag, False)):
            getattr(bridge, "set_" + flag)(False)
        return
    if flag not in EMULATED or _native(bridge, flag):
        getattr(bridge, "set_" + flag)(True)
        return
    if flag in emulated:
        return
    handles: list[Any] = []
    try:
        for layer, block in enumerate(bridge.blocks):
            attn = _attention(block, layer, flag)
            if flag == "use_attn_result":
                handles.append(_result_fork(attn, bridge.cfg))
            else:
                handles += _input_forks(block, attn, bridge.cfg)
    except BaseException:
        for handle in reversed(handles):
            handle.remove()
        raise
    emulated[flag] = handles


def _native(bridge: nn.Module, flag: str) -> bool:
    """Whether the bridge honours the switch itself (every attention layer supports it)."""
    from transformer_lens.model_bridge.generalized_components.joint_qkv_attention import (
        JointQKVAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    for block in bridge.blocks:
        attn = block._modules.get("attn")
        if attn is None:
            continue
        if flag == "use_attn_result":
            if not getattr(attn, "supports_attn_result", False):
                return False
        elif not isinstance(attn, JointQKVAttentionBridge | PositionEmbeddingsAttentionBridge):
            return False
    return True


def _attention(block: nn.Module, layer: int, flag: str) -> nn.Module:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    attn = block._modules.get("attn")
    missing = [
        name
        for name in ("q", "k", "v", "o")
        if not _is_linear(getattr(getattr(attn, name, None), "original_component", None))
    ]
    if type(attn) is not AttentionBridge or missing:
        found = type(attn).__name__ if attn is not None else "no attention"
        raise InterpError(
            f"Block {layer} has {found}"
            + (f" without linear projections {missing}" if attn is not None and missing else "")
            + f", so {flag} (per-head attention outputs or inputs, which edge methods hook) "
            "cannot be provided. Supported: TransformerLens' GPT-2 and Llama attention bridges, "
            "and the plain AttentionBridge with linear q, k, v and o projections."
        )
    return attn


def _is_linear(module: Any) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _weight(linear: nn.Module) -> Tensor:
    """A projection's weight as (out, in), for ``nn.Linear`` and HF's ``Conv1D`` alike."""
    return linear.weight.T if type(linear).__name__ == "Conv1D" else linear.weight


def _replace_output(module: nn.Module, fn: Callable[[Tensor], Tensor]) -> Any:
    """A forward hook replacing the module's output with ``fn(its input)``."""

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor:
        return fn(args[0])

    return module.register_forward_hook(hook)


def _result_fork(attn: nn.Module, cfg: Any) -> Any:
    """``W_O`` applied head by head to ``z``; ``hook_result`` fires on the (batch, pos, head,
    d_model) result, whose sum over heads plus ``b_O`` is the projection's output."""
    o = attn.o.original_component
    n_heads, d_head = int(cfg.n_heads), int(cfg.d_head)

    def per_head(z: Tensor) -> Tensor:
        w = _weight(o).unflatten(1, (n_heads, d_head))  # (d_model, head, d_head)
        result = torch.einsum("bphe,mhe->bphm", z.unflatten(-1, (n_heads, d_head)), w)
        out = attn.hook_result(result).sum(-2)
        return out if o.bias is None else out + o.bias

    return _replace_output(o, per_head)


def _input_forks(block: nn.Module, attn: nn.Module, cfg: Any) -> list[Any]:
    """The pre-``ln1`` residual forked per head for each of ``q``, ``k``, ``v``: each copy fires
    that input's hook, is normalised by ``ln1`` and projected by its own head's rows."""
    ln1 = getattr(block, "ln1", None)
    norm = getattr(ln1, "original_component", None)
    if ln1 is None or norm is None:
        raise InterpError(
            "use_split_qkv_input needs the residual entering ln1, and this block has no ln1 "
            "bridge; per-head attention inputs cannot be provided."
        )
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    captured: list[Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured[:] = [args[0]]

    def release(module: nn.Module, args: Any, out: Any) -> None:
        captured.clear()  # the residual is part of the autograd graph: do not keep it

    def fork(name: str, heads: int) -> Callable[[Tensor], Tensor]:
        linear, hook = getattr(attn, name).original_component, getattr(attn, f"hook_{name}_input")

        def forked(x: Tensor) -> Tensor:
            if not captured:
                raise InterpError(
                    f"The attention's {name} projection ran without the block's ln1 before it; "
                    "per-head attention inputs cannot be provided for this block."
                )
            resid = captured[0]
            copies = hook(resid[:, :, None].repeat(1, 1, heads, 1))
            normed = norm(copies.flatten(0, 2)).view_as(copies)
            w = _weight(linear).unflatten(0, (heads, -1))  # (head, d_head, d_model)
            out = torch.einsum("bphm,hem->bphe", normed, w)
            if linear.bias is not None:
                out = out + linear.bias.unflatten(0, (heads, -1))
            return out.flatten(-2)

        return forked

    handles = [ln1.register_forward_pre_hook(capture), attn.register_forward_hook(release)]
    for name, heads in (("q", n_heads), ("k", n_kv), ("v", n_kv)):
        handles.append(_replace_output(getattr(attn, name).original_component, fork(name, heads)))
    return handles
