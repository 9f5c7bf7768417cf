"""Two-stage estimates of activation patching: a cheap estimate of every cell, then exact
patching of the cells whose estimated effect is largest for what patching them costs.

First-order estimates (AtP, RelP) go wrong on a few large cells: on SmolLM2's IOI residual
stream most of their squared error sits in one or two position columns, where a token-identity
change saturates attention later on. The estimate itself points at those cells (they are large),
so spending a small share of exact patching's cost on them replaces the largest errors with
exact values. Cells are taken in order of ``|estimate - m(base)| / cost``, the cost being the
blocks times positions that :func:`activation_patching` computes for the cell
(:func:`patching_costs`), until ``budget`` is spent.

Both stages read the same two runs (the base run's block inputs, keys and values, and both
runs' activations at the component's sites), made once when every prompt fits in one chunk;
the estimate's gradient pass restarts at the first position where base and source differ and
unembeds only the logits the metric reads. ``by="time"`` sizes the exact stage by measured
time: the first exact chunk, or the two runs where this call made them, gives the seconds per
unit of cost (the less of the two), hence activation patching's time (its two runs, timed
here, plus every cell's cost), and the cells that still fit in ``budget`` of it, the
estimate's time included, are patched next.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Literal, NamedTuple

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
from ._patching import (
    Component,
    Direction,
    _one_chunk,
    _patch_cells,
    _Prefix,
    _result_shape,
    _Runs,
    _runs,
    _sites,
    base_and_source,
    check_component,
    patching_costs,
)
from ._tasks import Task

__all__ = ["Refined", "estimates", "refined_patching"]

SizeBy = Literal["cost", "time"]
PROBE_SHARE = 0.25  # with by="time", the first exact chunk takes this share of the budget's cost


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
    """The share of the cost of patching every cell that was spent on exact patching."""
    seconds: float = math.nan
    """Wall-clock time of the whole call."""
    time_share: float = math.nan
    """``seconds`` over activation patching's time as predicted from this run's measured
    times (its two runs, plus every cell's cost at the seconds per unit of cost of the exact
    stage or of the two runs, whichever is less); NaN when no cell was patched exactly."""


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
    by: SizeBy = "cost",
) -> Refined:
    """Estimate every cell of :func:`activation_patching`, then patch exactly the cells with the
    largest estimated effect per unit of cost until ``budget`` is spent.

    Parameters
    ----------
    budget : float
        Share (0 to 1) of activation patching to spend: of the cost of patching every cell on
        exact patching (``by="cost"``), or of its time on the whole call (``by="time"``). 0
        gives the estimate, 1 activation patching.
    estimate : {"atp", "relp", "relp-ah", "attnlrp", ...} or Tensor
        The first stage: AtP, or RelP under a rule set, or estimates already computed (same
        shape and meaning as activation patching's result: the metric of the patched run).
    tokens_per_pass, max_memory
        Chunking of both stages, as in :func:`activation_patching` (the result does not
        depend on it).
    by : {"cost", "time"}
        ``cost``: the modelled cost (:func:`patching_costs`), so the same inputs give the same
        cells on every machine. ``time``: measured seconds, so that the whole call, the
        estimate included, takes about ``budget`` of activation patching's time on this
        machine now (how many cells that is varies from run to run).

    Returns
    -------
    Refined
        ``values`` in activation patching's shape, the ``exact`` mask, the cost share
        ``spent``, and the call's ``seconds`` and ``time_share``.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> full = refined_patching(model, task, budget=1.0)
    >>> exact = activation_patching(model, task, "resid", per_position=True)
    >>> bool(torch.allclose(full.values, exact, atol=1e-5)), full.spent
    (True, 1.0)
    """
    started = time.perf_counter()
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 <= budget <= 1:
        raise InterpError(f"budget must be a share between 0 and 1; got {budget!r}.")
    check_option("by", by, SizeBy)
    costs = patching_costs(model, task, component, per_position=per_position, direction=direction)
    runs, run_seconds = None, 0.0
    if isinstance(estimate, str) and _one_chunk(model, task, max_memory):
        check_option("estimate", estimate, estimates())
        runs = _runs(model, task, component, direction)
        run_seconds = time.perf_counter() - started
    first = _first_stage(
        model, task, component, estimate, per_position, direction, max_memory, runs
    )
    if tuple(first.shape) != tuple(costs.shape):
        raise ShapeError(
            f"estimate must have activation patching's shape {tuple(costs.shape)}; "
            f"got {tuple(first.shape)}."
        )
    free = costs == 0  # cells whose patch changes nothing: the base metric, exactly
    if runs is not None:
        m_base = float(task.measure(runs.base_logits, vocab=runs.vocab))
    elif isinstance(estimate, str) and free.any():  # AtP and RelP give those cells m(base) too
        m_base = float(first[free.to(first.device)][0])
    else:
        run = "corrupt" if direction == "denoising" else "clean"
        m_base = chunked_metric(model, task, run, max_memory)
    total = float(costs.sum())
    runs_cost = 2 * model.spec.n_layers * task.clean.shape[1]  # two runs, in the costs' units
    priority = (first.detach().double().cpu() - m_base).abs() / costs.clamp(min=1e-12)
    order = priority.flatten().argsort(descending=True, stable=True)
    order = order[~free.flatten()[order]]  # cells that need a pass, best first
    spend = costs.flatten()[order].cumsum(0)
    values = first.detach().to(torch.float32).clone()
    values[free.to(values.device)] = m_base
    chosen = torch.zeros(costs.numel(), dtype=torch.bool)

    def patch(cells: Tensor) -> float:
        """Patch ``cells`` (flat indices) exactly into ``values``; their seconds."""
        if not len(cells):
            return 0.0
        tick = time.perf_counter()
        mask = torch.zeros(costs.numel(), dtype=torch.bool)
        mask[cells] = True
        mask = mask.view(costs.shape)
        exact = _patch_cells(
            model,
            task,
            component,
            per_position,
            direction,
            tokens_per_pass,
            progress,
            only=mask,
            max_memory=max_memory,
            runs=runs,
        ).view(costs.shape)
        values[mask.to(values.device)] = exact[mask.to(exact.device)].to(values.dtype)
        chosen[cells] = True
        return time.perf_counter() - tick

    limit = budget * total + 1e-9
    if budget >= 1 or by == "cost":
        taken = order if budget >= 1 else order[spend <= limit]
        seconds, patched_cost = patch(taken), float(costs.flatten()[taken].sum())
    else:  # a first chunk measures the seconds per unit of cost, which sizes the rest
        probe = order[(spend <= PROBE_SHARE * limit) | (torch.arange(len(order)) == 0)]
        if budget == 0:
            probe = order[:0]
        seconds, patched_cost = patch(probe), float(costs.flatten()[probe].sum())
        if patched_cost:
            predicted = _predicted(run_seconds, total, seconds / patched_cost, runs_cost)
            left = budget * predicted - (time.perf_counter() - started)
            rest = order[len(probe) :]
            more = rest[(spend[len(probe) :] - patched_cost) * seconds / patched_cost <= left]
            seconds += patch(more)
            patched_cost += float(costs.flatten()[more].sum())
    chosen = chosen.view(costs.shape)
    elapsed = time.perf_counter() - started
    time_share = math.nan
    if patched_cost:
        time_share = elapsed / _predicted(run_seconds, total, seconds / patched_cost, runs_cost)
    spent = patched_cost / total if total else 0.0
    return Refined(values, chosen | free, spent, elapsed, time_share)


def _predicted(run_seconds: float, total: float, per_cost: float, runs_cost: float) -> float:
    """Activation patching's time: its two runs plus every cell's cost at the seconds per
    unit of cost measured on the exact stage's first chunk (``per_cost``) or on the two runs
    (when this call made them), whichever is less. A chunk of a few cells runs less
    efficiently than activation patching's full passes, and a plain run somewhat less than
    patching's restarted ones: both overestimate (SmolLM2, 4-8 pairs: by 1.06-1.48x and
    1.06-1.24x), and the smaller one is nearer."""
    if run_seconds > 0:
        per_cost = min(per_cost, run_seconds / runs_cost)
    return run_seconds + total * per_cost


def _first_stage(
    model: TransformerModel,
    task: Task,
    component: Component,
    estimate: str | Tensor,
    per_position: bool,
    direction: Direction,
    max_memory: int | str | None,
    runs: _Runs | None = None,
) -> Tensor:
    if isinstance(estimate, Tensor):
        return estimate
    check_option("estimate", estimate, estimates())
    rules = None if estimate == "atp" else (lambda m: gradient_rules(m, estimate))
    if runs is not None:
        return _estimate_from_runs(model, task, runs, component, per_position, direction, rules)
    return attribution_patching(
        model,
        task,
        component,
        per_position=per_position,
        direction=direction,
        gradient_rules=rules,
        max_memory=max_memory,
    )


def _estimate_from_runs(
    model: TransformerModel,
    task: Task,
    runs: _Runs,
    component: Component,
    per_position: bool,
    direction: Direction,
    rules,
) -> Tensor:
    """:func:`attribution_patching` from runs already made: one forward/backward from block 0
    that restarts at the first position where base and source differ (no position before it
    has an activation difference to score) and unembeds only the metric's logits. That pass
    also shows that restarting there reproduces the base run, which the exact stage then
    need not check again."""
    check_component(component)
    base, source = base_and_source(task, direction)
    inputs, sites, vocab = runs.inputs, _sites(model, component), task.metric_tokens
    prefix = _Prefix.of(task, base, source, causal=model.causal)
    starts = [0]
    if prefix.first and inputs.kv is not None and len(inputs.kv) == len(inputs.resid):
        starts.insert(0, prefix.first)
    expected = runs.base_logits  # the last positions, over the metric's tokens, as `out`
    for start in starts:
        resid = inputs.resid[0][:, start:].detach().clone().requires_grad_(True)
        context = rules(model) if rules is not None else contextlib.nullcontext()
        with torch.enable_grad(), context, model.grad_cache(sites) as grads:
            out = model.forward_from(
                0, resid, inputs, start=start, positions=task.last_positions(), vocab=vocab
            )
            torch.autograd.grad(task.measure(out, vocab=vocab), [resid])
        scale = 1e-4 * float(expected.abs().max())
        if torch.allclose(out.detach().to(expected.dtype), expected, atol=scale, rtol=0):
            runs.checked = start
            break
        # a layout the restart does not reproduce: the exact stage checks (and warns) itself
    wide = torch.float32 if model.device.type == "mps" else torch.float64
    rows_out = []
    for site in sites:
        delta = runs.source_cache[site][:, start:].to(wide) - runs.base_cache[site][:, start:]
        score = (delta * grads[site].to(wide)).sum(-1).sum(0)  # (pos - start, [head])
        score = torch.cat([score.new_zeros(start, *score.shape[1:]), score])
        rows_out.append(score if per_position else score.sum(0))
    total = torch.stack(rows_out)
    shape = _result_shape(model, component, per_position, base.shape[1])
    dtype = torch.promote_types(next(model.bridge.parameters()).dtype, torch.float32)
    return (float(task.measure(runs.base_logits, vocab=runs.vocab)) + total).view(shape).to(dtype)
