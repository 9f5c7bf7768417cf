"""Frozen gains for plain torch networks: every nonlinearity linearised at the current input.

Under :func:`frozen_gains` the forward pass is unchanged, but the backward (and forward-mode)
derivative of every smooth elementwise activation is its gain ``f(x)/x`` at the input it saw,
and every LayerNorm's (RMSNorm's) scale is a constant. ReLU-like units, max pooling and
everything affine already differentiate to their on/off masks, their argmax selection and
themselves. So the derivative of the network at ``x0`` *is* the matrix ``A(x0)`` of the linear
interpreter ``f(x) ~ A(x0) x + c(x0)`` with ``A(x0) x0 + c(x0) = f(x0)`` (LinearScope), and
``x0 * A(x0)[k]`` is the Identity/LN-rule relevance of RelP: one mechanism (the rules' shared
gain and norm rewrites) for both.

Smooth activations are caught where they are *computed*, as calls (``torch.tanh``,
``F.gelu``, ``x.sigmoid()``, ..., in-place forms too), not as modules: a ``forward`` that calls
``torch.tanh(self.lin(x))`` is linearised like ``nn.Tanh``. A
:class:`torch.overrides.TorchFunctionMode` rewrites those calls while one of the model's modules
runs, and leaves every other computation alone.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ._errors import InterpError
from ._rule_core import Composite, LayerRule, Rule, RuleHandles, gain, norm_hook, register_rule

__all__ = ["LINEAR_AT_A_POINT", "SMOOTH_ACTIVATIONS", "check_linearisable", "frozen_gains"]

SMOOTH_ACTIVATIONS = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.Mish,
    nn.CELU,
    nn.SELU,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
)


# leaf modules whose derivative already is their linear interpretation at any input: affine maps
# (batch norm in eval mode included), on/off masks and argmax selections
LINEAR_AT_A_POINT = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.ZeroPad2d,
    nn.ConstantPad2d,
)


NORMS = (nn.LayerNorm, nn.RMSNorm)


def check_linearisable(model: nn.Module) -> None:
    """Raise an error naming the first leaf module whose linear interpretation is not known.

    Examples
    --------
    >>> check_linearisable(nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)))
    Traceback (most recent call last):
    ...
    interp._errors.InterpError: Cannot linearise module '1' of type Softmax: ...
    """
    known = LINEAR_AT_A_POINT + SMOOTH_ACTIVATIONS + NORMS
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, known):
            raise InterpError(
                f"Cannot linearise module {name or '<root>'!r} of type {type(module).__name__}: "
                "its linear interpretation at x0 is not known. Supported leaves: affine layers, "
                "batch norm (eval), ReLU-like units, pooling, LayerNorm, RMSNorm and the smooth "
                f"activations {', '.join(t.__name__ for t in SMOOTH_ACTIVATIONS)}."
            )


def _smooth_functions() -> dict[Any, Any]:
    """Every way to call a smooth activation (function, method, in-place form), mapped to the
    out-of-place function that computes it."""
    forms: dict[Any, Any] = {torch.special.expit: torch.sigmoid}
    for name in ("tanh", "sigmoid"):
        plain = getattr(torch, name)
        for form in (plain, getattr(F, name), getattr(Tensor, name)):
            forms[form] = plain
        for form in (getattr(torch, name + "_"), getattr(Tensor, name + "_")):
            forms[form] = plain
    functional = ("gelu", "silu", "elu", "celu", "selu", "softplus", "mish", "hardtanh")
    for name in functional + ("hardsigmoid", "hardswish"):
        forms[getattr(F, name)] = getattr(F, name)
    for name in ("elu", "celu", "selu", "hardtanh"):  # F.elu_ and co.
        forms[getattr(F, name + "_")] = getattr(F, name)
    return forms


SMOOTH_FUNCTIONS = _smooth_functions()


@functools.cache
def _inplace_parameter(fn: Any) -> inspect.Signature | None:
    """The signature of a function with an ``inplace`` parameter (None for the others)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature have no such parameter
        return None
    return signature if "inplace" in signature.parameters else None


class _GainMode(TorchFunctionMode):
    """Rewrites calls of smooth activations into their gain form while ``depth > 0``."""

    def __init__(self, epsilon: float | None) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.depth = 0  # how many of the model's modules are running

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        plain = SMOOTH_FUNCTIONS.get(func) if self.depth > 0 else None
        if plain is None:
            return func(*args, **kwargs)
        inplace = func is not plain
        signature = _inplace_parameter(plain)
        if signature is not None:
            bound = signature.bind(*args, **kwargs)
            inplace = inplace or bool(bound.arguments.get("inplace", False))
            bound.arguments["inplace"] = False
            args, kwargs = bound.args, bound.kwargs
        x = args[0]
        eps = torch.finfo(x.dtype).eps if self.epsilon is None else self.epsilon
        if not inplace:
            return gain(x, plain(*args, **kwargs), eps)
        before = x.clone()  # the in-place write below must not touch what the gain reads
        return x.copy_(gain(before, plain(before, *args[1:], **kwargs), eps))


@register_rule
@dataclass(frozen=True)
class Gain(Rule):
    """Smooth activations called anywhere inside the model differentiate to their gain
    ``f(x)/x`` (the Identity rule for plain modules).

    ``epsilon`` keeps ``x = 0`` finite; ``None`` takes the smallest nudge the dtype resolves
    (``torch.finfo(dtype).eps``), so the gains stay exact elsewhere.
    """

    name = "gain"
    kind = "module"
    epsilon: float | None = None

    def register(self, model: nn.Module, handles: RuleHandles) -> None:
        mode = _GainMode(self.epsilon)

        def enter(module: nn.Module, args: Any) -> None:
            mode.depth += 1

        def leave(module: nn.Module, args: Any, out: Any) -> None:
            mode.depth -= 1

        for module in model.modules():
            handles.module_hook(module, enter, pre=True)
            handles.module_hook(module, leave, always_call=True)
        handles.enter_context(mode)


@register_rule
@dataclass(frozen=True)
class Norm(LayerRule):
    """LN rule for plain modules: each LayerNorm / RMSNorm scale is a constant."""

    name = "ln"
    layers: tuple[type[nn.Module], ...] = NORMS

    def hook(self, module: nn.Module, args: tuple[Any, ...], y: Tensor) -> Tensor:
        return norm_hook(module, args, y)


FROZEN_GAINS = Composite(
    "frozen-gains",
    (Norm(), Gain()),
    kind="module",
    description="every smooth activation's gain and every norm's scale frozen at the input",
)


def frozen_gains(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Make the model's derivative at any input that of its frozen-gain linearisation.

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    context manager
        Yields ``model``; forward values are unchanged inside, and everything is undone on
        exit.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False))
    >>> x0 = torch.randn(3)
    >>> with frozen_gains(net):
    ...     a = torch.autograd.functional.jacobian(net, x0)
    >>> torch.allclose(a @ x0, net(x0), atol=1e-6)  # no biases: A(x0) x0 = f(x0)
    True
    """
    if not isinstance(model, nn.Module):
        raise InterpError(f"frozen_gains takes a torch.nn.Module; got {type(model).__name__}.")
    return FROZEN_GAINS.context(model)
