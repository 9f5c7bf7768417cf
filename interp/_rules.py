"""Gradient rule sets for transformers: the LRP rules of RelP and AttnLRP as hooks that keep
every forward value and change only the backward pass.

With a rule set installed, the gradient of a metric at an activation is the LRP propagation
coefficient rho, and ``activation * rho`` is its relevance (gradient x input form, Arras et al.
2025). Each rule is the "detach" rewrite of one operation:

==============  ===================================================================
``ln``          normalisers treat their scale as a constant: ``x / scale.detach()``
``identity``    elementwise activations pass ``f(x)/x``: ``x * (f(x)/x).detach()``
``half``        both factors of a gated product get half: ``y/2 + (y/2).detach()``
``ah``          attention weights are constants (CP-LRP): ``pattern.detach()``
``attnlrp``     q and k gradients quartered, v halved (half at A.V, half again at QK^T)
``epsilon``     LRP-epsilon at the blocks' linear layers: gradient times z / (z + eps sign z)
==============  ===================================================================

Named sets (:data:`~interp.RULE_SETS`): ``relp`` (LN, Identity, Half: the official RelP
code's default), ``relp-ah`` (adds the AH rule), ``attnlrp`` (LN, Identity, Half and the AttnLRP
attention split), ``relp-eps`` (RelP with the epsilon rule).

On the TransformerLens 4 bridge every rule sits on a hook that is on the compute path for
GPT-2 and Llama blocks (checked by the tests, which also check conservation:
``sum(resid * rho)`` equals the metric at every layer once attention is linearised).

To add a rule: a :class:`~interp.Rule` subclass decorated with :func:`~interp.register_rule`
and, if it belongs in a named set, one :func:`~interp.register_composite` call (see
:class:`BlockEpsilon` at the end of this file).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InterpError
from ._rule_core import (
    RULE_SETS,
    STABILIZER,
    Composite,
    Rule,
    RuleHandles,
    blocks,
    epsilon_rule,
    gain,
    keep_forward,
    norm_hook,
    register_composite,
    register_rule,
    scaled_gradient,
    stabilize,
)

__all__ = ["RULE_SETS", "gradient_rules", "stabilize"]


def gradient_rules(
    model: Any, rules: str | Composite | tuple[str | Rule, ...] = "relp", **options: Any
) -> AbstractContextManager[Any]:
    """Install a rule set on a :class:`~interp.TransformerModel` while the context is open.

    Parameters
    ----------
    model : TransformerModel
    rules : str, Composite or tuple of str / Rule
        A named set from :data:`~interp.RULE_SETS` (``relp``, ``relp-ah``, ``attnlrp``,
        ``relp-eps``), a :class:`~interp.Composite`, or rules by name (``ln``, ``identity``,
        ``half``, ``ah``, ``attnlrp``, ``epsilon``) or as objects.
    **options
        Rule options, e.g. ``epsilon=0.1`` for the epsilon rule.

    Returns
    -------
    context manager
        Every hook it added is gone when it exits, also after an exception.

    Raises
    ------
    InterpError
        For an unknown set or rule (with close matches), two rules that define the same part
        (``ah`` and ``attnlrp``), an unknown option, or a model that is not a transformer.

    Examples
    --------
    >>> model = load_model("tiny-llama")
    >>> with gradient_rules(model, "relp-ah"):
    ...     run = model.run_with_grads(PROMPT, lambda lg: lg[0, -1, 5], ["r1.pre"])
    >>> with gradient_rules(model, "relp-eps", epsilon=0.1):
    ...     run = model.run_with_grads(PROMPT, lambda lg: lg[0, -1, 5], ["m1.post"])
    """
    if getattr(model, "bridge", None) is None:
        raise InterpError(
            "gradient_rules takes a TransformerModel (from interp.load_model); got "
            f"{type(model).__name__}. For a plain torch module use lrp_rules or frozen_gains."
        )
    return RULE_SETS.resolve(rules, **options).context(model)


def _activation(bridge: nn.Module) -> Callable[[Tensor], Tensor]:
    """The MLP's activation function, named by the Hugging Face config (or, for a
    ``boot_native`` bridge, which has none, by the bridge's own ``cfg.act_fn``)."""
    original = getattr(bridge, "original_model", None)
    config = getattr(original, "config", None)
    name = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    name = name or getattr(getattr(bridge, "cfg", None), "act_fn", None)
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise InterpError(f"No identity rule for the activation {name!r}.")
    return ACT2FN[name]


def _gated(model: Any) -> bool:
    return "blocks.0.mlp.hook_pre_linear" in model.bridge.hook_dict


@register_rule
@dataclass(frozen=True)
class LNRule(Rule):
    """LN rule: every LayerNorm / RMSNorm scale is a constant (Ali et al. 2022)."""

    name = "ln"
    kind = "transformer"
    claims = frozenset({"norms"})

    def register(self, model: Any, handles: RuleHandles) -> None:
        for name in blocks(model, "ln1.hook_scale", "ln2.hook_scale") + ["ln_final.hook_scale"]:
            handles.hook_point(model, name, torch.Tensor.detach)
        # With split q/k/v inputs the bridge normalises each head's fork by calling the raw HF
        # norm module, past hook_scale: patch that module's output too.
        for block in model.bridge.blocks:
            norm = getattr(getattr(block, "ln1", None), "original_component", None)
            if norm is not None:
                handles.module_hook(norm, norm_hook)
        # the bridge warns on every edited normalisation scale; the edit is intended
        handles.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*hook_scale.*")


