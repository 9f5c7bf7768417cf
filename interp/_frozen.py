"""Frozen gains for plain torch networks: every nonlinearity linearised at the current input.

Under :func:`frozen_gains` the forward pass is unchanged, but the backward (and forward-mode)
derivative of every smooth elementwise activation is its gain ``f(x)/x`` at the input it saw,
and every LayerNorm's scale is a constant. ReLU-like units, max pooling and everything affine
already differentiate to their on/off masks, their argmax selection and themselves. So the
derivative of the network at ``x0`` *is* the matrix ``A(x0)`` of the linear interpreter
``f(x) ~ A(x0) x + c(x0)`` with ``A(x0) x0 + c(x0) = f(x0)`` (LinearScope), and
``x0 * A(x0)[k]`` is the Identity/LN-rule relevance of RelP: one mechanism for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import InterpError
from ._rules import stabilize

__all__ = ["SMOOTH_ACTIVATIONS", "LINEAR_AT_A_POINT", "check_linearisable", "frozen_gains"]

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


def check_linearisable(model: nn.Module) -> None:
    """Raise an error naming the first leaf module whose linear interpretation is not known.

    Examples
    --------
    >>> check_linearisable(nn.Sequential(nn.Linear(3, 3), nn.Softmax(-1)))
    Traceback (most recent call last):
    ...
    interp._errors.InterpError: Cannot linearise module '1' of type Softmax: ...
    """
    known = LINEAR_AT_A_POINT + SMOOTH_ACTIVATIONS + (nn.LayerNorm,)
    for name, module in model.named_modules():
        if next(module.children(), None) is None and not isinstance(module, known):
            raise InterpError(
                f"Cannot linearise module {name or '<root>'!r} of type {type(module).__name__}: "
                "its linear interpretation at x0 is not known. Supported leaves: affine layers, "
                "batch norm (eval), ReLU-like units, pooling, LayerNorm and the smooth "
                f"activations {', '.join(t.__name__ for t in SMOOTH_ACTIVATIONS)}."
            )


def _gain_hook(module: nn.Module, args: tuple[Any, ...], y: Tensor) -> Tensor:
    x = args[0]
    # the smallest nudge away from 0 that the dtype resolves: gains stay exact elsewhere
    surrogate = x * (y / stabilize(x, torch.finfo(x.dtype).eps)).detach()
    return surrogate + (y - surrogate).detach()  # exact forward value


def _layer_norm_hook(module: nn.LayerNorm, args: tuple[Any, ...], y: Tensor) -> Tensor:
    x = args[0]
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dims, keepdim=True)
    scale = torch.rsqrt(centred.pow(2).mean(dims, keepdim=True) + module.eps)
    out = centred * scale.detach()
    if module.weight is not None:
        out = out * module.weight
    if module.bias is not None:
        out = out + module.bias
    return out + (y - out).detach()


@contextlib.contextmanager
def frozen_gains(model: nn.Module) -> Iterator[nn.Module]:
    """Make the model's derivative at any input that of its frozen-gain linearisation."""
    handles = []
    try:
        for module in model.modules():
            if isinstance(module, SMOOTH_ACTIVATIONS):
                handles.append(module.register_forward_hook(_gain_hook))
            elif isinstance(module, nn.LayerNorm):
                handles.append(module.register_forward_hook(_layer_norm_hook))
        yield model
    finally:
        for handle in reversed(handles):
            handle.remove()
