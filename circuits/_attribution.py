"""Gradient attribution in one engine: AtP (nodes), EAP (edges), EAP-IG (integrated gradients).

Every method is "activation difference x gradient":

- AtP scores a node n with ``sum (a_source(n) - a_base(n)) * dm/da(n)``;
- EAP scores an edge u -> v with ``sum (a_source(u) - a_base(u)) * dm/dx_v``, x_v being the
  residual copy that reader v (a head's q/k/v input, an MLP's input, the logits) reads;
- EAP-IG averages the gradient over ``ig_steps`` points on the straight line from the base
  input embeddings towards the source ones (left Riemann sum: the base end is included, the
  source end is not), so with one step it is EAP; ``ig_alphas`` gives the points explicitly
  (``(0, 1)``: the clean-corrupted method, the mean of the gradients at both runs).

Sums run over prompts (the metric is their mean), positions and d_model. The whole batch goes
through one forward and one backward pass (the IG steps ride along as stacked copies);
``batch_size`` only splits very large tasks.

``direction="denoising"`` (default) linearises at the corrupted run and patches clean values in,
so scores estimate ``m(patched) - m(corrupt)``; ``"noising"`` linearises at the clean run.
``gradient_rules`` takes a context manager factory that changes the backward pass (the LRP rules
of RelP) without changing the forward one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import Tensor

from interp import (
    CircuitGraph,
    GraphLayout,
    InterpError,
    ReaderGroup,
    Site,
    TransformerModel,
    progress_bar,
)

from ._edges import check_layout, chunked_metric, prepare_edge_model
from ._memory import MemoryBudget, check_count
from ._options import Component, Direction, IgOver, check_option
from ._patching import COMPONENTS, base_and_source, check_component
from ._tasks import Task

__all__ = ["attribution_patching", "edge_attribution", "node_attribution"]

GradientRules = Callable[[TransformerModel], AbstractContextManager[Any]] | None


def _path(ig_steps: int, ig_alphas: Sequence[float] | None) -> tuple[float, ...]:
    """The points on the straight line from the base (0) to the source (1) input embeddings
    where gradients are taken and averaged: ``k / ig_steps`` for k < ig_steps (a left Riemann
    sum), or ``ig_alphas`` as given (``(0, 1)`` is the clean-corrupted method)."""
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise InterpError(f"ig_steps must be an int >= 1; got {ig_steps!r}.")
    if ig_alphas is None:
        return tuple(k / ig_steps for k in range(ig_steps))
    alphas = tuple(float(a) for a in ig_alphas)
    if not alphas or alphas[0] != 0.0 or not all(0.0 <= a <= 1.0 for a in alphas):
        raise InterpError(
            "ig_alphas must be points in [0, 1] that start at 0 (the base run, whose "
            f"activations the scores are taken from); got {tuple(ig_alphas)!r}."
        )
    return alphas


def _prompt_chunks(n: int, copies: int, rows_per_pass: int) -> Iterator[slice]:
    size = max(1, rows_per_pass // copies)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@contextlib.contextmanager
def _rules(model: TransformerModel, gradient_rules: GradientRules) -> Iterator[None]:
    if gradient_rules is None:
        yield
    else:
        with gradient_rules(model):
            yield


class _Pass(NamedTuple):
    """One chunk's attribution pass: activations of the base and source runs and the
    gradients of the metric (summed over IG steps) at the requested sites."""

    base: dict[str, Tensor]
    source: dict[str, Tensor]
    grads: dict[str, Tensor]
    value: float  # the metric of the base run (the gradient run's first IG copy with one step)


def _attribution_pass(
    model: TransformerModel,
    task: Task,
    sites: list[str],
    direction: Direction,
    alphas: tuple[float, ...],
    gradient_rules: GradientRules,
    source_sites: list[str] | None = None,
    src: dict[str, Tensor] | None = None,
) -> _Pass:
    """Two passes: the source run without gradients (at ``source_sites``, by default
    ``sites``; skipped when ``src`` holds it already), then one forward/backward over the
    base prompts stacked once per point of the path.

    Copy k of the base prompts runs with input embeddings ``e_base + alphas[k] (e_source -
    e_base)``. Where ``alphas[0] = 0``, copy 0 *is* the base run: its activations at ``sites``
    are the base activations, and no separate base run is needed. The gradients are those of
    the mean over the copies, summed over them."""
    base, source = base_and_source(task, direction)
    n = base.shape[0]
    wanted = sites if source_sites is None else source_sites
    if src is None:
        with torch.no_grad(), model.without_logits():
            _, src = model.run_with_cache(source, list(dict.fromkeys(["input", *wanted])))
    hooks: dict[str, Callable] = {}
    steps = len(alphas)
    if any(alpha != 0 for alpha in alphas):
        e_source = src["input"]

        def path(x: Tensor, site: Site) -> Tensor:
            a = torch.tensor(alphas, dtype=x.dtype, device=x.device)[:, None, None, None]
            x = x.unflatten(0, (steps, n))
            return (x + (e_source.to(x.dtype)[None] - x) * a).flatten(0, 1)

        hooks["input"] = path
    # the base activations (copy 0, where the path starts at 0) at the source run's sites
    kept = wanted if alphas[0] == 0 else []
    with _rules(model, gradient_rules), model.hooks(hooks), task.narrowed(model, steps) as vocab:
        measure = partial(task.measure, vocab=vocab)
        run = model.run_with_grads(base.repeat(steps, 1), measure, sites, activations=kept)
    # the metric is a mean over all copies, so the sum over copies is the mean over the path
    grads = {}
    for site in sites:
        grad = run.gradients[site]
        grads[str(Site.parse(site))] = grad if steps == 1 else grad.unflatten(0, (steps, n)).sum(0)
    acts = {str(Site.parse(s)): run.activations[s][:n] for s in kept}
    # with one step the run is the base run; with more, its mean mixes the path's copies
    value = float(run.value) if alphas == (0.0,) else float("nan")
    return _Pass(acts, src, grads, value)


def _alpha_groups(alphas: tuple[float, ...], rows_per_pass: int) -> list[tuple[float, ...]]:
    """The path's points in consecutive groups of at most ``rows_per_pass`` (all of them in
    one group when they fit), so that a pass never holds more rows than that; the first
    group starts with the base point 0."""
    size = max(1, min(len(alphas), rows_per_pass))
    return [alphas[i : i + size] for i in range(0, len(alphas), size)]


def _site_scores(
    model: TransformerModel,
    task: Task,
    sites: list[str],
    direction: Direction,
    alphas: tuple[float, ...],
    gradient_rules: GradientRules,
    rows_per_pass: int,
    progress: bool | None = False,
) -> tuple[dict[str, Tensor], float | None]:
    """Per site, ``(a_source - a_base) * gradient`` summed over prompts and d_model: shape
    (pos, [head]), in float32 or wider; and, with one step, the base metric. Prompts go in
    chunks (a bar over them with ``progress``); each chunk is weighted by its share of the
    mean."""
    n = len(task)
    total: dict[str, Tensor] = {}
    m_base = 0.0
    chunks = list(_prompt_chunks(n, len(alphas), rows_per_pass))
    for chunk in progress_bar(chunks, desc="attribution", progress=progress):
        run = _attribution_pass(model, task.subset(chunk), sites, direction, alphas, gradient_rules)
        weight = (chunk.stop - chunk.start) / n  # the metric is a mean over prompts
        m_base += run.value * weight
        for site in sites:
            delta = run.source[site].to(_accumulator_dtype(model)) - run.base[site]
            value = (delta * run.grads[site]).sum(-1).sum(0) * weight
            total[site] = value if site not in total else total[site] + value
        del run  # free this chunk's activations before the next one is computed
    return total, (m_base if len(alphas) == 1 else None)


def _accumulator_dtype(model: TransformerModel) -> torch.dtype:
    """Scores add up in float64 where the device has it, else float32 (never in the model's
    half precision)."""
    return torch.float32 if model.device.type == "mps" else torch.float64


def _rows_per_pass(
    model: TransformerModel,
    task: Task,
    rows_per_pass: int | None,
    max_memory: int | str | None,
    vectors: int | None = None,
) -> int:
    """Rows (prompt copies) per gradient pass: as given, or as many as ``max_memory`` holds."""
    if check_count("rows_per_pass", rows_per_pass) is not None:
        return rows_per_pass
    return MemoryBudget(model, max_memory).gradient_rows(task.clean.shape[1], vectors)


def attribution_patching(
    model: TransformerModel,
    task: Task,
    component: Component = "heads",
    *,
    per_position: bool = False,
    direction: Direction = "denoising",
    ig_steps: int = 1,
    ig_alphas: Sequence[float] | None = None,
    gradient_rules: GradientRules = None,
    rows_per_pass: int | None = None,
    max_memory: int | str | None = None,
) -> Tensor:
    """AtP estimates of :func:`activation_patching`'s cells, in the same shapes.

    Returns ``m(base) + score`` per cell, i.e. the estimated metric of the patched run, so the
    result compares directly with activation patching (subtract the base metric for effects).
    Prompts (times IG points) go through in passes of ``rows_per_pass`` rows, by default as
    many as ``max_memory`` holds (:class:`~circuits.MemoryBudget`); the result does not
    depend on them.
    """
    check_component(component)
    alphas = _path(ig_steps, ig_alphas)
    check_option("direction", direction, Direction)
    sites = [COMPONENTS[component].format(layer=layer) for layer in range(model.spec.n_layers)]
    rows = _rows_per_pass(model, task, rows_per_pass, max_memory, 2 * len(sites))
    per_site, m_base = _site_scores(model, task, sites, direction, alphas, gradient_rules, rows)
    total = torch.stack(
        [per_site[site] if per_position else per_site[site].sum(0) for site in sites]
    )
    if m_base is None:
        run = "corrupt" if direction == "denoising" else "clean"
        m_base = chunked_metric(model, task, run, max_memory)
    # the model's dtype, or float32 for a half-precision model
    dtype = torch.promote_types(next(model.bridge.parameters()).dtype, torch.float32)
    return (m_base + total).to(dtype)


def _writer_deltas(
    layout: GraphLayout, source: dict[str, Tensor], base: dict[str, Tensor]
) -> Tensor:
    """(writers, n, pos, d_model): every writer's source minus base activation, in layout order,
    on the first writer's device (writers may be spread over devices by a device map), in
    float32 at least (a half-precision model's activations). Writers first, so that the rows
    of a writer range are one (writers, n * pos * d_model) matrix without a copy."""
    first = source[layout.writer_groups[0].site]
    wide = torch.promote_types(first.dtype, torch.float32)
    n, pos, d = first.shape[0], first.shape[1], first.shape[-1]
    out = torch.empty(layout.n_writers, n, pos, d, dtype=wide, device=first.device)
    for g in layout.writer_groups:
        start, stop = g.index[0], g.index[-1] + 1  # a group's writers are consecutive
        a, b = (x[g.site].to(out.device) for x in (source, base))
        if not g.per_head:
            a, b = a[:, :, None], b[:, :, None]
        torch.sub(a, b, out=out[start:stop].permute(1, 2, 0, 3))
    return out


def _reader_runs(layout: GraphLayout) -> list[list[ReaderGroup]]:
    """Consecutive reader groups that read the same writers (a layer's q, k and v ports), so
    that one product per run scores all their edges."""
    runs: list[list[ReaderGroup]] = []
    for g in layout.reader_groups:
        if runs and runs[-1][0].n_prior == g.n_prior:
            runs[-1].append(g)
        else:
            runs.append([g])
    return runs


def _accumulate(
    edges: Tensor,
    nodes: Tensor,
    layout: GraphLayout,
    deltas: Tensor,
    grads: dict[str, Tensor],
    weight: float,
) -> None:
    """Add ``weight`` x (source - base) . gradient to every edge and node score; ``deltas``
    as :func:`_writer_deltas` makes them."""
    # one product per run of readers: (writers so far, n*pos*d) @ (n*pos*d, readers), in
    # float32 at least, summed into the accumulators' dtype, on the model's device
    flat = deltas.view(layout.n_writers, -1)
    runs = _reader_runs(layout)
    # one buffer for every run's gradients: a fresh one per run costs its page faults each time
    most = max(sum(len(g.index) for g in run) for run in runs)
    buffer = torch.empty(most, *deltas.shape[1:], dtype=deltas.dtype, device=flat.device)
    for run in runs:
        rows = [i for g in run for i in g.index]
        readers = buffer[: len(rows)]
        at = 0
        for g in run:
            grad = grads[g.site] if g.per_head else grads[g.site][:, :, None]
            readers[at : at + len(g.index)].copy_(grad.permute(2, 0, 1, 3))
            at += len(g.index)
        block = flat[: run[0].n_prior] @ readers.view(len(rows), -1).T
        edges[rows, : run[0].n_prior] += weight * block.T.to(edges.device, edges.dtype)
    for g in layout.writer_groups:  # per group: no stacked copy of every writer's gradient
        start, stop = g.index[0], g.index[-1] + 1
        grad = grads[g.site] if g.per_head else grads[g.site][:, :, None]
        grad = grad.permute(2, 0, 1, 3).to(deltas.device, deltas.dtype)
        products = (deltas[start:stop] * grad).sum((1, 2, 3))
        nodes[start:stop] += weight * products.to(nodes.device, nodes.dtype)


def _edge_matrix(
    model: TransformerModel,
    layout: GraphLayout,
    task: Task,
    direction: Direction,
    alphas: tuple[float, ...],
    gradient_rules: GradientRules,
    rows_per_pass: int,
    progress: bool | None,
) -> tuple[Tensor, Tensor]:
    """(readers, writers) edge scores and (writers,) node scores, IG over the inputs."""
    n = len(task)
    edges, nodes = _accumulators(model, layout)
    writer_sites = [g.site for g in layout.writer_groups]
    sites = [g.site for g in layout.reader_groups] + writer_sites
    # a pass holds (prompts x points) rows: when one prompt's points do not fit, the points
    # go in groups, each group's gradients weighted by its share of the path
    groups = _alpha_groups(alphas, rows_per_pass)
    chunks = list(_prompt_chunks(n, len(groups[0]), rows_per_pass))
    work = [(chunk, group) for chunk in chunks for group in groups]
    src: dict[str, Tensor] | None = None
    deltas: Tensor | None = None
    for chunk, group in progress_bar(work, desc="attribution", progress=progress):
        if group is groups[0]:  # a new chunk of prompts: its source and base runs
            src = deltas = None
        part = task.subset(chunk)
        run = _attribution_pass(
            model, part, sites, direction, group, gradient_rules, writer_sites, src
        )
        if deltas is None:  # the first group's first copy is the base run
            src = run.source
            deltas = _writer_deltas(layout, run.source, run.base)
        weight = (chunk.stop - chunk.start) / n * len(group) / len(alphas)
        _accumulate(edges, nodes, layout, deltas, run.grads, weight)
        del run  # free this pass's activations before the next one is computed
    return edges, nodes


def _accumulators(model: TransformerModel, layout: GraphLayout) -> tuple[Tensor, Tensor]:
    """Dense (readers, writers) edge and (writers,) node sums on the device of the model's
    output (its last module's under a device map)."""
    dtype, device = _accumulator_dtype(model), model.output_device
    edges = torch.zeros(layout.n_readers, layout.n_writers, dtype=dtype, device=device)
    return edges, torch.zeros(layout.n_writers, dtype=dtype, device=device)


def _activation_path_matrix(
    model: TransformerModel,
    layout: GraphLayout,
    task: Task,
    direction: Direction,
    alphas: tuple[float, ...],
    gradient_rules: GradientRules,
    rows_per_pass: int,
    progress: bool | None,
) -> tuple[Tensor, Tensor]:
    """Edge and node scores with IG along each writer group's activations (MIB's
    EAP-IG-activations).

    For every writer group (the input, each layer's attention, each MLP) and every point
    ``alpha`` of the path, one copy of the base prompts runs with that group's output replaced
    by ``a_base + alpha (a_source - a_base)`` (a constant: no gradient flows into the group
    through it) and everything else computed as usual. The gradients at every reader, averaged
    over all ``groups x points`` copies, multiply the plain runs' activation differences. The
    copies ride in passes of ``rows_per_pass`` rows."""
    n = len(task)
    edges, nodes = _accumulators(model, layout)
    writer_sites = [g.site for g in layout.writer_groups]
    sites = [g.site for g in layout.reader_groups] + writer_sites
    copies = [(g.site, alpha) for g in layout.writer_groups for alpha in alphas]
    chunk_size = max(1, min(n, rows_per_pass))
    per_pass = max(1, rows_per_pass // chunk_size)
    work = [
        (slice(start, min(n, start + chunk_size)), first)
        for start in range(0, n, chunk_size)
        for first in range(0, len(copies), per_pass)
    ]
    cached: tuple[slice, Tensor, dict[str, Tensor], dict[str, Tensor]] | None = None
    for chunk, first in progress_bar(work, desc="attribution", progress=progress):
        part = task.subset(chunk)
        if cached is None or cached[0] != chunk:
            cached = None  # the previous chunk's runs go before this one's are made
            base, source = base_and_source(part, direction)
            with torch.no_grad(), model.without_logits():
                _, src = model.run_with_cache(source, writer_sites)
                _, own = model.run_with_cache(base, writer_sites)
            cached = (chunk, base, src, own)
        _, base, src, own = cached
        batch = copies[first : first + per_pass]
        hooks = _interpolation_hooks(batch, src, own)
        narrow = part.narrowed(model, len(batch))
        with _rules(model, gradient_rules), model.hooks(hooks), narrow as vocab:
            measure = partial(part.measure, vocab=vocab)
            run = model.run_with_grads(base.repeat(len(batch), 1), measure, sites, activations=[])
        m = base.shape[0]
        grads = {
            str(Site.parse(s)): run.gradients[s].unflatten(0, (len(batch), m)).sum(0) for s in sites
        }
        deltas = _writer_deltas(layout, src, own)
        # the metric is a mean over the pass's copies: scale its sum to the mean over all
        weight = (chunk.stop - chunk.start) / n * len(batch) / len(copies)
        _accumulate(edges, nodes, layout, deltas, grads, weight)
        del run, grads, deltas
    return edges, nodes


def _interpolation_hooks(
    batch: list[tuple[str, float]], source: dict[str, Tensor], base: dict[str, Tensor]
) -> dict[str, Callable[[Tensor, Site], Tensor]]:
    """Writer hooks for a pass whose copy i replaces group ``batch[i][0]``'s output by the
    point ``batch[i][1]`` between its base and source activations."""
    by_site: dict[str, list[tuple[int, float]]] = {}
    for i, (site, alpha) in enumerate(batch):
        by_site.setdefault(site, []).append((i, alpha))

    def hook(site: str, places: list[tuple[int, float]]) -> Callable[[Tensor, Site], Tensor]:
        def interpolate(x: Tensor, _: Site) -> Tensor:
            x = x.unflatten(0, (len(batch), -1))
            a, b = base[site].to(x.dtype), source[site].to(x.dtype)
            rows = [i for i, _ in places]
            points = torch.stack([a + alpha * (b - a) for _, alpha in places])
            keep = torch.ones(len(batch), dtype=torch.bool, device=x.device)
            keep[rows] = False
            full = x.detach().clone()
            full[rows] = points
            shape = (len(batch),) + (1,) * (x.ndim - 1)
            return torch.where(keep.view(shape), x, full).flatten(0, 1)

        return interpolate

    return {site: hook(site, places) for site, places in by_site.items()}


def edge_attribution(
    model: TransformerModel,
    graph: CircuitGraph | None,
    task: Task,
    *,
    ig_steps: int = 1,
    ig_alphas: Sequence[float] | None = None,
    ig_over: IgOver = "inputs",
    direction: Direction = "denoising",
    gradient_rules: GradientRules = None,
    rows_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> CircuitGraph:
    """EAP (``ig_steps=1``) or EAP-IG edge scores over the model's full graph.

    Grouped-query models are ungrouped first, so each query head's ``<k>``/``<v>`` port is its
    own copy of the residual its KV head reads; their scores add up to what the shared KV input
    would get. Node scores (AtP of each writer) come along for free.

    ``ig_over="inputs"`` (EAP-IG, Hanna et al. 2024) walks the path on the input embeddings,
    all points in one pass. ``"activations"`` (MIB's EAP-IG-activations) walks it on each
    writer group's output in turn (the input, each attention layer, each MLP), the rest of the
    model computed as usual: ``2 n_layers + 1`` times the gradient passes, and the gradients of
    a group's own readers come only from the copies that leave that group alone.

    Prompts (times IG points) go through in passes of ``rows_per_pass`` rows, by default as
    many as ``max_memory`` bytes of working memory hold (``"2GB"`` works too; see
    :class:`~circuits.MemoryBudget`). Scores add up exactly over passes, in float64 (float32
    where the device has no float64) on the model's device, whatever the model's dtype.

    Returns
    -------
    CircuitGraph
        The graph with edge scores and node scores (logits unscored).
    """
    alphas = _path(ig_steps, ig_alphas)
    check_option("direction", direction, Direction)
    check_option("ig_over", ig_over, IgOver)
    edge_model, layout = prepare_edge_model(model)
    graph = CircuitGraph.from_model(model) if graph is None else graph
    check_layout(graph, layout)
    matrix = _edge_matrix if ig_over == "inputs" else _activation_path_matrix
    rows = _rows_per_pass(edge_model, task, rows_per_pass, max_memory)
    edges, nodes = matrix(
        edge_model, layout, task, direction, alphas, gradient_rules, rows, progress
    )
    return graph.with_scores(
        edge_scores=layout.from_matrix(edges.cpu()).float(),
        node_scores=layout.node_values(nodes.cpu()).float(),
        method="eap" if len(alphas) == 1 else "eap-ig",
        metric=task.metric_name,
        task=task.name,
        meta={
            **graph.meta,
            "direction": direction,
            "ig_alphas": list(alphas),
            "ig_over": ig_over,
            "n_prompts": len(task),
        },
    )


def node_attribution(
    model: TransformerModel,
    graph: CircuitGraph | None,
    task: Task,
    *,
    ig_steps: int = 1,
    ig_alphas: Sequence[float] | None = None,
    direction: Direction = "denoising",
    gradient_rules: GradientRules = None,
    rows_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> CircuitGraph:
    """AtP (or, with ``ig_steps > 1``, integrated-gradient) scores of the graph's nodes.

    Chunked like :func:`edge_attribution` (``rows_per_pass``, ``max_memory``)."""
    alphas = _path(ig_steps, ig_alphas)
    check_option("direction", direction, Direction)
    graph = CircuitGraph.from_model(model) if graph is None else graph
    layout = check_layout(graph, GraphLayout.of(model.spec))
    sites = [g.site for g in layout.writer_groups]
    n = len(task)
    rows = _rows_per_pass(model, task, rows_per_pass, max_memory, 2 * len(sites))
    per_site, _ = _site_scores(
        model, task, sites, direction, alphas, gradient_rules, rows, progress
    )
    per_writer = torch.cat([per_site[site].sum(0).reshape(-1).cpu() for site in sites])
    return graph.with_scores(
        node_scores=layout.node_values(per_writer).float(),
        method="atp" if len(alphas) == 1 else "ig-nodes",
        metric=task.metric_name,
        task=task.name,
        meta={
            **graph.meta,
            "direction": direction,
            "ig_steps": len(alphas),
            "ig_alphas": list(alphas),
            "n_prompts": n,
        },
    )
