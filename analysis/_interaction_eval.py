"""Evaluating a fitted interaction basis: edge concentration, modularity and ablations.

:class:`BasisEvaluation` holds the methods of :class:`~analysis.InteractionBasis` that score a
fitted basis (spec ``specs/interaction_basis.md`` §2.5, §2.8) rather than compute it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from interp import InterpError, check_option, progress_bar

from ._base import check_labels
from ._interaction_sections import F64, Section, _compose

__all__ = ["Modules"]


# -- results -------------------------------------------------------------------------------------


@dataclass
class Modules:
    """Communities of an interaction graph and their Newman modularity.

    Attributes
    ----------
    q : float
        Newman modularity ``Q = (1/2m) sum_ij [A_ij - k_i k_j / 2m] delta(c_i, c_j)`` of the
        partition (at resolution 1, whatever resolution found the partition).
    communities : list of list of str
        Node names per module, largest module first.
    assignment : dict
        Node name -> module index.
    """

    q: float
    communities: list[list[str]]
    assignment: dict[str, int] = field(repr=False)

    def frame(self) -> pd.DataFrame:
        """One row per node: ``node, layer, direction, module``."""
        rows = []
        for name, module in self.assignment.items():
            layer, direction = name.split(".")
            rows.append(
                {
                    "node": name,
                    "layer": int(layer[1:]),
                    "direction": int(direction[1:]),
                    "module": module,
                }
            )
        return pd.DataFrame(rows)


# -- the evaluation methods -------------------------------------------------------------------

NORMS = ("none", "sqrt", "layer")
KINDS = ("node", "edge")
METRICS = ("accuracy", "loss")


class BasisEvaluation:
    """The scoring methods of :class:`~analysis.InteractionBasis` (a mixin: they read its fitted
    attributes ``C_``, ``C_pinv_``, ``lambdas_``, ``kept_``, ``constant_``, ``edges_`` and
    ``sections_`` and its checks ``_check_layer``, ``_check_edges`` and ``_fold``)."""

    def edge_concentration(
        self, fractions: Sequence[float] = (0.9, 0.99), *, include_constant: bool = False
    ) -> pd.DataFrame:
        """How many of the strongest edges hold a fraction of each layer's total edge mass.

        Parameters
        ----------
        fractions : sequence of float
            Fractions of ``sum E`` (0.9 and 0.99 in spec §2.8).
        include_constant : bool
            Count the edges of the constant directions (left out by default, as for modularity).

        Returns
        -------
        pandas.DataFrame
            One row per pair of layers: ``basis, edges, n_edges, edges_90%, edges_99%, ...``.
        """
        self._check_edges()
        rows = []
        for layer, e in enumerate(self.edges_):
            values = e[self.edge_mask(layer, include_constant)]
            row = {
                "basis": self.basis,
                "edges": f"L{layer}->L{layer + 1}",
                "n_edges": int(values.numel()),
            }
            row.update(
                {f"edges_{round(100 * f, 3):g}%": _edges_holding(values, f) for f in fractions}
            )
            rows.append(row)
        return pd.DataFrame(rows)

    def modularity(
        self,
        *,
        resolution: float = 1.0,
        seed: int = 0,
        norm: str = "none",
        nodes_per_layer: int | None = None,
    ) -> Modules:
        """Modules of the interaction graph (Louvain) and their Newman modularity ``Q``.

        Constant directions are left out (spec §1.4). The graph is undirected, weighted by the
        edges ``E`` (``norm="sqrt"``: ``sqrt(E)``; ``"layer"``: ``E / sum E`` per pair of
        layers). ``nodes_per_layer`` keeps only the most important directions of each layer.
        Community detection is networkx's Louvain method at ``resolution``, seeded.
        """
        import networkx as nx

        self._check_edges()
        check_option("norm", norm, NORMS)
        graph = nx.Graph()
        for layer in range(self.n_layers_):
            graph.add_nodes_from(self._module_nodes(layer, nodes_per_layer))
        for layer, e in enumerate(self.edges_):
            w = e.sqrt() if norm == "sqrt" else e
            if norm == "layer":
                w = w / w[self.edge_mask(layer, False)].sum().clamp_min(1e-300)
            src = self._module_nodes(layer, nodes_per_layer)
            dst = self._module_nodes(layer + 1, nodes_per_layer)
            for i_name in dst:
                i = int(i_name.split(".d")[1])
                for j_name in src:
                    weight = float(w[i, int(j_name.split(".d")[1])])
                    if weight > 0:
                        graph.add_edge(j_name, i_name, weight=weight)
        communities = nx.community.louvain_communities(
            graph, weight="weight", resolution=resolution, seed=seed
        )
        communities = sorted(
            (sorted(c, key=_node_key) for c in communities),
            key=lambda c: (-len(c), _node_key(c[0])),
        )
        q = float(nx.community.modularity(graph, communities, weight="weight"))
        assignment = {name: k for k, c in enumerate(communities) for name in c}
        return Modules(q, communities, assignment)

    def _module_nodes(self, layer: int, nodes_per_layer: int | None) -> list[str]:
        names = self.node_names(layer)
        const = self.constant_[layer]
        keep = [n for i, n in enumerate(names) if i != const]
        return keep if nodes_per_layer is None else keep[:nodes_per_layer]

    # -- ablations ----------------------------------------------------------------------------

    def ablation_curve(
        self,
        x: Any,
        y: Any = None,
        *,
        layer: int,
        kind: str = "node",
        schedule: Sequence[int] | None = None,
        metric: str | Callable[[Tensor, Tensor | None], float] = "accuracy",
    ) -> pd.DataFrame:
        """Score of the network when only some directions (or edges) of one layer are kept.

        Parameters
        ----------
        x, y : array-like
            Inputs (N, d_0) and labels (for ``"accuracy"`` and ``"loss"``).
        layer : int
            ``kind="node"``: the node layer whose directions are ablated (smallest ``Lambda``
            first; the constant direction is always kept and counted). ``kind="edge"``: the
            edges from ``layer`` to ``layer + 1`` (weakest first; edges of constant directions
            are always kept and not counted).
        schedule : sequence of int, optional
            Numbers of directions (edges) kept; default: about 30 counts, log-spaced, from the
            fewest allowed (1 for a node layer with a constant direction, which is always kept;
            else 0) to all.
        metric : "accuracy", "loss" or callable
            ``metric(output, y) -> float``.

        Returns
        -------
        pandas.DataFrame
            ``basis, kind, layer, n_kept, score``.
        """
        check_option("kind", kind, KINDS)
        layer = self._check_edge_layer(layer) if kind == "edge" else self._check_layer(layer)
        score, fa = self._scored_run(x, y, metric)
        if kind == "node":
            total = self.kept_[layer]
            # the constant direction is always kept and counted: keeping nothing is no option
            fewest = 0 if self.constant_[layer] is None else 1
        else:
            total, fewest = int(self.edge_mask(layer, False).sum()), 0
        if schedule is None:
            counts = _schedule(fewest, total)
        else:
            counts = sorted({int(s) for s in schedule})
        if any(not fewest <= c <= total for c in counts):
            why = (
                f" (node layer {layer} has a constant direction, always kept and counted)"
                if fewest
                else ""
            )
            raise InterpError(f"schedule counts must lie in {fewest}..{total}{why}; got {counts}.")
        rows = []
        with torch.no_grad():
            for n in progress_bar(counts, desc=f"{kind} ablation", progress=self.progress):
                if n == total:
                    out = fa[-1]
                elif kind == "node":
                    out = self._run_from(layer, self._ablate_nodes(layer, fa[layer], n))
                else:
                    out = self._run_from(layer + 1, self._ablate_edges(layer, fa[layer], n))
                rows.append(
                    {
                        "basis": self.basis,
                        "kind": kind,
                        "layer": layer,
                        "n_kept": n,
                        "score": score(out),
                    }
                )
        return pd.DataFrame(rows)

    def edges_required(
        self,
        x: Any,
        y: Any = None,
        *,
        layer: int,
        tolerance: float = 1e-3,
        metric: str | Callable[[Tensor, Tensor | None], float] = "accuracy",
    ) -> int:
        """Fewest edges from ``layer`` to ``layer + 1`` that keep the score within ``tolerance``.

        Bisection over the number of strongest edges kept (rib's ``bisect`` schedule, spec §2.5):
        the result ``n`` scores at least ``base - tolerance`` and ``n - 1`` does not (for a loss,
        lower is better: at most ``base + tolerance``). Edges of constant directions are always
        kept and not counted.
        """
        layer = self._check_edge_layer(layer)
        score, fa = self._scored_run(x, y, metric)
        total = int(self.edge_mask(layer).sum())
        base = score(fa[-1])
        sign = -1.0 if metric == "loss" else 1.0

        def good(n: int) -> bool:
            if n == total:
                return True
            with torch.no_grad():
                out = self._run_from(layer + 1, self._ablate_edges(layer, fa[layer], n))
            return sign * (score(out) - base) >= -tolerance

        lo, hi = 0, total  # good(hi) holds
        if good(0):
            return 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if good(mid) else (mid, hi)
        return hi

    def _check_edge_layer(self, layer: int) -> int:
        """``layer`` as the index of a fitted layer that edges leave."""
        layer = self._check_layer(layer)
        self._check_edges()
        if layer == self.n_layers_ - 1:
            raise InterpError("Edges leave layers 0..n_layers_ - 2; the output has none.")
        return layer

    def _scored_run(
        self, x: Any, y: Any, metric: str | Callable
    ) -> tuple[Callable[[Tensor], float], list[Tensor]]:
        """The score of an output on ``(x, y)`` and the folded activations of ``x``."""
        xf = self._fold(0, x, "x")
        return _metric(metric, y, len(xf)), self._folded_activations(xf[:, :-1])

    def _module_hat(self, layer: int) -> Section:
        """``f_hat^l -> f_hat^{l+1}``: the section between two layers, in their bases."""
        section, c_pinv, c_next = self.sections_[layer], self.C_pinv_[layer], self.C_[layer + 1]
        return lambda h: section(h @ c_pinv) @ c_next

    def _run_from(self, layer: int, f: Tensor) -> Tensor:
        return _compose(self.sections_[layer:])(f)

    def _order(self, layer: int) -> Tensor:
        """Directions by importance: the constant first, then by decreasing Lambda."""
        lam = self.lambdas_[layer].clone()
        const = self.constant_[layer]
        if const is not None:
            lam[const] = math.inf
        return torch.argsort(lam, descending=True, stable=True)

    def _ablate_nodes(self, layer: int, fa: Tensor, n: int) -> Tensor:
        mask = torch.zeros(self.kept_[layer], dtype=F64)
        mask[self._order(layer)[:n]] = 1
        return (fa @ self.C_[layer] * mask) @ self.C_pinv_[layer]

    def _ablate_edges(self, layer: int, fa: Tensor, n: int) -> Tensor:
        e = self.edges_[layer]
        free = self.edge_mask(layer, False)
        keep = ~free  # constant edges always kept
        ranked = torch.argsort(torch.where(free, e, -math.inf).reshape(-1), descending=True)
        keep.view(-1)[ranked[:n]] = True
        h = fa @ self.C_[layer]
        k_out = self.kept_[layer + 1]
        out = torch.empty(len(h), k_out, dtype=F64)
        fn = self._module_hat(layer)
        for i in range(k_out):  # output direction i sees only its kept inputs
            out[:, i] = fn(h * keep[i].to(F64))[:, i]
        return out @ self.C_pinv_[layer + 1]


def _node_key(name: str) -> tuple[int, int]:
    layer, direction = name.split(".")
    return int(layer[1:]), int(direction[1:])


def _edges_holding(values: Tensor, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise InterpError(f"fractions must lie in (0, 1]; got {fraction}.")
    total = values.sum()
    if values.numel() == 0 or total <= 0:
        return 0
    cumulative = torch.cumsum(torch.sort(values.reshape(-1), descending=True).values, 0)
    # the tiny slack keeps fraction=1 from failing on rounding in the last bits
    return int(torch.searchsorted(cumulative, fraction * total * (1 - 1e-12))) + 1


def _schedule(fewest: int, total: int, steps: int = 30) -> list[int]:
    """About ``steps`` log-spaced counts from ``fewest`` to ``total``, both included."""
    counts = np.unique(np.round(np.geomspace(1, max(total, 1), steps)).astype(int))
    return sorted(c for c in {fewest, *counts.tolist(), total} if c <= total)


def _metric(metric: Any, y: Any, n: int) -> Callable[[Tensor], float]:
    if callable(metric):
        return lambda out: float(metric(out, y))
    check_option("metric (when not a callable)", metric, METRICS)
    if y is None:
        raise InterpError(f"metric={metric!r} needs labels y; pass y or a callable metric.")
    labels = check_labels(y, n)
    if metric == "accuracy":
        return lambda out: float((out.argmax(-1) == labels).double().mean())
    return lambda out: float(nn.functional.cross_entropy(out, labels))
