"""Circuit evaluation as MIB does it (Mueller et al. 2025, ``evaluate_area_under_curve``).

A scored graph is cut to circuits at a sweep of sizes, each a fraction p of the graph's edges;
each circuit is pruned to the edges on an input -> logits path and its faithfulness measured::

    f(C) = (m(C) - m(empty)) / (m(N) - m(empty))

where N is the full model and the empty circuit has every edge ablated (for corrupted patching,
the corrupted run). Two areas sum the curve up with the trapezoid rule on the linear p axis:
CPR, the area under f (higher is better), and CMD, the area under |1 - f| (lower is better);
MIB also reports the plain mean of f.

Where we follow MIB: its ten fractions, k = int(p * |E|) edges requested at p (|E| the scored
edges, every edge for an edge-scored graph), pruning after selection, areas over the requested
fractions. What we add: the size after pruning (edges and fraction) beside the requested one,
greedy selection from the logits (EAP-IG's ``apply_greedy``) and signed ranking as options,
and zero ablation next to patching and mean ablation (our mean is per position, over the
corrupted prompts, where MIB's ``mean`` averages over positions too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from interp import CircuitGraph, InterpError, TransformerModel

from ._edges import sweep
from ._options import Ablation, Selection, check_option
from ._tasks import Task

__all__ = [
    "MIB_FRACTIONS",
    "Evaluation",
    "evaluate",
    "faithfulness_areas",
    "plot_evaluations",
    "select_circuit",
]

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
PlotAxis = Literal["fraction", "effective_fraction"]


def faithfulness_areas(
    fractions: Sequence[float], faithfulness: Sequence[float]
) -> tuple[float, float, float]:
    """MIB's integrated metrics of a faithfulness curve: ``(cpr, cmd, mean)``.

    ``cpr = sum_i (p[i+1] - p[i]) * (f[i] + f[i+1]) / 2`` and
    ``cmd = sum_i (p[i+1] - p[i]) * (|1 - f[i]| + |1 - f[i+1]|) / 2``, the trapezoid rule on the
    linear fraction axis (as MIB computes them, whatever axis it plots on), and the plain mean
    of f.

    Examples
    --------
    >>> faithfulness_areas([0.5, 1.0], [0.0, 1.0])
    (0.25, 0.25, 0.5)
    """
    p = [float(x) for x in fractions]
    f = [float(x) for x in faithfulness]
    if len(p) != len(f) or not p:
        raise InterpError(
            f"Need as many faithfulness values as fractions, at least one; got {len(f)} "
            f"values for {len(p)} fractions."
        )
    cpr = cmd = 0.0
    for i in range(len(p) - 1):
        width = p[i + 1] - p[i]
        cpr += width * (f[i] + f[i + 1]) / 2
        cmd += width * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2
    return cpr, cmd, sum(f) / len(f)


def select_circuit(graph: CircuitGraph, k: int, selection: Selection = "top-abs") -> CircuitGraph:
    """The circuit of ``k`` edges that a selection rule takes from a scored graph, pruned to
    the edges on an input -> logits path (so it may hold fewer than ``k``).

    ``top-abs``: the k largest ``|score|`` (EAP-IG's ``apply_topn``, MIB's choice);
    ``top-signed``: the k largest signed scores (positive ones first); ``greedy-abs`` and
    ``greedy-signed``: grown from the logits, each step adding the best edge into the circuit
    (EAP-IG's ``apply_greedy``; see :meth:`interp.CircuitGraph.top`).

    Examples
    --------
    >>> spec = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=2, d_model=8)
    >>> g = CircuitGraph.from_model(spec)
    >>> g = g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges)))
    >>> select_circuit(g, 10, "greedy-signed").n_edges_in_graph <= 10
    True
    """
    check_option("selection", selection, Selection)
    rank, sign = selection.split("-")
    return graph.top(k, absolute=sign == "abs", strategy="greedy" if rank == "greedy" else "global")


@dataclass(frozen=True)
class Evaluation:
    """Faithfulness of a scored graph's circuits over a sweep of sizes, and its areas.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per size: ``fraction`` (requested), ``edges`` (requested, int(fraction x
        scored edges)), ``effective_edges`` and ``effective_fraction`` (after pruning),
        ``nodes`` (after pruning), ``faithfulness``, ``metric`` (m(C)).
    cpr, cmd, mean : float
        MIB's areas over the requested fractions (:func:`faithfulness_areas`).
    clean, empty : float
        m(N), the full model, and m(empty), every edge ablated.
    selection, ablation : str
    n_edges : int
        The edges the fractions count (the graph's scored edges).
    """

    table: Any
    cpr: float
    cmd: float
    mean: float
    clean: float
    empty: float
    selection: str
    ablation: str
    n_edges: int

    def summary(self) -> str:
        """The table and the areas as text."""
        table = self.table.to_string(
            index=False,
            formatters={
                "fraction": "{:.3g}".format,
                "effective_fraction": "{:.3g}".format,
                "faithfulness": "{:.4f}".format,
                "metric": "{:.4f}".format,
            },
        )
        return (
            f"{table}\n\nCPR {self.cpr:.4f} (higher is better)  CMD {self.cmd:.4f} (lower is "
            f"better)  mean faithfulness {self.mean:.4f}\nselection {self.selection}, ablation "
            f"{self.ablation}; m(full) {self.clean:.4f}, m(empty) {self.empty:.4f}; "
            f"{self.n_edges} edges"
        )

    def plot(self, ax: Any = None, *, label: str | None = None, x: PlotAxis = "fraction") -> Any:
        """Faithfulness against the fraction of edges (log axis) on ``ax`` (a new one if none).

        ``x="effective_fraction"`` puts each point at its size after pruning instead.
        """
        check_option("x", x, PlotAxis)
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(6, 4))
        label = label or f"{self.selection}, {self.ablation}"
        ax.plot(
            self.table[x],
            self.table["faithfulness"],
            marker="o",
            label=f"{label} (CPR {self.cpr:.2f}, CMD {self.cmd:.2f})",
        )
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of edges" + (" after pruning" if x != "fraction" else ""))
        ax.set_ylabel("faithfulness")
        return ax


def plot_evaluations(
    evaluations: Mapping[str, Evaluation],
    path: Any = None,
    *,
    ax: Any = None,
    x: PlotAxis = "fraction",
) -> Any:
    """One plot, a faithfulness curve per method (``{label: Evaluation}``); saved to ``path``
    (PNG, SVG, PDF by suffix) when given. Returns the axes.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4)
    >>> result = evaluate(model, discover(model, task, "eap"), task, progress=False)
    >>> ax = plot_evaluations({"eap": result})
    """
    import matplotlib.pyplot as plt

    if not evaluations:
        raise InterpError("plot_evaluations needs at least one {label: Evaluation}.")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, evaluation in evaluations.items():
        evaluation.plot(ax, label=label, x=x)
    ax.legend(fontsize="small")
    if fig is not None:
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=150)
            plt.close(fig)
    return ax


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    try:
        values = [float(p) for p in fractions]
    except (TypeError, ValueError):
        raise InterpError(f"fractions must be numbers; got {fractions!r}.") from None
    if (
        len(values) < 2
        or any(not 0 <= p <= 1 or math.isnan(p) for p in values)
        or any(b <= a for a, b in zip(values, values[1:], strict=False))
    ):
        raise InterpError(
            "fractions must be at least two increasing numbers in [0, 1] (the areas integrate "
            f"between them), e.g. circuits.MIB_FRACTIONS; got {list(fractions)!r}."
        )
    return values


def evaluate(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    *,
    fractions: Sequence[float] = MIB_FRACTIONS,
    selection: Selection = "top-abs",
    ablation: Ablation = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Evaluation:
    """Faithfulness of a scored graph's circuits at a sweep of sizes, with MIB's CPR and CMD.

    Parameters
    ----------
    model : TransformerModel
        Grouped-query models are ungrouped once (:func:`prepare_edge_model`).
    graph : CircuitGraph
        Edge scores from a discovery method (what is in the graph now is ignored).
    task : Task
        Evaluate on other prompts than the graph was found on (``ioi_task(..., split="test")``
        for a graph found with ``split="train"``).
    fractions : sequence of float
        Circuit sizes as fractions of the scored edges, increasing (MIB's ten by default);
        each asks for ``int(p * n_edges)`` edges.
    selection : {"top-abs", "top-signed", "greedy-abs", "greedy-signed"}
        How a circuit of k edges is chosen (:func:`select_circuit`); pruned afterwards.
    ablation : {"corrupt", "mean", "zero"}
        What an edge outside the circuit carries: the corrupted activation of its writer,
        the mean corrupted one per position (equal-length prompts only), or zero.
    masks_per_pass : int, optional
        Circuits evaluated in one forward pass (by default as many as ``max_memory`` holds;
        every pass shares the baselines and the source run).
    max_memory : int or str, optional
        Working memory of the edge-patching passes (bytes, or ``"2GB"``; 512 MiB by default:
        :data:`~circuits._edges.PASS_BYTES`); prompts go in chunks when they do not all fit.
    progress : bool, optional
        A bar over the forward passes (``None``: on a terminal).

    Returns
    -------
    Evaluation
        ``table`` (requested and effective sizes, faithfulness and metric per size), ``cpr``,
        ``cmd`` and ``mean`` over the requested fractions, ``clean`` and ``empty`` baselines.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> graph = discover(model, ioi_task(model, 4, split="train"), "eap")
    >>> result = evaluate(model, graph, ioi_task(model, 4, split="test"), progress=False)
    >>> list(result.table.columns)
    ['fraction', 'edges', 'effective_edges', 'effective_fraction', 'nodes', 'faithfulness', 'metric']
    >>> round(float(result.table["faithfulness"].iloc[-1]), 3)  # every edge kept
    1.0
    """
    import pandas as pd

    check_option("selection", selection, Selection)
    check_option("ablation", ablation, Ablation)
    values = _check_fractions(fractions)
    n_edges = graph.n_ranked("edge")
    if n_edges == 0:
        raise InterpError(
            "The graph has no edge scores to select circuits by; score it at edge level, e.g. "
            "discover(model, task, 'eap-ig', 'edge')."
        )
    requested = [int(p * n_edges) for p in values]
    swept = sweep(
        model,
        task,
        lambda k: select_circuit(graph, k, selection),
        requested,
        ablation=ablation,
        masks_per_pass=masks_per_pass,
        max_memory=max_memory,
        progress=progress,
    )
    circuits, faithful = swept.circuits, swept.faithfulness
    table = pd.DataFrame(
        {
            "fraction": values,
            "edges": requested,
            "effective_edges": [c.n_edges_in_graph for c in circuits],
            "effective_fraction": [c.n_edges_in_graph / n_edges for c in circuits],
            "nodes": [c.n_nodes_in_graph for c in circuits],
            "faithfulness": faithful,
            "metric": swept.metrics,
        }
    )
    cpr, cmd, mean = faithfulness_areas(values, faithful)
    return Evaluation(table, cpr, cmd, mean, swept.clean, swept.empty, selection, ablation, n_edges)
