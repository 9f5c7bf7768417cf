"""Two-stage estimates of activation patching: a cheap estimate of every cell, then exact
patching of the cells whose estimated effect is largest for what patching them costs.

First-order estimates (AtP, RelP) go wrong on a few large cells: on SmolLM2's IOI residual
stream most of their squared error sits in one or two position columns, where a token-identity
change saturates attention later on. The estimate itself points at those cells (they are large),
so spending a small share of exact patching's cost on them replaces the largest errors with
exact values. Cells are taken in order of ``|estimate - m(base)| / cost``, the cost being the
blocks times positions that :func:`activation_patching` computes for the cell
(:func:`patching_costs`), until ``budget`` (a share of the cost of patching every cell) is spent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from interp import (
    RULE_SETS,
    InterpError,
    ShapeError,
    TransformerModel,
    check_option,
    gradient_rules,
)

from ._attribution import attribution_patching
from ._edges import chunked_metric
from ._patching import Component, Direction, activation_patching, patching_costs
from ._tasks import Task

__all__ = ["Refined", "estimates", "refined_patching"]


def estimates() -> tuple[str, ...]:
    """First stages :func:`refined_patching` takes by name: ``atp`` and RelP under every
    transformer rule set of ``interp.RULE_SETS``."""
    return ("atp", *RULE_SETS)


class Refined(NamedTuple):
    """What :func:`refined_patching` returns."""

    values: Tensor
    """The metric of each cell's patched run: exact where ``exact``, else estimated."""
    exact: Tensor
    """Which cells were patched exactly (cells that need no pass are exact too)."""
    spent: float
    """The share of the cost of patching every cell that was spent."""


def refined_patching(
    model: TransformerModel,
    task: Task,
    component: Component = "resid",
    *,
    budget: float = 0.05,
    estimate: str | Tensor = "relp-ah",
    per_position: bool = True,
    direction: Direction = "denoising",
    tokens_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Refined:
    """Estimate every cell of :func:`activation_patching`, then patch exactly the cells with the
    largest estimated effect per unit of cost until ``budget`` is spent.

    Parameters
    ----------
    budget : float
        Share (0 to 1) of the cost of patching every cell to spend on exact patching; 0 gives
        the estimate, 1 activation patching.
    estimate : {"atp", "relp", "relp-ah", "attnlrp", ...} or Tensor
        The first stage: AtP, or RelP under a rule set, or estimates already computed (same
        shape and meaning as activation patching's result: the metric of the patched run).
    tokens_per_pass, max_memory
        Chunking of both stages, as in :func:`activation_patching` (the result does not
        depend on it).

    Returns
    -------
    Refined
        ``values`` in activation patching's shape, the ``exact`` mask, and the share ``spent``.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> full = refined_patching(model, task, budget=1.0)
    >>> exact = activation_patching(model, task, "resid", per_position=True)
    >>> bool(torch.allclose(full.values, exact, atol=1e-5)), full.spent
    (True, 1.0)
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget <= 1:
        raise InterpError(f"budget must be a share between 0 and 1; got {budget!r}.")
    costs = patching_costs(model, task, component, per_position=per_position, direction=direction)
    first = _first_stage(model, task, component, estimate, per_position, direction, max_memory)
    if tuple(first.shape) != tuple(costs.shape):
        raise ShapeError(
            f"estimate must have activation patching's shape {tuple(costs.shape)}; "
            f"got {tuple(first.shape)}."
        )
    free = costs == 0  # cells whose patch changes nothing: the base metric, exactly
    if isinstance(estimate, str) and free.any():  # AtP and RelP give those cells m(base) too
        m_base = float(first[free.to(first.device)][0])
    else:
        run = "corrupt" if direction == "denoising" else "clean"
        m_base = chunked_metric(model, task, run, max_memory)
    total = float(costs.sum())
    priority = (first.detach().double().cpu() - m_base).abs() / costs.clamp(min=1e-12)
    order = priority.flatten().argsort(descending=True, stable=True)
    spend = costs.flatten()[order].cumsum(0)
    chosen = torch.zeros(costs.numel(), dtype=torch.bool)
    chosen[order[(spend <= budget * total + 1e-9) & ~free.flatten()[order]]] = True
    chosen = chosen.view(costs.shape)
    values = first.detach().to(torch.float32).clone()
    values[free.to(values.device)] = m_base
    if chosen.any():
        exact = activation_patching(
            model,
            task,
            component,
            per_position=per_position,
            direction=direction,
            cells=chosen,
            tokens_per_pass=tokens_per_pass,
            max_memory=max_memory,
            progress=progress,
        )
        values[chosen.to(values.device)] = exact[chosen.to(exact.device)].to(values.dtype)
    spent = float(costs[chosen].sum()) / total if total else 0.0
    return Refined(values, chosen | free, spent)


def _first_stage(
    model: TransformerModel,
    task: Task,
    component: Component,
    estimate: str | Tensor,
    per_position: bool,
    direction: Direction,
    max_memory: int | str | None,
) -> Tensor:
    if isinstance(estimate, Tensor):
        return estimate
    check_option("estimate", estimate, estimates())
    rules = None if estimate == "atp" else (lambda m: gradient_rules(m, estimate))
    return attribution_patching(
        model,
        task,
        component,
        per_position=per_position,
        direction=direction,
        gradient_rules=rules,
        max_memory=max_memory,
    )
