"""Layer-wise relevance propagation for plain torch models (MLPs, CNNs).

The same trick as the transformer rule sets (:mod:`interp._rules`): forward hooks keep every
forward value and change the backward pass so that ``input * gradient`` is the LRP relevance.

Rules (zennit's names), each placed on layers of given types (``layers``) among all, the first
or the rest (``where``) of the model's Linear/Conv layers in module order:

- ``epsilon`` for ``Linear``/``Conv``: ``R_i = x_i w_ij R_j / (z_j + eps sign z_j)``; backward
  multiplies the output gradient by ``z / (z + eps sign z)``.
- ``zplus`` for ``Linear``/``Conv``: only positive weights carry relevance,
  ``R_i = x_i w+_ij R_j / sum_i x_i w+_ij`` (inputs must be non-negative, e.g. after a ReLU).
- ``pass-through`` for batch norm in eval mode: relevance goes through it unchanged (its gain
  ``f(x)/x``). ReLU, max and average pooling need no rule: their plain gradient already is.

Composites (:data:`~interp.COMPOSITES`) pick a rule per layer: ``epsilon`` (every layer),
``zplus`` (every layer but the first, which takes epsilon since raw inputs can be negative),
``epsilon-plus`` (z+ for convolutions, epsilon for dense layers and the first layer).
Relevance is conserved up to what biases absorb: ``sum(R_input) = f(x)[target]`` for bias-free
networks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import InterpError, ShapeError
from ._rule_core import (
    COMPOSITES,
    STABILIZER,
    WEIGHTED,
    Composite,
    LayerRule,
    epsilon_rule,
    gain,
    keep_forward,
    register_composite,
    register_rule,
    stabilize,
)

__all__ = ["COMPOSITES", "lrp", "lrp_rules", "plot_relevance"]

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class _StabilizedRule(LayerRule):
    """A layer rule with a stabiliser ``epsilon``, which :func:`lrp_rules` sets for all."""

    epsilon: float = STABILIZER


@register_rule
@dataclass(frozen=True)
class Epsilon(_StabilizedRule):
    """LRP-epsilon: the output gradient times ``z / (z + epsilon sign z)``."""

    name = "epsilon"

    def hook(self, module: nn.Module, args: tuple[Any, ...], z: Tensor) -> Tensor:
        return epsilon_rule(z, self.epsilon)


def _positive_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The module's linear map with its negative weights and bias removed."""
    w = module.weight.clamp(min=0)
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(module)]
    return conv(x, w, None, module.stride, module.padding, module.dilation, module.groups)


@register_rule
@dataclass(frozen=True)
class ZPlus(_StabilizedRule):
    """LRP-z+: relevance flows through the positive weights only (inputs must be >= 0)."""

    name = "zplus"

    def hook(self, module: nn.Module, args: tuple[Any, ...], z: Tensor) -> Tensor:
        zp = _positive_forward(module, args[0])
        return keep_forward(z, zp * (z / stabilize(zp, self.epsilon)).detach())


@register_rule
@dataclass(frozen=True)
class PassThrough(_StabilizedRule):
    """Relevance passes a layer unchanged: its derivative is the gain ``f(x)/x``."""

    name = "pass-through"
    layers: tuple[type[nn.Module], ...] = BATCH_NORMS

    def hook(self, module: nn.Module, args: tuple[Any, ...], y: Tensor) -> Tensor:
        return gain(args[0], y, self.epsilon)


register_composite(
    "epsilon",
    (Epsilon(), PassThrough()),
    kind="module",
    description="LRP-epsilon on every Linear/Conv layer",
)
register_composite(
    "zplus",
    (Epsilon(where="first"), ZPlus(where="rest"), PassThrough()),
    kind="module",
    description="z+ on every Linear/Conv layer but the first, which takes epsilon",
)
register_composite(
    "epsilon-plus",
    (
        Epsilon(where="first"),
        Epsilon(layers=(nn.Linear,), where="rest"),
        ZPlus(layers=CONVOLUTIONS, where="rest"),
        PassThrough(),
    ),
    kind="module",
    description="z+ on convolutions, epsilon on dense layers and on the first layer",
)