@register_rule
@dataclass(frozen=True)
class IdentityRule(Rule):
    """Identity rule: the MLP activation passes its gain ``f(x)/x`` (Jafari et al. 2024).

    The hidden activation is rebuilt at ``mlp.hook_post`` from the projections' outputs, kept
    by hooks on the projection modules (so they are the tensors the MLP really uses, after any
    site hooks): the bridge may compute the activation itself, past any module hook.
    """

    name = "identity"
    kind = "transformer"
    claims = frozenset({"activations"})
    stabilizer: float = STABILIZER

    def register(self, model: Any, handles: RuleHandles) -> None:
        act, gated = _activation(model.bridge), _gated(model)
        for layer, block in enumerate(model.bridge.blocks):
            mlp, seen = block.mlp, {}
            handles.module_hook(mlp.gate if gated else getattr(mlp, "in"), _keep(seen, "pre"))
            if gated:
                handles.module_hook(getattr(mlp, "in"), _keep(seen, "linear"))
            # first at hook_post, so that the Half rule scales the rebuilt product
            rebuild = self._rebuild(seen, act, gated)
            handles.hook_point(model, f"blocks.{layer}.mlp.hook_post", rebuild, prepend=True)

    def _rebuild(
        self, seen: dict[str, Tensor], act: Callable[[Tensor], Tensor], gated: bool
    ) -> Callable[[Tensor], Tensor]:
        def rebuild(post: Tensor) -> Tensor:
            g = seen.pop("pre")
            hidden = gain(g, act(g), self.stabilizer)
            return keep_forward(post, hidden * seen.pop("linear") if gated else hidden)

        return rebuild


def _keep(seen: dict[str, Tensor], key: str) -> Callable[..., None]:
    def store(module: nn.Module, args: Any, out: Tensor) -> None:
        seen[key] = out

    return store


@register_rule
@dataclass(frozen=True)
class HalfRule(Rule):
    """Half rule: both factors of a gated MLP's product get half the gradient (Arras et al.
    2019); nothing to do on an MLP without a gate."""

    name = "half"
    kind = "transformer"
    claims = frozenset({"gated products"})

    def register(self, model: Any, handles: RuleHandles) -> None:
        if _gated(model):
            for name in blocks(model, "mlp.hook_post"):
                handles.hook_point(model, name, lambda x: scaled_gradient(x, 0.5))


@register_rule
@dataclass(frozen=True)
class AHRule(Rule):
    """AH rule (CP-LRP, Ali et al. 2022): attention weights are constants, so relevance flows
    only through the values."""

    name = "ah"
    kind = "transformer"
    claims = frozenset({"attention"})

    def register(self, model: Any, handles: RuleHandles) -> None:
        for name in blocks(model, "attn.hook_pattern"):
            handles.hook_point(model, name, torch.Tensor.detach)


@register_rule
@dataclass(frozen=True)
class AttnLRPRule(Rule):
    """AttnLRP's attention rule (Achtibat et al. 2024): the uniform rule at both bilinear
    products, placed downstream of q, k and v so that their own sites see the modified
    gradient: halving at z = A.V gives A and V half each; halving again at the scores = QK^T
    gives q and k a quarter."""

    name = "attnlrp"
    kind = "transformer"
    claims = frozenset({"attention"})

    def register(self, model: Any, handles: RuleHandles) -> None:
        for name in blocks(model, "attn.hook_z", "attn.hook_attn_scores"):
            handles.hook_point(model, name, lambda x: scaled_gradient(x, 0.5))


register_composite(
    "relp",
    ("ln", "identity", "half"),
    description="LN, Identity and Half rules: the official RelP default",
)
register_composite(
    "relp-ah",
    ("ln", "identity", "half", "ah"),
    description="RelP with the AH rule too (attention weights constant, CP-LRP)",
)
register_composite(
    "attnlrp",
    ("ln", "identity", "half", "attnlrp"),
    description="LN, Identity, Half and AttnLRP's attention rule (q, k gradients / 4, v / 2)",
)


@register_rule
@dataclass(frozen=True)
class BlockEpsilon(Rule):
    """LRP-epsilon at the linear layers of every block: each output gradient is multiplied by
    ``z / (z + epsilon sign z)``, so a layer hands ``R_i = x_i w_ij R_j / (z_j + eps sign z_j)``
    to its inputs and absorbs the relevance of outputs near zero.

    The layers are those that neither the attention nor the gate rules define: the attention
    output projection W_O (at ``hook_attn_out``, which is also the sum of the per-head results
    when those are hooked) and the MLP projections W_in, W_gate (gated MLPs) and W_out. Not
    W_Q, W_K, W_V: their relevance is the attention rules' business. ``z`` includes the bias.
    """

    name = "epsilon"
    kind = "transformer"
    claims = frozenset({"linear layers"})
    epsilon: float = 0.01

    def register(self, model: Any, handles: RuleHandles) -> None:
        outputs = ("hook_attn_out", "mlp.hook_pre", "hook_mlp_out")
        outputs += ("mlp.hook_pre_linear",) if _gated(model) else ()
        for name in blocks(model, *outputs):
            handles.hook_point(model, name, lambda z: epsilon_rule(z, self.epsilon))


register_composite(
    "relp-eps",
    ("ln", "identity", "half", "epsilon"),
    description="RelP with LRP-epsilon (0.01) at the blocks' linear layers W_O, W_in, W_out",
)
