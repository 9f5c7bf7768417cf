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
AttnLRP         q and k gradients quartered, v halved (half at A.V, half again at QK^T)
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
        for name in [
            f"blocks.{i}.{ln}.hook_scale" for i in range(n_layers) for ln in ("ln1", "ln2")
        ] + ["ln_final.hook_scale"]:
            hooks.append((name, lambda x: x.detach()))
    module_hooks: list[tuple[nn.Module, Callable[..., Any]]] = []
    if "identity" in names or "half" in names:
        act = _activation(bridge)
        for layer in range(n_layers):
            keeps, rebuild = _mlp_rules(
                bridge.blocks[layer].mlp,
                act,
                gated,
                identity="identity" in names,
                half="half" in names,
            )
            module_hooks += keeps
            hooks.append((f"blocks.{layer}.mlp.hook_post", rebuild))
    for layer in range(n_layers):
        if "ah" in names:
            hooks.append((f"blocks.{layer}.attn.hook_pattern", lambda x: x.detach()))
        if "attnlrp" in names:
            # Uniform rule at both bilinear products, placed downstream of q, k and v so that
            # their own sites see the modified gradient: halving at z = A.V gives A and V half
            # each; halving again at the scores = QK^T gives q and k a quarter.
            hooks.append((f"blocks.{layer}.attn.hook_z", lambda x: _scaled_gradient(x, 0.5)))
            hooks.append(
                (f"blocks.{layer}.attn.hook_attn_scores", lambda x: _scaled_gradient(x, 0.5))
            )
    added = []
    handles = []
    try:
        for module, fn in module_hooks:
            handles.append(module.register_forward_hook(fn))
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


def _mlp_rules(
    mlp: nn.Module, act: Callable[[Tensor], Tensor], gated: bool, *, identity: bool, half: bool
) -> tuple[list[tuple[nn.Module, Callable[..., Any]]], Callable[[Tensor], Tensor]]:
    """Hooks rewriting an MLP's hidden layer: keep the projections' outputs (as hooks on the
    projection modules, so they are the tensors the MLP really uses, after any site hooks),
    then rebuild the hidden activation at ``hook_post`` with the same forward value."""
    seen: dict[str, Tensor] = {}

    def keep(key: str) -> Callable[..., None]:
        def store(module: nn.Module, args: Any, out: Tensor) -> None:
            seen[key] = out

        return store

    def rebuild(post: Tensor) -> Tensor:
        g = seen.pop("pre")
        a = act(g)
        s = stabilize(g)
        a_g = s * (a / s).detach() if identity else a  # the activation, identity rule or not
        if not gated:
            out = a_g
        else:
            u = seen.pop("linear")
            # each factor of the gated product gets half of the gradient
            out = 0.5 * a_g * u.detach() + 0.5 * a.detach() * u if half else a_g * u
        return out + (post - out).detach()  # exact forward value

    if gated:
        keeps = [(mlp.gate, keep("pre")), (getattr(mlp, "in"), keep("linear"))]
    else:
        keeps = [(getattr(mlp, "in"), keep("pre"))]
    return keeps, rebuild
