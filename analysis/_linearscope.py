"""LinearScope: a network read as the linear map it applies at one input.

At an input x0 every nonlinear unit is replaced by its linear interpretation there (ReLU-like
units by their on/off masks, max pooling by x0's argmax selection, smooth activations by their
gain f(x0)/x0, LayerNorm by its statistics at x0), so that ``f(x) ~ A(x0) x + c(x0)`` and
``A(x0) x0 + c(x0) = f(x0)`` exactly. ``A`` is never formed unless asked: products with it
are forward- and reverse-mode derivatives under :func:`interp.frozen_gains`, the same
mechanism as RelP's LRP rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from sklearn.base import BaseEstimator
from torch import Tensor, nn

from interp import InterpError, ShapeError, check_linearisable, frozen_gains

from ._base import model_input

__all__ = [
    "LinearInterpretation",
    "LinearScope",
    "TransformerInterpretation",
    "TransformerLinearScope",
]

MAX_MATRIX_ENTRIES = 50_000_000


class _Scope(BaseEstimator):
    """What the two scopes share: an estimator constructed on the model it reads, that learns
    nothing (the linear map depends on the input, so :meth:`interpret` does the work).

    Like scikit-learn's stateless transformers (``Normalizer``), ``fit`` only validates and
    returns ``self``, and ``interpret`` works without it. ``sklearn.base.clone`` gives a new
    scope on the *same* model object: the model is what is looked at, not a hyperparameter, and
    deep-copying a transformer would double its memory.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _check_model(self) -> None:
        raise NotImplementedError

    def fit(self, x: object = None, y: object = None) -> _Scope:
        """Check that the model can be read (nothing is learned); return ``self``."""
        self._check_model()
        return self

    def __sklearn_clone__(self) -> _Scope:
        return type(self)(self.model)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


