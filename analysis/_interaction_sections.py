"""Sections with folded biases: the pieces of a network that :class:`InteractionBasis` reads.

Conventions (those of the reference implementation ``rib``):

- **Node layers** are the inputs of the network's sections: for an ``nn.Sequential`` MLP, layer 0
  is the input, layer ``l`` the input of the ``l``-th ``Linear`` and the last layer the output.
- **Biases are folded**: every node layer but the output gets a trailing constant 1, and each
  section multiplies its bias by that entry, so a ReLU section is positively 1-homogeneous.

:func:`transformer_mlp` cuts one transformer block's MLP into such sections.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from interp import InterpError, ShapeError

from ._base import check_matrix

__all__ = ["fold_sections", "transformer_mlp"]

Section = Callable[[Tensor], Tensor]
F64 = torch.float64
# smallest constant entry a perspective section accepts (c h(f / c) divides by it)
MIN_CONSTANT = 1e-6


def _parameter_free(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is None


def _split_sequential(model: nn.Sequential) -> list[tuple[nn.Linear, nn.Module]]:
    """(Linear, the parameter-free modules after it) for every Linear of an MLP."""
    groups: list[list[nn.Module]] = []
    for i, module in enumerate(model.children()):
        if isinstance(module, nn.Linear):
            groups.append([module])
        elif not _parameter_free(module):
            raise InterpError(
                f"Module {i} ({type(module).__name__}) has parameters but is not a Linear; an "
                "nn.Sequential model must be Linear layers and parameter-free activations. "
                "Pass a list of section callables instead."
            )
        elif not groups:
            raise InterpError(
                f"Module {i} ({type(module).__name__}) comes before the first Linear; the first "
                "module must be a Linear (flatten the inputs yourself, e.g. x.reshape(len(x), -1))."
            )
        else:
            groups[-1].append(module)
    if not groups:
        raise InterpError("The nn.Sequential model has no Linear layer.")
    return [(g[0], nn.Sequential(*g[1:])) for g in groups]


class _FoldedLinear:
    """``[f, c] -> [act(f W^T + c b), c]``: a Linear section with its bias folded.

    ``n_params`` and ``has_bias`` describe the original ``Linear`` (a missing bias is folded as
    zeros, but the layer does not read the constant unit: the degeneracy bounds need to know)."""

    def __init__(self, linear: nn.Linear, rest: nn.Module, last: bool) -> None:
        self.weight = linear.weight.detach().to(F64)
        bias = linear.bias
        self.has_bias = bias is not None
        self.n_params = sum(p.numel() for p in linear.parameters())
        self.bias = (
            torch.zeros(len(self.weight), dtype=F64) if bias is None else bias.detach().to(F64)
        )
        self.rest = copy.deepcopy(rest).to(F64).eval()
        self.last = last
        self.width = self.weight.shape[1]

    def pre(self, f: Tensor) -> Tensor:
        return f[:, :-1] @ self.weight.T + f[:, -1:] * self.bias

    def post(self, p: Tensor, c: Tensor) -> Tensor:
        """The section's output from its pre-activations ``p`` and constant entries ``c``."""
        out = self.rest(p)
        return out if self.last else torch.cat([out, c], dim=1)

    def __call__(self, f: Tensor) -> Tensor:
        return self.post(self.pre(f), f[:, -1:])


class _FoldedCallable:
    """``[f, c] -> [c h(f / c), c]``: the perspective of a section, which folds any bias.

    At ``c = 1`` it is ``h`` itself; for affine maps followed by ReLU it equals the explicit
    folding of :class:`_FoldedLinear` for ``c > 0`` (both are 1-homogeneous in ``[f, c]``). It
    divides by ``c`` and is not that folding for ``c < 0``, so a constant entry at or below
    ``MIN_CONSTANT`` (an ablation of an uncentred basis can cause one) raises :class:`InterpError`.
    """

    def __init__(self, fn: Section, last: bool) -> None:
        if isinstance(fn, nn.Module):
            fn = copy.deepcopy(fn).to(F64).eval().requires_grad_(False)
        self.fn = fn
        self.last = last
        self.width = None

    def __call__(self, f: Tensor) -> Tensor:
        c = f[:, -1:]
        if len(c) and bool((c <= MIN_CONSTANT).any()):
            raise InterpError(
                f"A section given as a callable got a constant (bias) entry of "
                f"{float(c.min()):.3g}; its bias is folded through the perspective c h(f / c), "
                f"which needs c > {MIN_CONSTANT:g}. Ablating directions of an uncentred basis "
                "moves the constant: fit with centre=True (the constant direction is then never "
                "ablated), or pass nn.Linear / nn.Sequential sections, which fold their bias "
                "explicitly."
            )
        out = c * self.fn(f[:, :-1] / c)
        return out if self.last else torch.cat([out, c], dim=1)