def lrp_rules(
    model: nn.Module, composite: str | Composite = "epsilon-plus", *, epsilon: float = 1e-6
) -> AbstractContextManager[nn.Module]:
    """Install LRP rules on a plain torch model while the context is open.

    Parameters
    ----------
    model : nn.Module
        Must be in eval mode (batch norm uses its running statistics).
    composite : str or Composite
        A name from :data:`~interp.COMPOSITES` (``epsilon``, ``zplus``, ``epsilon-plus``) or a
        :class:`~interp.Composite` of kind ``"module"``.
    epsilon : float
        The epsilon rule's stabiliser (and the other rules' guard against division by zero).

    Returns
    -------
    context manager
        Yields ``model``; every hook it added is gone when it exits.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> x = torch.randn(2, 4, requires_grad=True)
    >>> with lrp_rules(net, "epsilon"):
    ...     net(x)[:, 1].sum().backward()
    >>> relevance = x * x.grad
    """
    chosen = COMPOSITES.resolve(composite, epsilon=epsilon)
    if not isinstance(model, nn.Module):
        raise InterpError(f"lrp_rules takes a torch.nn.Module; got {type(model).__name__}.")
    if model.training:
        raise InterpError("LRP needs the model in eval mode: call model.eval() first.")
    if not any(isinstance(m, WEIGHTED) for m in model.modules()):
        raise InterpError("The model has no Linear or Conv layer to apply LRP rules to.")
    return chosen.context(model)


def lrp(
    model: nn.Module,
    x: Tensor,
    target: int | Tensor | None = None,
    *,
    composite: str = "epsilon-plus",
    epsilon: float = 1e-6,
) -> Tensor:
    """Relevance of every input element for the model's output ``target``.

    Parameters
    ----------
    model : nn.Module
    x : Tensor of shape (batch, ...)
    target : int or Tensor of shape (batch,), optional
        The output explained for each example (default: the predicted class).
    composite, epsilon
        See :func:`lrp_rules`.

    Returns
    -------
    Tensor of the shape of ``x``; per example it sums to the explained output (up to biases).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> relevance = lrp(net, torch.randn(2, 4), target=1)
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ShapeError("lrp explains a floating-point input tensor of shape (batch, ...).")
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), lrp_rules(model, composite, epsilon=epsilon):
        out = model(x)
        if out.ndim != 2:
            raise ShapeError(
                f"lrp explains outputs of shape (batch, classes); got {tuple(out.shape)}."
            )
        if target is None:
            target = out.argmax(-1)
        target = torch.as_tensor(target, device=out.device).expand(out.shape[0])
        if int(target.max()) >= out.shape[1] or int(target.min()) < 0:
            raise ShapeError(
                f"target must be a class in 0..{out.shape[1] - 1}; got {target.tolist()}."
            )
        chosen = out.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, [x])
    return (x * grad).detach()


def plot_relevance(
    relevance: Tensor, images: Tensor | None = None, *, ncols: int = 8, path: Any = None
) -> Any:
    """Heatmaps of input relevance (summed over channels), red positive, blue negative.

    Parameters
    ----------
    relevance : Tensor of shape (n, height, width) or (n, channels, height, width)
    images : Tensor of shape (n, [channels,] height, width), optional
        Shown in grey above each heatmap.
    ncols : int
        Heatmaps per row.
    path : str or path, optional
        Where to save the figure.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    >>> x = torch.rand(2, 1, 8, 8)
    >>> fig = plot_relevance(lrp(net, x), x)
    """
    import matplotlib.pyplot as plt

    r = relevance.detach()
    if r.ndim == 4:
        r = r.sum(1)
    n = r.shape[0]
    rows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(
        rows * (2 if images is not None else 1),
        min(n, ncols),
        figsize=(1.4 * min(n, ncols), 1.5 * rows * (2 if images is not None else 1)),
        squeeze=False,
    )
    for i in range(n):
        row, col = divmod(i, ncols)
        if images is not None:
            img = images[i].detach()
            img = img[0] if img.ndim == 3 else img
            axes[2 * row][col].imshow(img, cmap="gray")
            axes[2 * row][col].set_axis_off()
            ax = axes[2 * row + 1][col]
        else:
            ax = axes[row][col]
        bound = float(r[i].abs().max()) or 1.0
        ax.imshow(r[i], cmap="bwr", vmin=-bound, vmax=bound)
        ax.set_axis_off()
    for ax in axes.flat:
        if not ax.images:
            ax.set_axis_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