class LinearScope(_Scope):
    """Linear interpreters of a plain torch network.

    Parameters
    ----------
    model : nn.Module
        In eval mode; maps a batch of inputs to a batch of output vectors. Checked when used
        (:meth:`interpret`, :meth:`fit`): every leaf module must have a known linear
        interpretation.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    >>> lin = LinearScope(net).interpret(torch.randn(4))
    >>> torch.allclose(lin.apply(lin.x0) + lin.bias, lin.output, atol=1e-5)
    True
    """

    def _check_model(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise InterpError(
                f"LinearScope reads a torch.nn.Module; got {type(self.model).__name__}."
            )
        check_linearisable(self.model)
        if self.model.training:
            raise InterpError("LinearScope needs the model in eval mode: call model.eval().")

    def interpret(self, x0: Tensor) -> LinearInterpretation:
        """The linear interpretation at one input ``x0`` (shape of one example).

        ``x0`` is cast to the model's parameter dtype and moved to its device, as every
        analysis does with floating inputs.
        """
        self._check_model()
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise ShapeError("x0 must be a floating-point tensor shaped like one example.")
        if not torch.isfinite(x0).all():
            raise ShapeError("x0 contains NaN or infinite values.")
        x0 = model_input(self.model, x0.detach())
        with torch.no_grad():
            output = self.model(x0[None])
        if output.ndim != 2 or output.shape[0] != 1:
            raise ShapeError(
                f"The model must map a batch of inputs to (batch, outputs); got {tuple(output.shape)}."
            )
        return LinearInterpretation(self.model, x0, output[0])


@dataclass
class LinearInterpretation:
    """``f(x) ~ A x + c`` at ``x0``: products with A, its rows and columns, the bias c."""

    model: nn.Module
    x0: Tensor
    output: Tensor

    def _f(self, x: Tensor) -> Tensor:
        return self.model(x[None])[0]

    def apply(self, x: Tensor) -> Tensor:
        """``A x`` (x shaped like the input), by forward-mode differentiation at x0."""
        self._check_input(x)
        return self._jvp(x.to(self.x0.dtype)).detach()

    def apply_transposed(self, y: Tensor) -> Tensor:
        """``A^T y`` (y shaped like the output), by reverse-mode differentiation at x0."""
        if y.shape != self.output.shape:
            raise ShapeError(
                f"Expected an output-shaped vector {tuple(self.output.shape)}, "
                f"got {tuple(y.shape)}."
            )
        return self._vjp(y.to(self.output.dtype)).detach()

    def _jvp(self, x: Tensor) -> Tensor:
        with frozen_gains(self.model):
            _, out = torch.func.jvp(self._f, (self.x0,), (x,))
        return out

    def _vjp(self, y: Tensor) -> Tensor:
        x = self.x0.clone().requires_grad_(True)
        with torch.enable_grad(), frozen_gains(self.model):
            (grad,) = torch.autograd.grad(self._f(x), [x], grad_outputs=[y])
        return grad

    @cached_property
    def bias(self) -> Tensor:
        """``c(x0) = f(x0) - A x0``: what the biases (and normalisation shifts) contribute."""
        return self.output - self.apply(self.x0)

    def row(self, k: int) -> Tensor:
        """What output k computes: ``A[k]``, shaped like the input."""
        return self.apply_transposed(self._unit(k, self.output))

    def column(self, i: int) -> Tensor:
        """What input element i (flat index) does to every output: ``A[:, i]``."""
        e = torch.zeros(self.x0.numel(), dtype=self.x0.dtype)
        if not 0 <= i < e.numel():
            raise ShapeError(f"Input index must be in 0..{e.numel() - 1}; got {i}.")
        e[i] = 1
        return self.apply(e.view_as(self.x0))

    def contributions(self, k: int) -> Tensor:
        """Each input element's vote for output k: ``A[k] * x0`` (sums to f_k - c_k)."""
        return self.row(k) * self.x0

    def bias_share(self, k: int) -> float:
        """Fraction of output k that comes from the bias term: ``c_k / f_k(x0)``."""
        return float(self.bias[k] / self.output[k])

    def matrix(self) -> Tensor:
        """A as a dense (outputs, inputs) matrix (only for small networks)."""
        n_out, n_in = self.output.numel(), self.x0.numel()
        if n_out * n_in > MAX_MATRIX_ENTRIES:
            raise InterpError(f"A has {n_out} x {n_in} entries; use apply/row/svd instead.")
        return torch.stack([self.row(k).flatten() for k in range(n_out)])

    def svd(self, k: int = 6):
        """The top-k singular triplets of A, through a scipy ``LinearOperator`` (A never formed).

        Returns (U of shape (outputs, k), singular values (k,), V^T of shape (k, inputs))."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator, svds

        n_out, n_in = self.output.numel(), self.x0.numel()
        if not 1 <= k < min(n_out, n_in):
            raise InterpError(f"k must be in 1..{min(n_out, n_in) - 1}; got {k}.")
        dtype = self.x0.dtype

        def matvec(v: np.ndarray) -> np.ndarray:
            x = torch.as_tensor(np.ravel(v), dtype=dtype).view_as(self.x0)
            return self.apply(x).double().numpy()

        def rmatvec(v: np.ndarray) -> np.ndarray:
            y = torch.as_tensor(np.ravel(v), dtype=dtype)
            return self.apply_transposed(y).flatten().double().numpy()

        op = LinearOperator((n_out, n_in), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
        u, s, vt = svds(op, k=k)
        order = np.argsort(s)[::-1]
        return (
            torch.from_numpy(u[:, order].copy()),
            torch.from_numpy(s[order].copy()),
            torch.from_numpy(vt[order].copy()),
        )

    def contribution_graph(self, top: int | None = None):
        """Contributions between units of consecutive layers at x0, as a CircuitGraph.

        For a ``Sequential`` whose weighted layers are ``Linear`` / ``Conv1d`` / ``Conv2d``: the
        network is cut before every weighted layer after the first into segments (a weighted
        layer and what follows it up to the next one: activations, pooling, batch norm, flatten).
        Units are the elements of a segment's input, or its channels when it has a channel axis
        (conv feature maps). The edge from unit i to unit j of the next cut carries the part of
        j's linearised activation that i supplies, ``sum over j's elements of G W a_i(x0)``,
        where ``G`` is the segment's frozen-gain map; what is left of j is its share of the
        biases. Node scores are the activations (summed over a channel's positions).
        ``top`` keeps only that many strongest edges in the circuit mask.
        """
        from interp import CircuitGraph

        segments = _segments(self.model)
        names: list[str] = []
        edges: list[tuple[str, str]] = []
        scores: list[Tensor] = []
        node_scores: list[Tensor] = []
        a = self.x0[None]
        with torch.no_grad(), frozen_gains(self.model):
            for index, segment in enumerate(segments):
                prefix = "x" if index == 0 else f"h{index}"
                groups = _unit_masks(a[0])
                inputs = [f"{prefix}.{i}" for i in range(len(groups))]
                names += inputs
                node_scores.append(torch.stack([(a[0] * m).sum() for m in groups]))
                out = segment(a)
                share = torch.stack(
                    [  # (inputs, outputs): one forward-mode pass per input unit
                        _unit_sums(torch.func.jvp(segment, (a,), (a * m,))[1][0]) for m in groups
                    ]
                )
                last = index == len(segments) - 1
                outputs = [f"{'y' if last else f'h{index + 1}'}.{j}" for j in range(share.shape[1])]
                edges += [(i, j) for i in inputs for j in outputs]
                scores.append(share.flatten())
                if last:
                    names += outputs
                    node_scores.append(_unit_sums(out[0]))
                a = out
        graph = CircuitGraph(
            names,
            edges,
            node_scores=torch.cat(node_scores).double(),
            edge_scores=torch.cat(scores).double(),
            method="linearscope",
            meta={"kind": "contributions"},
            score_dtype=torch.float64,
        )
        return graph if top is None else graph.top(top, prune=False)

    @staticmethod
    def _unit(k: int, like: Tensor) -> Tensor:
        if not 0 <= k < like.numel():
            raise ShapeError(f"Output index must be in 0..{like.numel() - 1}; got {k}.")
        e = torch.zeros_like(like)
        e[k] = 1
        return e

    def _check_input(self, x: Tensor) -> None:
        if x.shape != self.x0.shape:
            raise ShapeError(
                f"Expected an input-shaped tensor {tuple(self.x0.shape)}, got {tuple(x.shape)}."
            )


WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _segments(model: nn.Module) -> list[nn.Sequential]:
    """``model`` cut before every weighted layer after the first."""
    if not isinstance(model, nn.Sequential):
        raise InterpError(
            "contribution_graph reads an nn.Sequential (cut at its weighted layers); "
            f"got {type(model).__name__}."
        )
    pieces: list[list[nn.Module]] = [[]]
    for module in model:
        if isinstance(module, WEIGHTED) and any(isinstance(m, WEIGHTED) for m in pieces[-1]):
            pieces.append([])
        pieces[-1].append(module)
    if not any(isinstance(m, WEIGHTED) for m in pieces[0]):
        raise InterpError("contribution_graph needs at least one Linear or Conv layer.")
    return [nn.Sequential(*piece) for piece in pieces]


def _unit_masks(a: Tensor) -> list[Tensor]:
    """One 0/1 mask per unit of an activation: per channel (dim 0) when it has spatial axes."""
    if a.ndim == 1:
        return list(torch.eye(a.numel(), dtype=a.dtype))
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return [e.view(-1, *[1] * (a.ndim - 1)).expand_as(a) for e in eye]


def _unit_sums(a: Tensor) -> Tensor:
    """Per-unit totals of one example's activation (channels summed over their positions)."""
    return a if a.ndim == 1 else a.flatten(1).sum(1)


class TransformerLinearScope(_Scope):
    """The linear map from input embeddings to one position's logits, gains frozen at a prompt.

    Norm scales, activation gains and attention patterns are held at their values for the
    prompt (the ``relp-ah`` rule set, which is exactly that linearisation), so a logit is
    ``A(x0)[k] . embeddings + c_k`` and each token's share of it can be read off.

    Parameters
    ----------
    model : TransformerModel
        From :func:`interp.load_model`; checked when used (:meth:`interpret`, :meth:`fit`).

    Examples
    --------
    >>> scope = TransformerLinearScope(load_model("tiny-llama"))
    >>> lin = scope.interpret(PROMPT)
    >>> lin.token_contributions(5).shape
    torch.Size([15])
    """

    def _check_model(self) -> None:
        from interp import TransformerModel

        if not isinstance(self.model, TransformerModel):
            raise InterpError(
                "TransformerLinearScope reads a model from interp.load_model; got "
                f"{type(self.model).__name__}."
            )

    def interpret(self, prompt, position: int = -1) -> TransformerInterpretation:
        """Linearise the model at ``prompt`` (text or token ids) for the logits at ``position``."""
        self._check_model()
        tokens = self.model.prepare(prompt)
        if tokens.shape[0] != 1:
            raise ShapeError("interpret reads one prompt at a time.")
        with torch.no_grad():
            logits, cache = self.model.run_with_cache(tokens, ["input"])
        return TransformerInterpretation(
            self.model, cache["input"][0], logits[0, position], tokens=tokens, position=position
        )


@dataclass
class TransformerInterpretation(LinearInterpretation):
    """``logits = A e + c`` at one prompt: ``e`` the input embeddings (pos, d_model), the logits
    those of one position, every gain frozen (the ``relp-ah`` rule set). Everything of
    :class:`LinearInterpretation` works, with ``x0`` the prompt's own embeddings."""

    tokens: Tensor = None
    position: int = -1

    @property
    def embeddings(self) -> Tensor:
        """What the first block reads, (pos, d_model): the input x0 of the linear map."""
        return self.x0

    def _jvp(self, x: Tensor) -> Tensor:
        import torch.autograd.forward_ad as fwad

        from interp import gradient_rules

        # forward-mode AD through the rules: their detached factors carry no tangent
        with torch.no_grad(), gradient_rules(self.model, "relp-ah"), fwad.dual_level():
            dual = fwad.make_dual(self.x0[None], x[None])
            with self.model.patch({"input": dual}):
                logits = self.model(self.tokens)
            return fwad.unpack_dual(logits).tangent[0, self.position]

    def _vjp(self, y: Tensor) -> Tensor:
        from interp import gradient_rules

        with gradient_rules(self.model, "relp-ah"):
            run = self.model.run_with_grads(
                self.tokens, lambda logits: (logits[0, self.position] * y).sum(), ["input"]
            )
        return run.gradients["input"][0]

    def token_contributions(self, k: int) -> Tensor:
        """Each token's vote for logit k (its embedding's contribution, summed over d_model)."""
        return self.contributions(k).sum(-1)
