"""Layer-wise relevance propagation for plain torch models (MLPs, CNNs).

The same trick as the transformer rule sets (:mod:`interp._rules`): forward hooks keep every
forward value and change the backward pass so that ``input * gradient`` is the LRP relevance.

Rules (zennit's names):

- ``epsilon`` for ``Linear``/``Conv``: ``R_i = x_i w_ij R_j / (z_j + eps sign z_j)``; backward
  multiplies the output gradient by ``z / (z + eps sign z)``.
- ``zplus`` for ``Linear``/``Conv``: only positive weights carry relevance,
  ``R_i = x_i w+_ij R_j / sum_i x_i w+_ij`` (inputs must be non-negative, e.g. after a ReLU).
- pass-through for ReLU, max/avg pooling (their plain gradient already is), and for batch norm
  in eval mode (relevance goes through it unchanged).

Composites pick a rule per layer: ``epsilon`` (every layer), ``zplus`` (every layer but the
first, which takes epsilon since raw inputs can be negative), ``epsilon-plus`` (z+ for
convolutions, epsilon for dense layers and the first layer). Relevance is conserved up to what
biases absorb: ``sum(R_input) = f(x)[target]`` for bias-free networks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._errors import InterpError, ShapeError, did_you_mean
from ._rules import stabilize

__all__ = ["COMPOSITES", "lrp", "lrp_rules", "plot_relevance"]

COMPOSITES = ("epsilon", "zplus", "epsilon-plus")
_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _positive_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The module's linear map with its negative weights and bias removed."""
    w = module.weight.clamp(min=0)
    if isinstance(module, nn.Linear):
        return F.linear(x, w)
    conv = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}[type(module)]
    return conv(x, w, None, module.stride, module.padding, module.dilation, module.groups)


def _epsilon_hook(eps: float):
    def hook(module: nn.Module, args: tuple[Any, ...], z: Tensor) -> Tensor:
        ratio = (z / stabilize(z, eps)).detach()
        return z * ratio + (z * (1 - ratio)).detach()

    return hook


def _zplus_hook(eps: float):
    def hook(module: nn.Module, args: tuple[Any, ...], z: Tensor) -> Tensor:
        zp = _positive_forward(module, args[0])
        scale = (z / stabilize(zp, eps)).detach()
        return zp * scale + (z - zp * scale).detach()

    return hook


def _pass_through_hook(eps: float):
    def hook(module: nn.Module, args: tuple[Any, ...], y: Tensor) -> Tensor:
        x = args[0]
        surrogate = x * (y / stabilize(x, eps)).detach()
        return surrogate + (y - surrogate).detach()  # exact forward value

    return hook


@contextlib.contextmanager
def lrp_rules(
    model: nn.Module, composite: str = "epsilon-plus", *, epsilon: float = 1e-6
) -> Iterator[nn.Module]:
    """Install LRP rules on a plain torch model while the context is open.

    Parameters
    ----------
    model : nn.Module
        Must be in eval mode (batch norm uses its running statistics).
    composite : {"epsilon", "zplus", "epsilon-plus"}
    epsilon : float
        The epsilon rule's stabiliser.
    """
    if composite not in COMPOSITES:
        raise InterpError(
            f"Unknown LRP composite {composite!r}; known: {', '.join(COMPOSITES)}."
            + did_you_mean(composite, COMPOSITES)
        )
    if model.training:
        raise InterpError("LRP needs the model in eval mode: call model.eval() first.")
    weighted = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    if not weighted:
        raise InterpError("The model has no Linear or Conv layer to apply LRP rules to.")
    handles = []
    try:
        for i, module in enumerate(weighted):
            first = i == 0
            use_zplus = not first and (
                composite == "zplus"
                or (composite == "epsilon-plus" and not isinstance(module, nn.Linear))
            )
            hook = _zplus_hook(epsilon) if use_zplus else _epsilon_hook(epsilon)
            handles.append(module.register_forward_hook(hook))
        for module in model.modules():
            if isinstance(module, _NORMS):
                handles.append(module.register_forward_hook(_pass_through_hook(epsilon)))
        yield model
    finally:
        for handle in reversed(handles):
            handle.remove()


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
    """Heatmaps of input relevance (summed over channels), red positive, blue negative."""
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
