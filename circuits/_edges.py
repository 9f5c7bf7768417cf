"""Edge-level patching (path patching) and circuit faithfulness.

An edge u -> v is patched when reader v sees writer u's *source* activation instead of the one u
has in the current run, while every other reader of u still sees the current one. In one
forward pass each reader's input becomes (EAP-IG's evaluation, ACDC's edge patching)::

    x_v = x_v  +  sum over patched edges (u -> v) of  (a_u^source - a_u^current)

Faithfulness of a circuit C runs the clean prompts with every edge outside C ablated: patched
to its corrupted activation, to the mean corrupted activation, or to zero. It is
``(m(C) - m(empty)) / (m(clean) - m(empty))``, where the empty circuit has every edge ablated (for
corrupted patching that is the corrupted run).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

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

from ._memory import MemoryBudget, check_count, prompt_chunks
from ._options import Ablation, Direction, Level, Run, Source, check_option
from ._tasks import Task

__all__ = [
    "PASS_BYTES",
    "Sweep",
    "baselines",
    "check_layout",
    "chunked_metric",
    "circuit_metrics",
    "default_masks_per_pass",
    "edge_patching",
    "exact_edge_scores",
    "faithfulness",
    "faithfulness_curve",
    "normalised",
    "plot_faithfulness",
    "prepare_edge_model",
    "sweep",
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
    model: TransformerModel, layout: GraphLayout, task: Task, source: str
) -> dict[str, Tensor]:
    """Writer activations of the source run, one row per prompt; empty for ``zero`` (a writer
    without a source activation is patched to zero)."""
    return _source_run(model, layout, task, source)[0]


def _source_run(
    model: TransformerModel, layout: GraphLayout, task: Task, source: str
) -> tuple[dict[str, Tensor], float | None]:
    """The source run's writer activations (empty for ``zero``) and its metric (``None`` for
    ``zero``): the corrupted baseline comes with the corrupted source run, not in a pass of
    its own."""
    if source == "zero":
        return {}, None
    tokens = task.clean if source == "clean" else task.corrupt
    with task.narrowed(model) as vocab:
        logits, cache = model.run_with_cache(tokens, _writer_sites(layout))
    metric = float(task.measure(logits, vocab=vocab))
    return {site: cache[site] for site in _writer_sites(layout)}, metric


def _mean_writers(
    model: TransformerModel, layout: GraphLayout, task: Task, prompts: int
) -> dict[str, Tensor]:
    """Each writer's corrupted activation averaged over prompts per position, (1, pos, ...),
    summed over chunks of ``prompts`` prompts."""
    if not task.equal_lengths:
        raise InterpError(
            "Mean ablation averages each position over prompts, so all prompts must "
            "have the same length; use one template (template_ids=[...])."
        )
    n, sums = len(task), {}
    for chunk in prompt_chunks(n, prompts):
        with model.without_logits():
            _, cache = model.run_with_cache(task.corrupt[chunk], _writer_sites(layout))
        for site in _writer_sites(layout):
            part = cache[site].sum(0, keepdim=True, dtype=torch.float64)
            sums[site] = part if site not in sums else sums[site] + part
        del cache
    dtype = next(model.bridge.parameters()).dtype
    return {site: (total / n).to(dtype) for site, total in sums.items()}


class _EdgePatcher:
    """Forward hooks that record writer deltas and correct reader inputs, for ``copies``
    stacked copies of the batch each with its own (reader, writer) patch mask.

    ``scratch`` keeps the deltas' buffer between the passes of one call: a fresh one per pass
    costs its page faults every time (tens of MB on GPT-2-small's shapes)."""

    def __init__(
        self,
        layout: GraphLayout,
        patched: Tensor,
        source: dict[str, Tensor],
        n: int,
        scratch: dict[tuple, Tensor] | None = None,
    ) -> None:
        # source: each writer site's activations for the n prompts, or one row for all of them
        # (shared by every copy); a site missing from it is patched to zero
        self.layout, self.patched, self.source, self.n = layout, patched, source, n
        self.copies = patched.shape[0]
        self.scratch = {} if scratch is None else scratch
        self.deltas: Tensor | None = None  # (copies * n, pos, writers, d_model)
        self.total: Tensor | None = None  # sum of all deltas so far, (copies * n, pos, d_model)

    def hooks(self) -> dict[str, Callable[[Tensor, Site], Tensor | None]]:
        fns: dict[str, Callable] = {}
        for g in self.layout.writer_groups:
            fns[g.site] = self._writer(g)
        for g in self.layout.reader_groups:
            fns[g.site] = self._reader(g)
        return fns

    def _buffer(self, x: Tensor) -> Tensor:
        """The deltas' buffer for this pass; every writer's slot is written before any
        reader reads it (a reader reads only the writers computed before it)."""
        b, p, d = x.shape[0], x.shape[1], x.shape[-1]
        key = (b, p, self.layout.n_writers, d, x.dtype, x.device)
        if key not in self.scratch:
            self.scratch.clear()  # one buffer at a time: the last chunk may be smaller
            self.scratch[key] = torch.empty(key[:4], dtype=x.dtype, device=x.device)
        return self.scratch[key]

    def _writer(self, group: WriterGroup) -> Callable[[Tensor, Site], None]:
        start, stop = group.index[0], group.index[-1] + 1  # a group's writers are consecutive

        def record(x: Tensor, site: Site) -> None:
            if self.deltas is None:
                self.deltas = self._buffer(x)
                self.total = torch.zeros_like(self.deltas[:, :, 0])
            slot = self.deltas[:, :, start:stop] if group.per_head else self.deltas[:, :, start]
            source = self.source.get(group.site)
            per_copy = x.view(self.copies, self.n, *x.shape[1:])
            out = slot.view(self.copies, self.n, *slot.shape[1:])
            if x.device != slot.device:  # a writer on another device (device_map)
                delta = -per_copy if source is None else source - per_copy
                out.copy_(delta)
            elif source is None:  # zero ablation
                torch.neg(per_copy, out=out)
            else:
                torch.sub(source, per_copy, out=out)
            self.total += slot.sum(2) if group.per_head else slot

        return record

    def _reader(self, group: ReaderGroup) -> Callable[[Tensor, Site], Tensor | None]:
        def correct(x: Tensor, site: Site) -> Tensor | None:
            mask = self.patched[:, list(group.index), : group.n_prior]  # (copies, h, w)
            if not bool(mask.any()):
                return None
            k = self.copies
            # (copies, prompts x positions, writers so far, d_model): a view, no copy
            deltas = self.deltas[:, :, : group.n_prior]
            deltas = deltas.view(k, -1, group.n_prior, deltas.shape[-1])
            onto = x.to(deltas.device).reshape(k, deltas.shape[1], len(group.index), -1)
            keep = ~mask
            if int(mask.sum()) <= int(keep.sum()):
                out = _mix(deltas, mask, onto.clone())
            else:  # most edges patched: everything minus the kept ones
                total = self.total.view(k, -1, 1, self.total.shape[-1])
                out = _mix(deltas, keep, onto + total, sign=-1.0)
                # a copy with nothing patched (a baseline riding along) stays exactly its
                # run: total minus every delta is only zero up to rounding
                unpatched = ~mask.flatten(1).any(1)
                if bool(unpatched.any()):
                    out[unpatched] = onto[unpatched]
            return out.view(x.shape).to(x.device)

        return correct


def _mix(deltas: Tensor, mask: Tensor, into: Tensor, sign: float = 1.0) -> Tensor:
    """``into[k, r, h] += sign * sum_w mask[k, h, w] deltas[k, r, w]``, in place: each reader's
    input plus (or minus) its sum of the chosen writers' deltas, ``into`` being a contiguous
    (copies, rows, readers, d_model) tensor of the caller's own, as one batched product per
    row that adds into it.

    Writers no copy chooses are left out of the product when they are most of them (a copy
    of the others' deltas costs less than multiplying zeros); else the product runs over
    every writer, reading the deltas in place."""
    used = mask.any(0).any(0)
    if int(used.sum()) * 3 < len(used):
        at = used.nonzero().flatten()
        deltas, mask = deltas[:, :, at], mask[:, :, at]
    k, rows, w, d = deltas.shape
    h = mask.shape[1]
    weights = mask.to(deltas.dtype)[:, None].expand(k, rows, h, w).reshape(k * rows, h, w)
    into.view(k * rows, h, d).baddbmm_(weights, deltas.reshape(k * rows, w, d), alpha=sign)
    return into


PASS_BYTES = 512 * 2**20  # the working memory of edge_patching's passes by default
# (max_memory=None); every other method defaults to circuits.DEFAULT_MAX_MEMORY


def default_masks_per_pass(
    model: TransformerModel, task: Task, layout: GraphLayout, max_memory: int | str | None = None
) -> int:
    """How many patch masks one forward pass carries by default: as many copies of the task's
    prompts as ``max_memory`` bytes hold (writer deltas and the pass's own activations:
    :meth:`MemoryBudget.patch_rows`), at least one. ``max_memory=None``: :data:`PASS_BYTES`."""
    budget = MemoryBudget(model, PASS_BYTES if max_memory is None else max_memory)
    return max(1, budget.patch_rows(task.clean.shape[1]) // len(task))


def _patch_plan(
    model: TransformerModel,
    task: Task,
    copies: int,
    masks_per_pass: int | None,
    max_memory: int | str | None,
) -> tuple[int, int]:
    """(masks per pass, prompts per pass): ``masks_per_pass`` as given, else as many as
    fit; prompts then as many as fit beside them (all of them when everything fits)."""
    n = len(task)
    rows = MemoryBudget(model, PASS_BYTES if max_memory is None else max_memory).patch_rows(
        task.clean.shape[1]
    )
    if check_count("masks_per_pass", masks_per_pass) is None:
        masks_per_pass = max(1, min(copies, rows // n))
    return masks_per_pass, max(1, min(n, rows // masks_per_pass))


def edge_patching(
    model: TransformerModel,
    task: Task,
    patched: Tensor,
    *,
    run: Run = "clean",
    source: Source = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = False,
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
    source : {"clean", "corrupt", "mean", "zero"}
        Where patched writers' activations come from (``mean``: corrupted activations averaged
        over prompts, per position; ``zero``: zeros).
    masks_per_pass : int, optional
        Masks stacked into one forward pass (the source run is shared by all passes); by
        default as many as fit in ``max_memory``.
    max_memory : int or str, optional
        Working memory the passes may hold (bytes, or ``"2GB"``; :data:`PASS_BYTES` when not
        given). Prompts go through in chunks when all of them do not fit beside the masks; the
        metric, a mean over prompts, adds up exactly over chunks.
    progress : bool, optional
        A bar over the passes (``None``: on a terminal).

    Returns
    -------
    Tensor of shape (copies,) (or a scalar for one mask): the mean logit difference.

    Examples
    --------
    >>> model, layout = prepare_edge_model(load_model("tiny-gpt2"))
    >>> task = ioi_task(model, 2)
    >>> every = layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool))
    >>> corrupted = task.measure(model(task.corrupt))  # every edge patched: the corrupted run
    >>> abs(float(edge_patching(model, task, every) - corrupted)) < 1e-5
    True
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
    if patched.ndim != 3 or patched.shape[1:] != (layout.n_readers, layout.n_writers):
        raise InterpError(
            f"patched must have shape (readers={layout.n_readers}, writers={layout.n_writers}) "
            f"or (copies, readers, writers); got {tuple(patched.shape)}."
        )
    values, _ = _patch_masks(
        model, task, patched, run, source, masks_per_pass, max_memory, progress
    )
    values = values.to(torch.promote_types(next(model.bridge.parameters()).dtype, torch.float32))
    return values[0] if single else values


def _patch_masks(
    model: TransformerModel,
    task: Task,
    patched: Tensor,
    run: str,
    source: str,
    masks_per_pass: int | None,
    max_memory: int | str | None,
    progress: bool | None,
) -> tuple[Tensor, float | None]:
    """:func:`edge_patching`'s passes, checked arguments: the metric of each mask (float64,
    (copies,)) and that of the source run (``None`` for ``mean`` and ``zero``), both means
    over prompts. Per chunk of prompts: one source run, then ``masks_per_pass`` masks a pass."""
    masks_per_pass, prompts = _patch_plan(model, task, len(patched), masks_per_pass, max_memory)
    n, layout = len(task), GraphLayout.of(model.spec)
    values = torch.zeros(len(patched), dtype=torch.float64)
    source_metric: float | None = None if source in ("mean", "zero") else 0.0
    chunks = list(prompt_chunks(n, prompts))
    work = [(c, s) for c in chunks for s in range(0, patched.shape[0], masks_per_pass)]
    with torch.no_grad():
        mean = _mean_writers(model, layout, task, prompts) if source == "mean" else None
        src: dict[str, Tensor] = {}
        scratch: dict[tuple, Tensor] = {}  # the deltas' buffer, kept from pass to pass
        for chunk, start in progress_bar(work, desc="edge patching", progress=progress):
            part = task.subset(chunk)
            if start == 0:  # a new prompt chunk: its source run (the last one's goes first)
                src = {}
                if mean is not None:
                    src = mean
                else:
                    src, measured = _source_run(model, layout, part, source)
                    if measured is not None:
                        source_metric += measured * len(part) / n
            masks = patched[start : start + masks_per_pass].to(model.device, torch.bool)
            patcher = _EdgePatcher(layout, masks, src, len(part), scratch)
            tokens = part.clean if run == "clean" else part.corrupt
            with model.hooks(patcher.hooks()), part.narrowed(model, len(masks)) as vocab:
                logits = model(tokens.repeat(len(masks), 1))
            # the metric is a mean over prompts: each chunk adds its share
            value = part.measure(logits, per_copy=True, vocab=vocab).double().cpu()
            values[start : start + len(masks)] += value * (len(part) / n)
            del patcher, logits
    return values, source_metric


def _circuit_mask(layout: GraphLayout, graph: CircuitGraph) -> Tensor:
    """Patch mask of a circuit: every real edge that is not in the circuit."""
    in_circuit = (
        graph.edge_in_graph
        & graph.node_in_graph[graph.edge_src]
        & graph.node_in_graph[graph.edge_dst]
    )
    return check_layout(graph, layout).to_matrix(~in_circuit)


def baselines(
    model: TransformerModel, task: Task, max_memory: int | str | None = None
) -> tuple[float, float]:
    """Metric on the clean and on the corrupted prompts (in chunks of prompts that fit in
    ``max_memory``; the metric is a mean over them)."""
    return chunked_metric(model, task, "clean", max_memory), chunked_metric(
        model, task, "corrupt", max_memory
    )


def chunked_metric(
    model: TransformerModel, task: Task, run: str, max_memory: int | str | None = None
) -> float:
    """The metric of the clean or the corrupted run (``run``), in chunks of prompts."""
    budget = MemoryBudget(model, PASS_BYTES if max_memory is None else max_memory)
    n, total = len(task), 0.0
    with torch.no_grad():
        for chunk in prompt_chunks(n, budget.patch_rows(task.clean.shape[1])):
            part = task.subset(chunk)
            with part.narrowed(model) as vocab:
                logits = model(part.clean if run == "clean" else part.corrupt)
            total += float(part.measure(logits, vocab=vocab)) * len(part) / n
    return total


def circuit_metrics(
    model: TransformerModel,
    task: Task,
    circuits: Sequence[CircuitGraph],
    *,
    ablation: Ablation = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> tuple[Tensor, float, float]:
    """The metric of each circuit with every edge outside it ablated, of the full model and of
    the empty circuit: ``(m(C) per circuit, m(N), m(empty))``.

    The circuits ride in one set of edge-patching passes (as few as ``masks_per_pass``, or
    ``max_memory``, allows): all circuits (already pruned: the in-graph edges between in-graph
    nodes are kept) and, for mean and zero ablation, the empty circuit (a mask that patches
    everything). Under corrupted patching the empty circuit is the corrupted run, which is
    also the source run that every pass reads, so it costs nothing more. The full model is a
    plain forward of the clean prompts: a patching pass would carry every head's own copy of
    its q/k/v inputs for a mask that patches nothing, about twice a plain forward's time on
    GPT-2-small's shapes. Per chunk of prompts: one source run and
    ``ceil(circuits / masks_per_pass)`` patched passes, and one clean forward.
    """
    check_option("ablation", ablation, Ablation)
    model, layout = prepare_edge_model(model)
    masks = [_circuit_mask(layout, circuit) for circuit in circuits]
    if ablation != "corrupt":  # the empty circuit: every edge ablated
        masks.append(layout.to_matrix(torch.ones(len(layout.edge_src), dtype=torch.bool)))
    dtype = torch.promote_types(next(model.bridge.parameters()).dtype, torch.float32)
    clean = chunked_metric(model, task, "clean", max_memory)
    if not masks:  # no circuit, corrupted patching: the empty circuit is the corrupted run
        return (
            torch.zeros(0, dtype=dtype),
            clean,
            chunked_metric(model, task, "corrupt", max_memory),
        )
    values, source_metric = _patch_masks(
        model, task, torch.stack(masks), "clean", ablation, masks_per_pass, max_memory, progress
    )
    empty = source_metric if source_metric is not None else float(values[-1].to(dtype))
    return values[: len(circuits)].to(dtype), clean, empty


class Sweep(NamedTuple):
    """What :func:`sweep` returns: per size, the circuit, its metric and its faithfulness;
    and the two baselines they share."""

    circuits: list[CircuitGraph]
    metrics: list[float]
    faithfulness: list[float]
    clean: float
    empty: float


def sweep(
    model: TransformerModel,
    task: Task,
    select: Callable[[int], CircuitGraph],
    sizes: Sequence[int],
    *,
    ablation: Ablation = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Sweep:
    """The circuit ``select(k)`` of each size k, measured together by :func:`circuit_metrics`
    (one set of baselines, as few passes as fit), and normalised: the one sweep behind
    :func:`faithfulness_curve` and :func:`circuits.evaluate`. An empty circuit is a row (the
    warning of selecting nothing is silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        circuits = [select(int(k)) for k in sizes]
    values, clean, empty = circuit_metrics(
        model,
        task,
        circuits,
        ablation=ablation,
        masks_per_pass=masks_per_pass,
        max_memory=max_memory,
        progress=progress,
    )
    metrics = [float(v) for v in values]
    return Sweep(circuits, metrics, [normalised(m, clean, empty) for m in metrics], clean, empty)


def normalised(value: float, clean: float, empty: float) -> float:
    """``(value - empty) / (clean - empty)``; NaN when clean and empty are equal."""
    gap = clean - empty
    return (value - empty) / gap if gap else float("nan")


def _result(value: float, clean: float, empty: float, circuit: CircuitGraph) -> dict[str, float]:
    return {
        "faithfulness": normalised(value, clean, empty),
        "metric": value,
        "clean": clean,
        "corrupt": empty,
        "n_edges": circuit.n_edges_in_graph,
        "n_nodes": circuit.n_nodes_in_graph,
    }


def faithfulness(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    *,
    ablation: Ablation = "corrupt",
    max_memory: int | str | None = None,
) -> dict[str, float]:
    """How much of the clean-vs-empty metric gap a circuit recovers.

    The circuit is ``graph``'s in-graph edges between in-graph nodes, pruned to those on a
    path from input to logits. Every other edge is ablated: patched to its corrupted
    activation (``corrupt``), to the mean corrupted activation per position (``mean``), or to
    zero (``zero``).

    Returns
    -------
    dict with ``faithfulness`` = (m(C) - m(empty)) / (m(clean) - m(empty)), ``metric``
    m(C), ``clean``, ``corrupt`` (m(empty): every edge ablated, which for ``corrupt`` is the
    corrupted run), ``n_edges``, ``n_nodes`` (of the pruned circuit).

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4)
    >>> graph = discover(model, task, "eap")
    >>> result = faithfulness(model, graph.top(20), task, ablation="zero")
    >>> sorted(result)
    ['clean', 'corrupt', 'faithfulness', 'metric', 'n_edges', 'n_nodes']
    """
    check_option("ablation", ablation, Ablation)
    circuit = graph.prune()
    values, clean, empty = circuit_metrics(
        model, task, [circuit], ablation=ablation, max_memory=max_memory
    )
    return _result(float(values[0]), clean, empty, circuit)


def faithfulness_curve(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    sizes: Sequence[int],
    *,
    level: Level = "edge",
    ablation: Ablation = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    executor: object = None,
) -> object:
    """Faithfulness of the top-k circuits of a scored graph for each k (a pandas DataFrame).

    The circuits share one set of baselines and ride together in as few edge-patching passes
    as ``masks_per_pass`` allows: per chunk of prompts, one source run and
    ``ceil((len(sizes) + 1) / masks_per_pass)`` patched passes (the full model rides along
    as a circuit of every edge; :func:`circuit_metrics`). See :func:`circuits.evaluate` for
    MIB's sweep over fractions of the edges, with its areas CPR and CMD.

    Returns
    -------
    pandas.DataFrame
        One row per size: ``k``, ``level`` and the keys of :func:`faithfulness`.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4)
    >>> graph = discover(model, task, "eap")
    >>> faithfulness_curve(model, graph, task, [5, 50], progress=False)["k"].tolist()
    [5, 50]
    """
    import pandas as pd

    check_option("level", level, Level)
    check_option("ablation", ablation, Ablation)
    if executor is not None:  # "ray": the sizes shared out to Ray workers
        from ._ray import sharded_curve

        return sharded_curve(
            executor,
            model,
            graph,
            task,
            sizes,
            level=level,
            ablation=ablation,
            masks_per_pass=masks_per_pass,
            max_memory=max_memory,
            progress=progress,
        )
    swept = sweep(
        model,
        task,
        lambda k: graph.top(k, level=level),
        sizes,
        ablation=ablation,
        masks_per_pass=masks_per_pass,
        max_memory=max_memory,
        progress=progress,
    )
    rows = [
        {"k": int(k), "level": level, **_result(value, swept.clean, swept.empty, circuit)}
        for k, value, circuit in zip(sizes, swept.metrics, swept.circuits, strict=True)
    ]
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
    edges_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Activation patching of every edge alone (slow, exact): m(edge patched) - m(base).

    Denoising runs the corrupted prompts and patches the clean activation into one edge;
    noising runs the clean prompts and patches the corrupted one. The reference that edge
    attribution methods are tested against. ``edges_per_pass`` edges ride in one pass (by
    default as many as ``max_memory`` holds beside all the prompts, at most 32).
    """
    check_option("direction", direction, Direction)
    model, layout = prepare_edge_model(model)
    run, source = ("corrupt", "clean") if direction == "denoising" else ("clean", "corrupt")
    check_layout(graph, layout)
    w, r = layout.edge_writer, layout.edge_reader
    if check_count("edges_per_pass", edges_per_pass) is None:
        edges_per_pass = min(32, _patch_plan(model, task, len(w), None, max_memory)[0])
    base = chunked_metric(model, task, run, max_memory)
    scores = torch.empty(len(w))
    for start in progress_bar(
        range(0, len(w), edges_per_pass), desc="exact edges", progress=progress
    ):
        idx = torch.arange(start, min(start + edges_per_pass, len(w)))
        masks = torch.zeros(len(idx), layout.n_readers, layout.n_writers, dtype=torch.bool)
        masks[torch.arange(len(idx)), r[idx], w[idx]] = True
        patched = edge_patching(
            model,
            task,
            masks,
            run=run,
            source=source,
            masks_per_pass=len(idx),
            max_memory=max_memory,
        )
        scores[idx] = patched.float() - base
    return scores
