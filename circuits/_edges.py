"""Edge-level patching (path patching) and circuit faithfulness.

An edge u -> v is patched when reader v sees writer u's *source* activation instead of the one u
has in the current run, while every other reader of u still sees the current one. In one
forward pass each reader's input becomes (EAP-IG's evaluation, ACDC's edge patching)::

    x_v = x_v  +  sum over patched edges (u -> v) of  (a_u^source - a_u^current)

Faithfulness of a circuit C runs the clean prompts with every edge outside C patched to its
corrupted (or mean) activation: ``(m(C) - m(corrupt)) / (m(clean) - m(corrupt))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from interp import (
    CircuitGraph,
    GraphLayout,
    InterpError,
    ReaderGroup,
    Site,
    TransformerModel,
    WriterGroup,
    progress_bar,
    ungrouped,
)

from ._options import Ablation, Direction, Level, Run, Source, check_option
from ._tasks import Task

__all__ = [
    "edge_patching",
    "faithfulness",
    "faithfulness_curve",
    "exact_edge_scores",
    "check_layout",
    "prepare_edge_model",
]


def prepare_edge_model(model: TransformerModel) -> tuple[TransformerModel, GraphLayout]:
    """The model edge methods run on (ungrouped if it uses grouped-query attention, built once
    per model: :func:`interp.ungrouped`) and its graph layout."""
    if model.spec.parallel_attn_mlp:
        raise InterpError("Edge methods support sequential attention/MLP blocks only.")
    return ungrouped(model), GraphLayout.of(model.spec)


def check_layout(graph: CircuitGraph, layout: GraphLayout) -> GraphLayout:
    """The graph's layout, which must be the model's (same layers, heads and block kind)."""
    if graph.layout is not layout:
        raise InterpError(
            f"The graph was built for another model shape ({graph.layout!r}) than this model's "
            f"({layout!r}); build it with CircuitGraph.from_model(model)."
        )
    return layout


def _writer_sites(layout: GraphLayout) -> list[str]:
    return [g.site for g in layout.writer_groups]


def _source_writers(
    model: TransformerModel, layout: GraphLayout, task: Task, source: str, copies: int
) -> dict[str, Tensor]:
    """Writer activations of the source run, stacked ``copies`` times along the batch."""
    tokens = {"clean": task.clean, "corrupt": task.corrupt, "mean": task.corrupt}[source]
    _, cache = model.run_with_cache(tokens, _writer_sites(layout))
    out = {}
    for site in _writer_sites(layout):
        acts = cache[site]
        if source == "mean":
            if not task.equal_lengths:
                raise InterpError(
                    "Mean ablation averages each position over prompts, so all prompts must "
                    "have the same length; use one template (template_ids=[...])."
                )
            acts = acts.mean(0, keepdim=True).expand_as(acts)
        out[site] = acts.repeat(copies, *([1] * (acts.ndim - 1)))
    return out


class _EdgePatcher:
    """Forward hooks that record writer deltas and correct reader inputs, for ``copies``
    stacked copies of the batch each with its own (reader, writer) patch mask."""

    def __init__(
        self, layout: GraphLayout, patched: Tensor, source: dict[str, Tensor], n: int
    ) -> None:
        self.layout, self.patched, self.source, self.n = layout, patched, source, n
        self.copies = patched.shape[0]
        self.deltas: Tensor | None = None  # (copies * n, pos, writers, d_model)
        self.total: Tensor | None = None  # sum of all deltas so far, (copies * n, pos, d_model)

    def hooks(self) -> dict[str, Callable[[Tensor, Site], Tensor | None]]:
        fns: dict[str, Callable] = {}
        for g in self.layout.writer_groups:
            fns[g.site] = self._writer(g)
        for g in self.layout.reader_groups:
            fns[g.site] = self._reader(g)
        return fns

    def _writer(self, group: WriterGroup) -> Callable[[Tensor, Site], None]:
        def record(x: Tensor, site: Site) -> None:
            delta = self.source[group.site] - x
            if self.deltas is None:
                b, p, d = x.shape[0], x.shape[1], x.shape[-1]
                self.deltas = x.new_zeros(b, p, self.layout.n_writers, d)
                self.total = x.new_zeros(b, p, d)
            if group.per_head:
                self.deltas[:, :, list(group.index)] = delta
                self.total += delta.sum(2)
            else:
                self.deltas[:, :, group.index[0]] = delta
                self.total += delta

        return record

    def _reader(self, group: ReaderGroup) -> Callable[[Tensor, Site], Tensor | None]:
        def correct(x: Tensor, site: Site) -> Tensor | None:
            mask = self.patched[:, list(group.index), : group.n_prior]  # (copies, h, w)
            if not bool(mask.any()):
                return None
            k, n = self.copies, self.n
            deltas = self.deltas[:, :, : group.n_prior].view(
                k, n, *self.deltas.shape[1:2], group.n_prior, -1
            )
            keep = ~mask
            if int(mask.sum()) <= int(keep.sum()):
                used = mask.any(0).any(0).nonzero().flatten()
                corr = torch.einsum(
                    "knpwd,khw->knphd", deltas[:, :, :, used], mask[:, :, used].to(deltas.dtype)
                )
            else:  # most edges patched: everything minus the kept ones
                used = keep.any(0).any(0).nonzero().flatten()
                total = self.total.view(k, n, -1, self.total.shape[-1])[:, :, :, None]
                corr = total - torch.einsum(
                    "knpwd,khw->knphd", deltas[:, :, :, used], keep[:, :, used].to(deltas.dtype)
                )
            corr = corr.reshape(k * n, *corr.shape[2:])
            return x + (corr if group.per_head else corr[:, :, 0])

        return correct


def edge_patching(
    model: TransformerModel,
    task: Task,
    patched: Tensor,
    *,
    run: Run = "clean",
    source: Source = "corrupt",
) -> Tensor:
    """The metric with chosen edges patched, for one or many masks at once.

    Parameters
    ----------
    model : TransformerModel
        Already prepared for edges (see :func:`prepare_edge_model`).
    task : Task
    patched : bool Tensor of shape (readers, writers) or (copies, readers, writers)
        True where reader v must see writer u's source activation (layout order).
    run : {"clean", "corrupt"}
        The prompts that are run.
    source : {"clean", "corrupt", "mean"}
        Where patched writers' activations come from (``mean``: corrupted activations averaged
        over prompts, per position).

    Returns
    -------
    Tensor of shape (copies,) (or a scalar for one mask): the mean logit difference.
    """
    check_option("run", run, Run)
    check_option("source", source, Source)
    if model.spec.n_kv_heads != model.spec.n_heads:
        raise InterpError(
            "edge_patching hooks each query head's own key and value input; run it on "
            "interp.ungrouped(model) (prepare_edge_model does this)."
        )
    layout = GraphLayout.of(model.spec)
    single = patched.ndim == 2
    patched = patched[None] if single else patched
    if patched.shape[1:] != (layout.n_readers, layout.n_writers):
        raise InterpError(
            f"patched must have shape (readers={layout.n_readers}, writers={layout.n_writers}); "
            f"got {tuple(patched.shape[1:])}."
        )
    copies, n = patched.shape[0], len(task)
    with torch.no_grad():
        src = _source_writers(model, layout, task, source, copies)
        tokens = (task.clean if run == "clean" else task.corrupt).repeat(copies, 1)
        patcher = _EdgePatcher(layout, patched.bool(), src, n)
        with model.hooks(patcher.hooks()):
            logits = model(tokens)
    values = task.logit_diff(logits, per_copy=True)
    return values[0] if single else values


def _circuit_mask(layout: GraphLayout, graph: CircuitGraph) -> Tensor:
    """Patch mask of a circuit: every real edge that is not in the circuit."""
    in_circuit = (
        graph.edge_in_graph
        & graph.node_in_graph[graph.edge_src]
        & graph.node_in_graph[graph.edge_dst]
    )
    return check_layout(graph, layout).to_matrix(~in_circuit)


def baselines(model: TransformerModel, task: Task) -> tuple[float, float]:
    """Metric on the clean and on the corrupted prompts."""
    with torch.no_grad():
        return float(task.logit_diff(model(task.clean))), float(
            task.logit_diff(model(task.corrupt))
        )


def faithfulness(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    *,
    ablation: Ablation = "corrupt",
) -> dict[str, float]:
    """How much of the clean-vs-corrupted metric gap a circuit recovers.

    Every edge outside the circuit (``graph``'s in-graph edges between in-graph nodes) is
    patched to its corrupted activation (or the mean corrupted activation per position).

    Returns
    -------
    dict with ``faithfulness`` = (m(C) - m(corrupt)) / (m(clean) - m(corrupt)), ``metric``
    m(C), ``clean``, ``corrupt``, ``n_edges``, ``n_nodes``.
    """
    check_option("ablation", ablation, Ablation)
    model, layout = prepare_edge_model(model)
    clean, corrupt = baselines(model, task)
    circuit = graph.prune()
    value = float(
        edge_patching(
            model,
            task,
            _circuit_mask(layout, circuit),
            run="clean",
            source="corrupt" if ablation == "corrupt" else "mean",
        )
    )
    if ablation == "mean":
        corrupt = float(
            edge_patching(
                model,
                task,
                _circuit_mask(
                    layout, graph.copy(edge_in_graph=torch.zeros_like(graph.edge_in_graph))
                ),
                run="clean",
                source="mean",
            )
        )
    gap = clean - corrupt
    return {
        "faithfulness": (value - corrupt) / gap if gap else float("nan"),
        "metric": value,
        "clean": clean,
        "corrupt": corrupt,
        "n_edges": circuit.n_edges_in_graph,
        "n_nodes": circuit.n_nodes_in_graph,
    }


def faithfulness_curve(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    sizes: Sequence[int],
    *,
    level: Level = "edge",
    ablation: Ablation = "corrupt",
    progress: bool | None = None,
) -> object:
    """Faithfulness of the top-k circuits of a scored graph for each k (a pandas DataFrame)."""
    import pandas as pd

    check_option("level", level, Level)
    check_option("ablation", ablation, Ablation)
    rows = []
    for k in progress_bar(list(sizes), desc="faithfulness", progress=progress):
        circuit = graph.top(int(k), level=level)
        result = faithfulness(model, circuit, task, ablation=ablation)
        rows.append({"k": int(k), "level": level, **result})
    return pd.DataFrame(rows)


def plot_faithfulness(curves: dict[str, object], path: str | None = None, ax: object = None):
    """Plot faithfulness against circuit size for one or several methods."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    for label, df in curves.items():
        ax.plot(df["n_edges"], df["faithfulness"], marker="o", label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("edges in circuit")
    ax.set_ylabel("normalised faithfulness")
    ax.legend()
    if fig is not None:
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=150)
            plt.close(fig)
    return ax


def exact_edge_scores(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    *,
    direction: Direction = "denoising",
    edges_per_pass: int = 32,
    progress: bool | None = None,
) -> Tensor:
    """Activation patching of every edge alone (slow, exact): m(edge patched) - m(base).

    Denoising runs the corrupted prompts and patches the clean activation into one edge;
    noising runs the clean prompts and patches the corrupted one. The reference that edge
    attribution methods are tested against.
    """
    check_option("direction", direction, Direction)
    model, layout = prepare_edge_model(model)
    run, source = ("corrupt", "clean") if direction == "denoising" else ("clean", "corrupt")
    check_layout(graph, layout)
    w, r = layout.edge_writer, layout.edge_reader
    with torch.no_grad():
        base = float(task.logit_diff(model(task.corrupt if run == "corrupt" else task.clean)))
    scores = torch.empty(len(w))
    for start in progress_bar(
        range(0, len(w), edges_per_pass), desc="exact edges", progress=progress
    ):
        idx = torch.arange(start, min(start + edges_per_pass, len(w)))
        masks = torch.zeros(len(idx), layout.n_readers, layout.n_writers, dtype=torch.bool)
        masks[torch.arange(len(idx)), r[idx], w[idx]] = True
        scores[idx] = edge_patching(model, task, masks, run=run, source=source).float() - base
    return scores