def fold_sections(model: nn.Module | Sequence[Section]) -> list[Section]:
    """The sections of ``model`` with biases folded, in float64.

    Parameters
    ----------
    model : nn.Sequential or sequence of callables
        An MLP (``Linear`` layers and parameter-free activations; it is split before every
        ``Linear``), or the sections themselves, each mapping a batch of one node layer's
        activations (B, d_l) to the next (B, d_{l+1}). A section that is a ``Linear`` or an
        ``nn.Sequential`` starting with one is folded explicitly; any other callable through its
        perspective ``c h(f / c)`` (exact for ReLU/affine sections, and at ``c = 1`` always).

    Returns
    -------
    list of callables
        Each maps (B, d_l + 1) to (B, d_{l+1} + 1), carrying the constant last entry through;
        the last one maps to the output (no constant).

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    >>> sections = fold_sections(net)
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> h = sections[0](torch.cat([x, torch.ones(5, 1, dtype=torch.float64)], 1))
    >>> bool(torch.allclose(sections[1](h), net(x)))
    True
    """
    if isinstance(model, nn.Sequential) and all(
        isinstance(m, nn.Linear) or _parameter_free(m) for m in model.children()
    ):
        pairs = _split_sequential(model)
        return [
            _FoldedLinear(lin, rest, i == len(pairs) - 1) for i, (lin, rest) in enumerate(pairs)
        ]
    if isinstance(model, nn.Module) or not isinstance(model, Sequence) or not len(model):
        raise InterpError(
            "model must be an nn.Sequential MLP (Linear layers and parameter-free activations) "
            f"or a non-empty list of section callables; got {type(model).__name__}."
        )
    folded: list[Section] = []
    for i, fn in enumerate(model):
        last = i == len(model) - 1
        if not callable(fn):
            raise InterpError(f"Section {i} is not callable; got {type(fn).__name__}.")
        if isinstance(fn, nn.Linear):
            folded.append(_FoldedLinear(fn, nn.Identity(), last))
        elif (
            isinstance(fn, nn.Sequential)
            and len(fn)
            and isinstance(fn[0], nn.Linear)
            and all(_parameter_free(m) for m in list(fn)[1:])
        ):
            folded.append(_FoldedLinear(fn[0], nn.Sequential(*list(fn)[1:]), last))
        else:
            folded.append(_FoldedCallable(fn, last))
    return folded


def _fold_model_and_data(
    model: nn.Module | Sequence[Section], x: Any
) -> tuple[list[Section], Tensor]:
    """The folded sections of ``model`` (:func:`fold_sections`) and ``x`` checked as their
    float64 inputs (N >= 2 rows, as many columns as the first section reads when it is known).

    The one normalisation of what :class:`~analysis.InteractionBasis` and
    :func:`~analysis.degeneracy_report` accept."""
    x = check_matrix(x, "x", dtype=F64, min_rows=2)
    sections = fold_sections(model)
    width = getattr(sections[0], "width", None)
    if width is not None and x.shape[1] != width:
        raise ShapeError(
            f"x has {x.shape[1]} features but the first layer of the model reads {width}; "
            "pass the inputs of the first Linear."
        )
    return sections, x


def _ones(n: int) -> Tensor:
    return torch.ones(n, 1, dtype=F64)


def _with_one(a: Tensor) -> Tensor:
    return torch.cat([a, _ones(len(a))], dim=1)


def _compose(fns: Sequence[Section]) -> Section:
    def run(f: Tensor) -> Tensor:
        for fn in fns:
            f = fn(f)
        return f

    return run


def _forward(sections: Sequence[Section], x: Tensor) -> list[Tensor]:
    """Folded activations ``[f, 1]`` of every node layer for inputs ``x`` (the output: ``f``)."""
    with torch.no_grad():
        f = _with_one(x)
        acts = [f]
        for section in sections:
            f = section(f)
            acts.append(f)
    return acts


# -- transformer MLP sites ----------------------------------------------------------------------


class _MLPHidden(nn.Module):
    """``m{L}.in -> m{L}.post``: the block's MLP norm, input projection and activation."""

    def __init__(self, norm: nn.Module, up: nn.Module, act: Callable, gate: nn.Module | None):
        super().__init__()
        self.norm, self.up, self.gate = norm, up, gate
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)
        if self.gate is None:
            return self.act(self.up(h))
        return self.act(self.gate(h)) * self.up(h)


