"""Gradient rule sets: the LRP rules of RelP and AttnLRP as forward hooks that keep every
forward value and change only the backward pass.

With a rule set installed, the gradient of a metric at an activation is the LRP propagation
coefficient rho, and ``activation * rho`` is its relevance (gradient x input form, Arras et al.
2025). Each rule is the "detach" rewrite of one operation:

==============  ===================================================================
LN              normalisers treat their scale as a constant: ``x / scale.detach()``
Identity        elementwise activations pass ``f(x)/x``: ``x * (f(x)/x).detach()``
Half            both factors of a gated product get half: ``y/2 + (y/2).detach()``
AH (CP-LRP)     attention weights are constants: ``pattern.detach()``
AttnLRP         q and k gradients quartered, v halved (``x/4 + (3x/4).detach()`` ...)
==============  ===================================================================

Named sets: ``relp`` (LN, Identity, Half: the official RelP code's default), ``relp-ah`` (adds
the AH rule), ``attnlrp`` (LN, Identity, Half and the AttnLRP attention split).

On the TransformerLens 4 bridge every rule sits on a hook that is on the compute path for
GPT-2 and Llama blocks (checked by the tests, which also check conservation:
``sum(resid * rho)`` equals the metric at every layer once attention is linearised).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InterpError, did_you_mean

__all__ = ["RULE_SETS", "gradient_rules", "stabilize"]

RULE_SETS: dict[str, tuple[str, ...]] = {
    "relp": ("ln", "identity", "half"),
    "relp-ah": ("ln", "identity", "half", "ah"),
    "attnlrp": ("ln", "identity", "half", "attnlrp"),
}
STABILIZER = 1e-6


def stabilize(x: Tensor, eps: float = STABILIZER) -> Tensor:
    """``x`` pushed away from zero by ``eps`` in its own direction (zeros go to +eps)."""
    return x + ((x == 0).to(x.dtype) + torch.sign(x)) * eps


def _scaled_gradient(x: Tensor, factor: float) -> Tensor:
    """Forward ``x``; backward multiplies the gradient by ``factor``."""
    return x * factor + (x * (1 - factor)).detach()


def _activation(bridge: nn.Module) -> Callable[[Tensor], Tensor]:
    config = bridge.original_model.config
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise InterpError(f"No identity rule for the activation {name!r}.")
    return ACT2FN[name]


@contextlib.contextmanager
def gradient_rules(model: Any, rules: str | tuple[str, ...] = "relp") -> Iterator[None]:
    """Install a rule set on a :class:`~interp.TransformerModel` while the context is open.

    Parameters
    ----------
    model : TransformerModel
    rules : str or tuple of str
        A named set (``relp``, ``relp-ah``, ``attnlrp``) or rule names from
        ``ln``, ``identity``, ``half``, ``ah``, ``attnlrp``.

    Examples
    --------
    >>> model = load_model("tiny-llama")
    >>> with gradient_rules(model, "relp-ah"):
    ...     run = model.run_with_grads(PROMPT, lambda lg: lg[0, -1, 5], ["r1.pre"])
    """
    names = RULE_SETS.get(rules, rules) if isinstance(rules, str) else tuple(rules)
    if isinstance(names, str):
        raise InterpError(
            f"Unknown rule set {rules!r}; named sets: {', '.join(RULE_SETS)}."
            + did_you_mean(rules, RULE_SETS)
        )
    known = {"ln", "identity", "half", "ah", "attnlrp"}
    unknown = [r for r in names if r not in known]
    if unknown:
        raise InterpError(f"Unknown rules {unknown}; known: {sorted(known)}.")
    if "ah" in names and "attnlrp" in names:
        raise InterpError("The AH rule and AttnLRP both define attention; choose one.")
    bridge = model.bridge
    hooks: list[tuple[str, Callable[..., Any]]] = []
    n_layers = model.spec.n_layers
    gated = "blocks.0.mlp.hook_pre_linear" in bridge.hook_dict
    if "ln" in names:
        for name in [f"blocks.{i}.{ln}.hook_scale" for i in range(n_layers)
                     for ln in ("ln1", "ln2")] + ["ln_final.hook_scale"]:
            hooks.append((name, lambda x: x.detach()))
    if "identity" in names or "half" in names:
        act = _activation(bridge)
        for layer in range(n_layers):
            hooks += _mlp_rules(layer, act, gated, identity="identity" in names,
                                half="half" in names)
    for layer in range(n_layers):
        if "ah" in names:
            hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x: x.detach()))
        if "attnlrp" in names:
            rot = f"blocks.{layer}.attn.hook_rot_q" in bridge.hook_dict
            q, k = ("hook_rot_q", "hook_rot_k") if rot else ("hook_q", "hook_k")
            hooks.append((f"blocks.{layer}.attn.{q}", lambda x: _scaled_gradient(x, 0.25)))
            hooks.append((f"blocks.{layer}.attn.{k}", lambda x: _scaled_gradient(x, 0.25)))
            hooks.append((f"blocks.{layer}.attn.hook_v", lambda x: _scaled_gradient(x, 0.5)))
    added = []
    handles = []
    try:
        if "ln" in names:
            # With split q/k/v inputs the bridge normalises each head's fork by calling the
            # raw HF norm module, past hook_scale: patch that module's output too.
            for block in bridge.blocks:
                norm = getattr(getattr(block, "ln1", None), "original_component", None)
                if norm is not None:
                    handles.append(norm.register_forward_hook(_ln_rule_module))
        for name, fn in hooks:
            point = bridge.hook_dict.get(name)
            if point is None:
                raise InterpError(f"This architecture has no hook {name!r} for its rule.")
            # TransformerLens' own registration: its norm bridges only keep the graph of an
            # edited scale when the hook is listed in the hook point's fwd_hooks
            added.append((point, point.add_hook(lambda x, hook, fn=fn: fn(x), dir="fwd")))
        with warnings.catch_warnings():
            # the bridge warns on every edited normalisation scale; the edit is intended
            warnings.filterwarnings("ignore", message=".*hook_scale.*")
            yield
    finally:
        for handle in reversed(handles):
            handle.remove()
        for point, handle in reversed(added):
            handle.hook.remove()
            if handle in point.fwd_hooks:
                point.fwd_hooks.remove(handle)


def _ln_rule_module(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
    """LN rule on a raw HF LayerNorm / RMSNorm module: same output, scale as a constant."""
    x = args[0]
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if hasattr(module, "variance_epsilon"):  # RMSNorm
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        y = x * scale.detach()
    else:
        centred = x - x.mean(-1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + module.eps)
        y = centred * scale.detach()
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y + (out - y).detach()


def _mlp_rules(layer: int, act: Callable[[Tensor], Tensor], gated: bool, *, identity: bool,
               half: bool) -> list[tuple[str, Callable[[Tensor], Tensor]]]:
    """Hooks rewriting the MLP's hidden layer: remember its inputs, rebuild its output."""
    seen: dict[str, Tensor] = {}
    prefix = f"blocks.{layer}.mlp"

    def keep(key: str) -> Callable[[Tensor], None]:
        def store(x: Tensor) -> None:
            seen[key] = x

        return store

    def rebuild(post: Tensor) -> Tensor:
        g = seen.pop("pre")
        a = act(g)
        if not gated:
            if not identity:
                return post
            s = stabilize(g)
            return s * (post / s).detach()
        u = seen.pop("linear")
        s = stabilize(g)
        a_g = s * (a / s).detach() if identity else a  # the activation, identity rule or not
        if half:  # each factor gets half of the gradient
            out = 0.5 * a_g * u.detach() + 0.5 * a.detach() * u
        else:
            out = a_g * u
        return out + (post - out).detach()  # exact forward value

    hooks = [(f"{prefix}.hook_pre", keep("pre"))]
    if gated:
        hooks.append((f"{prefix}.hook_pre_linear", keep("linear")))
    hooks.append((f"{prefix}.hook_post", rebuild))
    return hooks
