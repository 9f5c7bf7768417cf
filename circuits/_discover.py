"""``discover``: one entry point for every circuit-discovery method, looked up in a registry.

A method is a function ``(model, task, level, **options) -> CircuitGraph`` registered under a
name with the levels it supports. Scores always estimate (or, for activation patching, measure)
``m(patched) - m(base)`` in the chosen direction; circuits keep the largest ``|score|``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp import (
    RULE_SETS,
    CircuitGraph,
    InterpError,
    TransformerModel,
    did_you_mean,
    gradient_rules,
)

from ._attribution import edge_attribution, node_attribution
from ._boundary import refine_circuit
from ._edges import exact_edge_scores
from ._masks import edge_pruning
from ._options import Level, check_option
from ._patching import activation_patching, base_and_source, lookahead_patching
from ._refined import refined_patching
from ._tasks import Task

__all__ = ["METHODS", "MethodEntry", "discover", "register_method"]

Method = Callable[..., CircuitGraph]


@dataclass(frozen=True)
class MethodEntry:
    name: str
    fn: Method
    levels: tuple[str, ...]
    description: str


METHODS: dict[str, MethodEntry] = {}


def register_method(
    name: str, *, levels: tuple[str, ...], description: str
) -> Callable[[Method], Method]:
    """Register a discovery method under ``name`` (a decorator)."""

    def add(fn: Method) -> Method:
        if name in METHODS:
            raise InterpError(f"A method named {name!r} is already registered.")
        METHODS[name] = MethodEntry(name, fn, levels, description)
        return fn

    return add


def discover(
    model: TransformerModel,
    task: Task,
    method: str = "eap-ig",
    level: str = "edge",
    *,
    executor: Any = None,
    checkpoint: str | os.PathLike[str] | None = None,
    **options: Any,
) -> CircuitGraph:
    """Score the model's graph for a task with a registered method.

    Parameters
    ----------
    model : TransformerModel
    task : Task
    method : str
        ``activation-patching``, ``atp``, ``eap``, ``eap-ig``, ``clean-corrupted``, ... (see
        ``METHODS``); the name of any transformer rule set in ``interp.RULE_SETS`` runs RelP
        under it.
    level : {"edge", "node"}
    executor : {None, "ray"} or RayExecutor, optional
        ``None`` runs in this process; ``"ray"`` (or a :class:`~circuits.RayExecutor`) shards
        the work over Ray actors (``pip install 'interp-toolkit[ray]'``): the gradient methods
        by prompts, node-level activation patching by cells. Same result within 1e-6.
    checkpoint : str or path, optional
        A folder keeping the plan and every finished shard of a sharded sweep (in this
        process too), each file written atomically: the same call after an interruption
        (Ctrl-C, ``kill -9``) runs only the missing shards and gives the identical result.
    **options
        Passed to the method (``direction``, ``ig_steps``, ...). Every method takes
        ``max_memory`` (bytes, or ``"2GB"``), the working memory its chunks may hold
        (:class:`~circuits.MemoryBudget`); the scores do not depend on it.

    Returns
    -------
    CircuitGraph
        Scored, nothing selected yet: use ``.top(k)`` / ``.threshold(x)`` for a circuit. The
        time taken is in ``graph.meta["seconds"]``.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> graph = discover(model, ioi_task(model, 4), "eap", "edge")
    >>> circuit = graph.top(20)
    """
    entry = METHODS.get(method)
    if entry is None and isinstance(method, str) and method in RULE_SETS:
        entry = _relp_entry(method)  # a rule set registered after this module was imported
    if entry is None:
        raise InterpError(
            f"Unknown method {method!r}; registered: {', '.join(METHODS)}."
            + did_you_mean(method, METHODS)
        )
    check_option("level", level, Level)
    if not getattr(model, "causal", True) and not task.equal_lengths:
        raise InterpError(
            "This model attends in both directions, and no attention mask is passed, so the "
            "real tokens of shorter prompts would attend to their padding; use prompts of one "
            "length (e.g. ioi_task(..., template_ids=[0]))."
        )
    if level not in entry.levels:
        raise InterpError(f"Method {method!r} scores {' and '.join(entry.levels)}s, not {level}s.")
    start = time.perf_counter()
    if executor is None and checkpoint is None:
        graph = entry.fn(model, task, level, **options)  # a new graph, ours to label
    else:
        from ._ray import sharded_discover  # ray is an optional dependency

        graph = sharded_discover(
            executor, model, task, entry.name, level, checkpoint=checkpoint, **options
        )
    graph.method = method
    graph.meta.update(level=level, seconds=time.perf_counter() - start, n_prompts=len(task))
    return graph


@register_method(
    "activation-patching",
    levels=("node", "edge"),
    description="patch each node (or, slowly, each edge) alone: the ground truth",
)
def _activation_patching(
    model: TransformerModel,
    task: Task,
    level: str,
    *,
    direction: str = "denoising",
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    graph = CircuitGraph.from_model(
        model, metric=task.metric_name, task=task.name, meta={"direction": direction}
    )
    if level == "edge":
        scores = exact_edge_scores(
            model, graph, task, direction=direction, progress=progress, **options
        )
        return graph.with_scores(edge_scores=scores)
    return _node_graph(
        model,
        task,
        graph,
        lambda component, **kw: activation_patching(
            model, task, component, direction=direction, progress=progress, **kw, **options
        ),
    )


@register_method(
    "lookahead",
    levels=("node",),
    description="k exact blocks after each patch, then the gradient (default k=2)",
)
def _lookahead(
    model: TransformerModel,
    task: Task,
    level: str,
    *,
    blocks: int = 2,
    direction: str = "denoising",
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    graph = CircuitGraph.from_model(
        model,
        metric=task.metric_name,
        task=task.name,
        meta={"direction": direction, "blocks": blocks},
    )
    return _node_graph(
        model,
        task,
        graph,
        lambda component, **kw: lookahead_patching(
            model,
            task,
            component,
            blocks=blocks,
            direction=direction,
            progress=progress,
            **{"per_position": False, **kw},
            **options,
        ),
    )


@register_method(
    "refined",
    levels=("node",),
    description="RelP-AH for every node, then exact patching of the largest for "
    "their cost until a budget is spent (default 0.05)",
)
def _refined(
    model: TransformerModel,
    task: Task,
    level: str,
    *,
    budget: float = 0.05,
    estimate: str = "relp-ah",
    direction: str = "denoising",
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    graph = CircuitGraph.from_model(
        model,
        metric=task.metric_name,
        task=task.name,
        meta={"direction": direction, "budget": budget, "estimate": estimate},
    )
    return _node_graph(
        model,
        task,
        graph,
        lambda component, **kw: (
            refined_patching(
                model,
                task,
                component,
                budget=budget,
                estimate=estimate,
                direction=direction,
                progress=progress,
                **{"per_position": False, **kw},
                **options,
            ).values
        ),
    )


def _node_graph(
    model: TransformerModel, task: Task, graph: CircuitGraph, patched: Callable[..., Tensor]
) -> CircuitGraph:
    """Node scores ``m(patched) - m(base)`` of heads, MLPs and the input from a patching-like
    function ``patched(component, per_position=...)`` returning metrics per cell."""
    base, _ = base_and_source(task, graph.meta["direction"])
    with torch.no_grad(), task.narrowed(model) as vocab:
        m_base = float(task.measure(model(base), vocab=vocab))
    per_writer = graph.layout.writer_values(
        input=patched("resid")[0] - m_base,  # patching the input = the other run
        heads=patched("heads") - m_base,
        mlps=patched("mlp") - m_base,
    )
    return graph.with_scores(node_scores=graph.layout.node_values(per_writer))


@register_method(
    "atp",
    levels=("node",),
    description="attribution patching: activation difference x gradient per node",
)
def _atp(model: TransformerModel, task: Task, level: str, **options: Any) -> CircuitGraph:
    return node_attribution(model, None, task, ig_steps=1, **options)


@register_method(
    "eap", levels=("edge", "node"), description="edge attribution patching (node level: AtP)"
)
def _eap(model: TransformerModel, task: Task, level: str, **options: Any) -> CircuitGraph:
    if level == "node":
        return node_attribution(model, None, task, ig_steps=1, **options)
    return edge_attribution(model, None, task, ig_steps=1, **options)


@register_method(
    "eap-ig",
    levels=("edge", "node"),
    description="EAP with integrated gradients over the input embeddings (5 steps)",
)
def _eap_ig(
    model: TransformerModel, task: Task, level: str, *, ig_steps: int = 5, **options: Any
) -> CircuitGraph:
    if level == "node":
        return node_attribution(model, None, task, ig_steps=ig_steps, **options)
    return edge_attribution(model, None, task, ig_steps=ig_steps, **options)


@register_method(
    "eap-ig-activations",
    levels=("edge",),
    description="EAP-IG along each layer's activations in turn (MIB; 5 steps, 2 n_layers + 1 "
    "times EAP-IG's gradient passes)",
)
def _eap_ig_activations(
    model: TransformerModel, task: Task, level: str, *, ig_steps: int = 5, **options: Any
) -> CircuitGraph:
    return edge_attribution(model, None, task, ig_steps=ig_steps, ig_over="activations", **options)


@register_method(
    "clean-corrupted",
    levels=("edge", "node"),
    description="EAP with the gradient averaged over the corrupted and the clean run (a "
    "two-point IG: Hanna et al. 2024)",
)
def _clean_corrupted(
    model: TransformerModel, task: Task, level: str, **options: Any
) -> CircuitGraph:
    score = node_attribution if level == "node" else edge_attribution
    return score(model, None, task, ig_alphas=(0.0, 1.0), **options)


@register_method(
    "edge-pruning",
    levels=("edge",),
    description="edge masks learned for faithfulness at a target share of edges (default "
    "0.01), warm-started from EAP-IG (Bhaskar et al. 2024)",
)
def _edge_pruning(
    model: TransformerModel,
    task: Task,
    level: str,
    *,
    target: float = 0.01,
    steps: int = 100,
    ig_steps: int = 5,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    init = edge_attribution(
        model, None, task, ig_steps=ig_steps, max_memory=max_memory, progress=progress
    )
    return edge_pruning(
        model,
        task,
        target=target,
        steps=steps,
        init=init,
        max_memory=max_memory,
        progress=progress,
        **options,
    )


@register_method(
    "eap-ig-refined",
    levels=("edge",),
    description="EAP-IG, cut to k edges (default 1%) by greedy selection, then the circuit's "
    "boundary refined by exact edge patching (refine_circuit)",
)
def _eap_ig_refined(
    model: TransformerModel,
    task: Task,
    level: str,
    *,
    k: int | None = None,
    ig_steps: int = 5,
    rows_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    first = edge_attribution(
        model,
        None,
        task,
        ig_steps=ig_steps,
        rows_per_pass=rows_per_pass,
        max_memory=max_memory,
        progress=progress,
    )
    k = int(0.01 * len(first.edge_scores)) if k is None else k
    return refine_circuit(
        model, first, task, k, max_memory=max_memory, progress=progress, **options
    )


def _relp(rule_set: str) -> Method:
    """RelP under one of interp's transformer rule sets (``interp.RULE_SETS``)."""

    def method(model: TransformerModel, task: Task, level: str, **options: Any) -> CircuitGraph:
        def rules(m: TransformerModel) -> Any:
            return gradient_rules(m, rule_set)

        score = node_attribution if level == "node" else edge_attribution
        graph = score(model, None, task, gradient_rules=rules, **options)
        graph.meta.update(rules=rule_set, experimental=level == "edge")
        return graph

    return method


def _relp_entry(rule_set: str) -> MethodEntry:
    description = RULE_SETS[rule_set].description or f"RelP under the rule set {rule_set!r}"
    return MethodEntry(
        rule_set,
        _relp(rule_set),
        ("node", "edge"),
        f"RelP: AtP with LRP coefficients, {description}; edge level is experimental",
    )


# every transformer rule set is a RelP method; sets registered later are found by discover()
for _name in RULE_SETS:
    METHODS.setdefault(_name, _relp_entry(_name))
