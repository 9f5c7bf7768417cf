"""Gradient attribution in one engine: AtP (nodes), EAP (edges), EAP-IG (integrated gradients).

Every method is "activation difference x gradient":

- AtP scores a node n with ``sum (a_source(n) - a_base(n)) * dm/da(n)``;
- EAP scores an edge u -> v with ``sum (a_source(u) - a_base(u)) * dm/dx_v``, x_v being the
  residual copy that reader v (a head's q/k/v input, an MLP's input, the logits) reads;
- EAP-IG averages the gradient over ``ig_steps`` points on the straight line from the base
  input embeddings towards the source ones (left Riemann sum: the base end is included, the
  source end is not), so with one step it is EAP.

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
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

from interp import CircuitGraph, GradientRun, InterpError, Site, TransformerModel, progress_bar

from ._edges import prepare_edge_model
from ._layout import GraphLayout
from ._patching import COMPONENTS, Component, Direction, base_and_source, check_component
from ._tasks import Task

__all__ = ["attribution_patching", "edge_attribution", "node_attribution"]

GradientRules = Callable[[TransformerModel], AbstractContextManager[Any]] | None
DEFAULT_ROWS_PER_PASS = 32


def _check_steps(ig_steps: int) -> None:
    if isinstance(ig_steps, bool) or not isinstance(ig_steps, int) or ig_steps < 1:
        raise InterpError(f"ig_steps must be an int >= 1; got {ig_steps!r}.")


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


def _gradients(
    model: TransformerModel,
    task: Task,
    sites: list[str],
    base: Tensor,
    source: Tensor,
    ig_steps: int,
    gradient_rules: GradientRules,
) -> tuple[dict[str, Tensor], GradientRun]:
    """Gradients of the task metric at ``sites``, summed over the IG steps, and the run (with
    one step, its activations and value are the base run's).

    The base prompts are stacked ``ig_steps`` times; copy k runs with input embeddings
    ``e_base + (k / ig_steps) (e_source - e_base)``."""
    hooks: dict[str, Callable] = {}
    if ig_steps > 1:
        _, emb = model.run_with_cache(source, ["input"])
        _, base_emb = model.run_with_cache(base, ["input"])
        alphas = (
            torch.arange(ig_steps, dtype=base_emb["input"].dtype, device=base_emb["input"].device)
            / ig_steps
        )
        path = (
            base_emb["input"][None]
            + alphas[:, None, None, None] * (emb["input"] - base_emb["input"])[None]
        )
        path = path.flatten(0, 1)
        hooks["input"] = lambda x, site: path.to(x.dtype)
    tokens = base.repeat(ig_steps, 1)
    with _rules(model, gradient_rules), model.hooks(hooks):
        run = model.run_with_grads(tokens, task.logit_diff, sites)
    n = base.shape[0]
    return {
        str(Site.parse(s)): g.view(ig_steps, n, *g.shape[1:]).sum(0)
        for s, g in ((s, run.gradients[s]) for s in sites)
    }, run


def _site_scores(
    model: TransformerModel,
    task: Task,
    sites: list[str],
    direction: Direction,
    ig_steps: int,
    gradient_rules: GradientRules,
    rows_per_pass: int,
) -> tuple[dict[str, Tensor], float | None]:
    """Per site, ``(a_source - a_base) * gradient`` summed over prompts and d_model: shape
    (pos, [head]); and, with one step, the base metric. Prompts go in chunks; each chunk is
    weighted by its share of the mean."""
    n = len(task)
    total: dict[str, Tensor] = {}
    m_base = 0.0
    for chunk in _prompt_chunks(n, ig_steps, rows_per_pass):
        sub = task.subset(chunk)
        base, source = base_and_source(sub, direction)
        with torch.no_grad():
            _, src = model.run_with_cache(source, sites)
            cur = model.run_with_cache(base, sites)[1] if ig_steps > 1 else None
        grads, run = _gradients(model, sub, sites, base, source, ig_steps, gradient_rules)
        if cur is None:  # one step: the gradient run is the base run (rules keep its values)
            cur = run.activations
        weight = (chunk.stop - chunk.start) / n  # the metric is a mean over prompts
        m_base += float(run.value) * weight
        for site in sites:
            value = ((src[site] - cur[site]) * grads[site]).sum(-1).sum(0) * weight
            total[site] = value if site not in total else total[site] + value
    return total, (m_base if ig_steps == 1 else None)


def attribution_patching(
    model: TransformerModel,
    task: Task,
    component: Component = "heads",
    *,
    per_position: bool = False,
    direction: Direction = "denoising",
    ig_steps: int = 1,
    gradient_rules: GradientRules = None,
    rows_per_pass: int = DEFAULT_ROWS_PER_PASS,
) -> Tensor:
    """AtP estimates of :func:`activation_patching`'s cells, in the same shapes.

    Returns ``m(base) + score`` per cell, i.e. the estimated metric of the patched run, so the
    result compares directly with activation patching (subtract the base metric for effects).
    """
    check_component(component)
    _check_steps(ig_steps)
    base, _ = base_and_source(task, direction)
    sites = [COMPONENTS[component].format(layer=layer) for layer in range(model.spec.n_layers)]
    per_site, m_base = _site_scores(
        model, task, sites, direction, ig_steps, gradient_rules, rows_per_pass
    )
    total = torch.stack(
        [per_site[site] if per_position else per_site[site].sum(0) for site in sites]
    )
    if m_base is None:
        with torch.no_grad():
            m_base = float(task.logit_diff(model(base)))
    return m_base + total


def _writer_deltas(
    model: TransformerModel, layout: GraphLayout, task: Task, direction: Direction
) -> Tensor:
    """(n, pos, writers, d_model): source minus base activation of every writer."""
    base, source = base_and_source(task, direction)
    sites = [g.site for g in layout.writer_groups]
    with torch.no_grad():
        _, src = model.run_with_cache(source, sites)
        _, cur = model.run_with_cache(base, sites)
    n, pos = base.shape
    out = None
    for g in layout.writer_groups:
        delta = src[g.site] - cur[g.site]
        if out is None:
            out = delta.new_zeros(n, pos, layout.n_writers, delta.shape[-1])
        if g.per_head:
            out[:, :, list(g.index)] = delta
        else:
            out[:, :, g.index[0]] = delta
    return out


def _edge_matrix(
    model: TransformerModel,
    layout: GraphLayout,
    task: Task,
    direction: Direction,
    ig_steps: int,
    gradient_rules: GradientRules,
    rows_per_pass: int,
    progress: bool | None,
) -> tuple[Tensor, Tensor]:
    """(readers, writers) edge scores and (writers,) node scores."""
    n = len(task)
    edges = torch.zeros(layout.n_readers, layout.n_writers, dtype=torch.float64)
    nodes = torch.zeros(layout.n_writers, dtype=torch.float64)
    reader_sites = [g.site for g in layout.reader_groups]
    writer_sites = [g.site for g in layout.writer_groups]
    chunks = list(_prompt_chunks(n, ig_steps, rows_per_pass))
    for chunk in progress_bar(chunks, desc="attribution", progress=progress):
        sub = task.subset(chunk)
        deltas = _writer_deltas(model, layout, sub, direction)
        base, source = base_and_source(sub, direction)
        grads, _ = _gradients(
            model, sub, reader_sites + writer_sites, base, source, ig_steps, gradient_rules
        )
        weight = (chunk.stop - chunk.start) / n
        # one matmul per reader group: (h, n*pos*d) @ (n*pos*d, writers so far)
        flat = deltas.permute(0, 1, 3, 2).reshape(-1, layout.n_writers)
        for g in layout.reader_groups:
            grad = grads[g.site] if g.per_head else grads[g.site][:, :, None]
            grad = grad.permute(2, 0, 1, 3).reshape(len(g.index), -1)
            block = grad @ flat[:, : g.n_prior]
            edges[list(g.index), : g.n_prior] += weight * block.double().cpu()
        for g in layout.writer_groups:
            grad = grads[g.site] if g.per_head else grads[g.site][:, :, None]
            delta = deltas[:, :, list(g.index)]
            nodes[list(g.index)] += weight * (delta.double() * grad.double()).sum((0, 1, 3)).cpu()
    return edges, nodes


def edge_attribution(
    model: TransformerModel,
    graph: CircuitGraph | None,
    task: Task,
    *,
    ig_steps: int = 1,
    direction: Direction = "denoising",
    gradient_rules: GradientRules = None,
    rows_per_pass: int = DEFAULT_ROWS_PER_PASS,
    progress: bool | None = None,
) -> CircuitGraph:
    """EAP (``ig_steps=1``) or EAP-IG edge scores over the model's full graph.

    Grouped-query models are ungrouped first, so each query head's ``<k>``/``<v>`` port is its
    own copy of the residual its KV head reads; their scores add up to what the shared KV input
    would get. Node scores (AtP of each writer) come along for free.

    Returns
    -------
    CircuitGraph
        The graph with edge scores and node scores (logits unscored).
    """
    _check_steps(ig_steps)
    graph = CircuitGraph.from_model(model) if graph is None else graph
    edge_model, layout = prepare_edge_model(model)
    edges, nodes = _edge_matrix(
        edge_model, layout, task, direction, ig_steps, gradient_rules, rows_per_pass, progress
    )
    return graph.with_scores(
        edge_scores=layout.from_matrix(graph, edges).float(),
        node_scores=layout.node_values(graph, nodes).float(),
        method="eap" if ig_steps == 1 else "eap-ig",
        metric=task.metric_name,
        task=task.name,
        meta={**graph.meta, "direction": direction, "ig_steps": ig_steps, "n_prompts": len(task)},
    )


def node_attribution(
    model: TransformerModel,
    graph: CircuitGraph | None,
    task: Task,
    *,
    ig_steps: int = 1,
    direction: Direction = "denoising",
    gradient_rules: GradientRules = None,
    rows_per_pass: int = DEFAULT_ROWS_PER_PASS,
    progress: bool | None = None,
) -> CircuitGraph:
    """AtP (or, with ``ig_steps > 1``, integrated-gradient) scores of the graph's nodes."""
    _check_steps(ig_steps)
    graph = CircuitGraph.from_model(model) if graph is None else graph
    spec = model.spec
    sites = ["input"] + [
        s for layer in range(spec.n_layers) for s in (f"a{layer}.result", f"m{layer}")
    ]
    n = len(task)
    per_site = {
        site: value.double().sum(0)
        for site, value in _site_scores(
            model, task, sites, direction, ig_steps, gradient_rules, rows_per_pass
        )[0].items()
    }
    scores = torch.full((len(graph.node_names),), float("nan"), dtype=torch.float64)
    index = graph.node_index
    scores[index["input"]] = per_site["input"]
    for layer in range(spec.n_layers):
        for head in range(spec.n_heads):
            scores[index[f"a{layer}.h{head}"]] = per_site[f"a{layer}.result"][head]
        scores[index[f"m{layer}"]] = per_site[f"m{layer}"]
    return graph.with_scores(
        node_scores=scores.float(),
        method="atp" if ig_steps == 1 else "ig-nodes",
        metric=task.metric_name,
        task=task.name,
        meta={**graph.meta, "direction": direction, "ig_steps": ig_steps, "n_prompts": n},
    )