class _WithResidual(nn.Module):
    """``r -> [r, hidden(r)]`` (concatenated node layer) or ``[r, h] -> r + out(h)``."""

    def __init__(self, inner: nn.Module, d_model: int, into: bool) -> None:
        super().__init__()
        self.inner, self.d_model, self.into = inner, d_model, into

    def forward(self, x: Tensor) -> Tensor:
        if self.into:
            return torch.cat([x, self.inner(x)], dim=-1)
        return x[:, : self.d_model] + self.inner(x[:, self.d_model :])


def transformer_mlp(
    model: Any, prompts: Any, layer: int, *, residual: bool = False
) -> tuple[list[nn.Module], Tensor, list[str]]:
    """The MLP of one transformer block as sections for :meth:`InteractionBasis.fit`.

    Parameters
    ----------
    model : TransformerModel
        A loaded model (``interp.load_model``); GPT-2 style (``act(W_in x)``) and gated
        (``act(W_gate x) * W_in x``) MLPs after a norm, in sequential blocks.
    prompts : str or list of str or token tensor
        The data set: every (prompt, position) pair is one data point.
    layer : int
        The block.
    residual : bool
        ``False``: node layers ``m{L}.in`` (the MLP's input, before its norm), ``m{L}.post``
        (the hidden layer) and ``m{L}`` (the MLP's output). ``True``: the residual stream
        around the MLP, ``r{L}.mid``, then ``r{L}.mid`` and ``m{L}.post`` concatenated, then
        ``r{L}.post`` (the skip connection passes through the middle node layer).

    Returns
    -------
    sections : list of nn.Module
        Two sections (float64 copies of the model's modules), checked against the model's own
        activations at the sites on ``prompts``.
    x : tensor (prompts * positions, d_model), float64
        The first node layer's activations, one row per (prompt, position).
    sites : list of str
        The node layers' site names.

    Examples
    --------
    >>> from interp import load_model
    >>> sections, x, sites = transformer_mlp(load_model("tiny-gpt2"), ["Mary and John"], 0)
    >>> sites, tuple(x.shape)
    (['m0.in', 'm0.post', 'm0'], (4, 64))
    """
    spec = getattr(model, "spec", None)
    if spec is None or not hasattr(model, "bridge"):
        raise InterpError(
            f"transformer_mlp needs a loaded transformer (interp.load_model); got "
            f"{type(model).__name__}."
        )
    if not 0 <= layer < spec.n_layers:
        raise InterpError(f"layer must be in 0..{spec.n_layers - 1}; got {layer}.")
    if spec.parallel_attn_mlp:
        raise InterpError("transformer_mlp needs sequential blocks (attention, then the MLP).")
    block = model.bridge.blocks[layer]
    mlp = block.mlp
    children = dict(mlp.named_children())
    original = getattr(mlp, "original_component", None)  # the Hugging Face module it wraps
    act = getattr(original, "act", None) or getattr(original, "act_fn", None)
    if "in" not in children or "out" not in children or act is None:
        raise InterpError(
            f"Block {layer}'s MLP ({type(original).__name__}) has no in/out projections and "
            "activation that transformer_mlp recognises."
        )
    hidden = _MLPHidden(block.ln2, children["in"], act, children.get("gate"))
    sections: list[nn.Module] = [hidden, children["out"]]
    names = [f"m{layer}.in", f"m{layer}.post", f"m{layer}"]
    if residual:
        sections = [
            _WithResidual(hidden, spec.d_model, True),
            _WithResidual(children["out"], spec.d_model, False),
        ]
        names = [f"r{layer}.mid", f"r{layer}.mid+m{layer}.post", f"r{layer}.post"]
    sections = [copy.deepcopy(s).to(F64).eval().requires_grad_(False) for s in sections]
    sites = [f"r{layer}.mid", f"m{layer}.in", f"m{layer}.post", f"m{layer}", f"r{layer}.post"]
    _, cache = model.run_with_cache(prompts, sites)
    flat = {k: cache[k].reshape(-1, cache[k].shape[-1]).to(F64) for k in sites}
    x = flat[f"r{layer}.mid"] if residual else flat[f"m{layer}.in"]
    wanted = [flat[f"m{layer}.post"], flat[f"m{layer}"]]
    if residual:
        wanted = [torch.cat([x, wanted[0]], 1), flat[f"r{layer}.post"]]
    with torch.no_grad():
        got = sections[0](x)
        for k, (value, target) in enumerate(((got, wanted[0]), (sections[1](got), wanted[1]))):
            err = float((value - target).abs().max())
            if err > 1e-3 * (1 + float(target.abs().max())):
                raise InterpError(
                    f"transformer_mlp rebuilt block {layer}'s MLP but section {k} misses the "
                    f"model's activations at {names[k + 1]!r} by {err:.2g}; this architecture's "
                    "MLP is not supported. Pass your own sections to InteractionBasis.fit."
                )
    return sections, x, names
