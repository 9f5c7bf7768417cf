"""Learned edge masks (Edge Pruning, Bhaskar et al. 2024): a mask per edge, optimised.

Every edge u -> v gets a mask z_uv in [0, 1]. On the clean prompts each reader's input becomes
(the "disentangled residual stream" that edge patching computes for 0/1 masks)::

    x_v = x_v + sum_u (1 - z_uv) (a_u^corrupt - a_u)

so z = 1 keeps an edge's clean value and z = 0 patches it to the corrupted one. The masks are
hard-concrete (Louizos et al. 2018): a learned log-alpha per edge, a stretched and clipped
sigmoid with logistic noise during training, and an expected density that a Lagrangian drives to
``target``. The objective is the task's metric at the circuit pulled to the full model's, by
default the KL divergence from the full model's next-token distribution on the clean prompts.

The masks start from a first-stage score (EAP-IG by default: the warm start of the MIB shared
task's best entries) or, without one, all on (the full model). As in Edge Pruning, the target
density falls linearly from the starting density to ``target`` over the first half of the
steps; the fit is measured in units of the empty circuit's (its KL, or its squared metric gap),
so the Lagrangian meets a fit of order one on any task. The learned log-alphas are the edge
scores of the returned graph, so any selection (``top(k, absolute=False)``) and
:func:`~circuits.evaluate` apply to them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from interp import (
    CircuitGraph,
    GraphLayout,
    InterpError,
    Site,
    TransformerModel,
    check_option,
    progress_bar,
)

from ._edges import check_layout, chunked_metric, prepare_edge_model
from ._memory import MemoryBudget, check_count, prompt_chunks
from ._tasks import Task

__all__ = ["edge_pruning", "masked_metric"]

BETA, LEFT, RIGHT = 2 / 3, -0.1, 1.1  # hard-concrete temperature and stretch (Louizos et al.)
FULL_LOG_ALPHA = 3.0  # without a warm start every mask starts (almost surely) on: the full model


def _masks(log_alpha: Tensor, sample: bool, kind: str = "hard-concrete") -> Tensor:
    """Masks in [0, 1]: hard-concrete (with ``sample`` the training noise, else the mean
    gate), or plain ``sigmoid(log_alpha)`` (continuous, deterministic)."""
    if kind == "sigmoid":
        return torch.sigmoid(log_alpha)
    if sample:
        u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / BETA)
    else:
        s = torch.sigmoid(log_alpha)
    return (s * (RIGHT - LEFT) + LEFT).clamp(0, 1)


def _density(log_alpha: Tensor, kind: str = "hard-concrete") -> Tensor:
    """Expected share of edges whose hard-concrete mask is not 0 (for sigmoid masks, their
    mean)."""
    if kind == "sigmoid":
        return torch.sigmoid(log_alpha).mean()
    return torch.sigmoid(log_alpha - BETA * math.log(-LEFT / RIGHT)).mean()


class _MaskedPatcher:
    """Hooks that mix each reader's input between the clean and the corrupted writers' values
    by a dense (readers, writers) weight ``1 - z``, differentiably."""

    def __init__(self, layout: GraphLayout, weight: Tensor, source: dict[str, Tensor]) -> None:
        self.layout, self.weight, self.source = layout, weight, source
        # (first writer, count, deltas of shape (count, n * pos * d)), in writer order
        self.deltas: list[tuple[int, int, Tensor]] = []
        self.stacked: dict[int, Tensor] = {}
        self.shape: tuple[int, int, int] = (0, 0, 0)  # (n, pos, d) of the run

    def hooks(self) -> dict[str, Callable[[Tensor, Site], Tensor | None]]:
        fns: dict[str, Callable] = {g.site: self._writer(g) for g in self.layout.writer_groups}
        fns.update({g.site: self._reader(g) for g in self.layout.reader_groups})
        return fns

    def _writer(self, group: Any) -> Callable[[Tensor, Site], None]:
        def record(x: Tensor, site: Site) -> None:
            delta = self.source[group.site] - x
            delta = delta if group.per_head else delta[:, :, None]
            self.shape = (delta.shape[0], delta.shape[1], delta.shape[-1])
            # writers first, so that readers mix them with one matrix product
            flat = delta.permute(2, 0, 1, 3).reshape(delta.shape[2], -1)
            self.deltas.append((group.index[0], len(group.index), flat))

        return record

    def _prior(self, n_prior: int) -> Tensor:
        """(n_prior, n * pos * d): the deltas of the first ``n_prior`` writers, concatenated
        once and shared by the readers that read exactly those (a layer's q, k and v)."""
        if n_prior not in self.stacked:
            parts = [delta for first, _, delta in self.deltas if first < n_prior]
            self.stacked = {n_prior: torch.cat(parts)}  # earlier stacks are not reused
        return self.stacked[n_prior]

    def _reader(self, group: Any) -> Callable[[Tensor, Site], Tensor]:
        rows = torch.tensor(group.index)

        def mix(x: Tensor, site: Site) -> Tensor:
            weight = self.weight[rows.to(self.weight.device), : group.n_prior]  # (h, writers)
            prior = self._prior(group.n_prior)
            # (h, w) @ (w, n * pos * d): one matrix product for the whole group
            corr = (weight.to(prior.dtype) @ prior).view(len(rows), *self.shape)
            corr = corr.permute(1, 2, 0, 3)  # (n, pos, h, d)
            return x + (corr if group.per_head else corr[:, :, 0])

        return mix


def masked_metric(
    model: TransformerModel, task: Task, keep: Tensor, source: dict[str, Tensor] | None = None
) -> Tensor:
    """The task's metric on the clean prompts with each edge's reader input weighted by
    ``keep`` (per edge, in the layout's order, 1 = clean, 0 = corrupted), differentiably.

    ``model`` must already be prepared for edges (:func:`~circuits.prepare_edge_model`).
    """
    layout = GraphLayout.of(model.spec)
    if keep.shape != (len(layout.edge_src),):
        raise InterpError(
            f"keep must have shape ({len(layout.edge_src)},); got {tuple(keep.shape)}."
        )
    if source is None:
        source = _corrupted_writers(model, layout, task)
    patcher = _MaskedPatcher(layout, layout.to_matrix(1 - keep), source)
    with model.hooks(patcher.hooks()), task.narrowed(model) as vocab:
        return task.measure(model(task.clean), vocab=vocab)


def _metric_and_gradient(
    model: TransformerModel,
    task: Task,
    keep: Tensor,
    sources: dict[int, dict[str, Tensor]],
    prompts: int,
) -> tuple[Tensor, Tensor]:
    """:func:`masked_metric` and its gradient with respect to ``keep``, accumulated over
    chunks of ``prompts`` prompts (the metric is their mean, so each chunk's value and
    gradient count with its share). One chunk's activations are alive at a time; ``sources``
    holds corrupted writers by chunk start where they are kept, else they are run again."""
    layout = GraphLayout.of(model.spec)
    n = len(task)
    value = torch.zeros((), dtype=torch.float64, device=keep.device)
    grad = torch.zeros_like(keep, dtype=torch.float64)
    leaf = keep.detach().requires_grad_(True)
    for chunk in prompt_chunks(n, prompts):
        part = task.subset(chunk)
        source = sources.get(chunk.start) or _corrupted_writers(model, layout, part)
        with torch.enable_grad():
            chunk_value = masked_metric(model, part, leaf, source)
            (chunk_grad,) = torch.autograd.grad(chunk_value, leaf)
        share = len(part) / n
        value += share * chunk_value.detach().double()
        grad += share * chunk_grad.double()
        del source, chunk_value, chunk_grad
    return value, grad.to(keep.dtype)


def _corrupted_writers(
    model: TransformerModel, layout: GraphLayout, task: Task
) -> dict[str, Tensor]:
    with torch.no_grad(), model.without_logits():
        _, cache = model.run_with_cache(task.corrupt, [g.site for g in layout.writer_groups])
    return {g.site: cache[g.site] for g in layout.writer_groups}


def _warm_start(scores: Tensor, target: float, scale: float) -> Tensor:
    """Log-alphas from first-stage scores: the top ``target`` share (by signed score) starts
    above 0, the rest below, graded by how far each is from the threshold."""
    finite = scores.nan_to_num(nan=float(scores.nan_to_num(nan=0).min()))
    threshold = torch.quantile(finite.double(), 1 - target).to(finite.dtype)
    spread = finite.std().clamp_min(1e-12)
    return ((finite - threshold) / spread * scale).clamp(-6, 6)


def edge_pruning(
    model: TransformerModel,
    task: Task,
    graph: CircuitGraph | None = None,
    *,
    target: float = 0.01,
    steps: int = 100,
    lr: float = 0.1,
    init: CircuitGraph | None = None,
    objective: str = "kl",
    mask: str = "hard-concrete",
    seed: int = 0,
    prompts_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> CircuitGraph:
    """Edge masks learned for faithfulness at a target density; the log-alphas are the scores.

    Parameters
    ----------
    model : TransformerModel
    task : Task
        The masks are learned on its clean prompts.
    graph : CircuitGraph, optional
        The model's full graph (built when not given).
    target : float
        The share of edges the Lagrangian drives the expected density to.
    steps, lr : int, float
        Adam steps on the log-alphas (and ascent on the two Lagrange multipliers).
    init : CircuitGraph, optional
        Edge scores to warm-start from (signed: the top ``target`` share starts kept); every
        mask on when not given.
    objective : {"kl", "metric"}
        ``kl``: KL divergence from the full model's next-token distribution at the last
        position; ``metric``: the squared gap between the circuit's task metric and the full
        model's.
    mask : {"hard-concrete", "sigmoid"}
        Edge Pruning's hard-concrete masks (stochastic, can reach exact 0 and 1), or
        continuous ``sigmoid(log_alpha)`` masks (deterministic; smoother for few steps).
    seed : int
        Seed of the mask noise.
    prompts_per_pass : int, optional
        Prompts per forward/backward pass; each step's gradient adds up over the passes
        exactly (by default as many prompts as ``max_memory`` holds).
    max_memory : int or str, optional
        Working memory (bytes, or ``"2GB"``; :class:`~circuits.MemoryBudget`). The corrupted
        run is kept between steps when all prompts fit in one pass, else run again per pass.

    Returns
    -------
    CircuitGraph
        Edge scores = learned log-alphas; ``meta`` has the final expected density and losses.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> graph = edge_pruning(model, ioi_task(model, 2), target=0.1, steps=3, progress=False)
    >>> graph.meta["target"]
    0.1
    """
    if not 0 < target < 1:
        raise InterpError(f"target must be a share of edges in (0, 1); got {target!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InterpError(f"steps must be an int >= 1; got {steps!r}.")
    check_option("objective", objective, ("kl", "metric"))
    check_option("mask", mask, ("hard-concrete", "sigmoid"))
    check_count("prompts_per_pass", prompts_per_pass)
    edge_model, layout = prepare_edge_model(model)
    if prompts_per_pass is None:
        budget = MemoryBudget(edge_model, max_memory)
        prompts_per_pass = budget.mask_rows(task.clean.shape[1])
    graph = CircuitGraph.from_model(model) if graph is None else graph
    check_layout(graph, layout)
    device = edge_model.device
    if init is not None:
        check_layout(init, layout)
        log_alpha = _warm_start(init.edge_scores.float(), target, scale=2.0)
    else:
        log_alpha = torch.full((len(layout.edge_src),), FULL_LOG_ALPHA)
    log_alpha = log_alpha.to(device).requires_grad_(True)
    lambdas = torch.zeros(2, device=device, requires_grad=True)
    # the clean reference of the kl objective runs in chunks of the same memory budget
    measured = task.with_metric("kl", edge_model, max_memory) if objective == "kl" else task
    # one pass holds every prompt: its corrupted run is kept for all steps
    sources = (
        {0: _corrupted_writers(edge_model, layout, task)} if prompts_per_pass >= len(task) else {}
    )
    full = chunked_metric(edge_model, measured, "clean", max_memory)
    empty = chunked_metric(edge_model, measured, "corrupt", max_memory)
    # the fit is measured in units of the empty circuit's, so that the Lagrangian meets a fit
    # of order one whatever the metric's scale
    unit = abs(empty - full) if objective == "kl" else (empty - full) ** 2
    unit = unit if unit > 0 else 1.0
    start = float(_density(log_alpha.detach(), mask))
    warmup = max(1, steps // 2)
    opt = torch.optim.Adam([log_alpha], lr=lr)
    ascent = torch.optim.Adam([lambdas], lr=lr, maximize=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    history = []
    try:
        bar = progress_bar(range(steps), desc="edge pruning", progress=progress)
        for step in bar:
            # Edge Pruning's schedule: the target density falls linearly from where the masks
            # start to ``target`` over the first half of the steps
            goal = target + (start - target) * max(0.0, 1 - (step + 1) / warmup)
            keep = _masks(log_alpha, sample=True, kind=mask)
            value, d_keep = _metric_and_gradient(
                edge_model, measured, keep, sources, prompts_per_pass
            )
            loss_fit = (value if objective == "kl" else (value - full) ** 2) / unit
            # d loss_fit / d value: the chain rule through the chunked metric's gradient
            slope = 1 / unit if objective == "kl" else 2 * (float(value) - full) / unit
            gap = _density(log_alpha, mask) - goal
            penalty = lambdas[0] * gap + lambdas[1] * gap**2
            opt.zero_grad()
            ascent.zero_grad()
            torch.autograd.backward([keep, penalty], [slope * d_keep, torch.ones_like(penalty)])
            opt.step()
            ascent.step()
            history.append((float(loss_fit.detach()), float(gap.detach()) + goal))
            bar.set_postfix(fit=f"{history[-1][0]:.4g}", density=f"{history[-1][1]:.4f}")
    finally:
        torch.random.set_rng_state(generator_state)
    scores = log_alpha.detach().cpu()
    return graph.with_scores(
        edge_scores=scores,
        method="edge-pruning",
        metric=task.metric_name,
        task=task.name,
        meta={
            **graph.meta,
            "target": target,
            "steps": steps,
            "objective": objective,
            "mask": mask,
            "density": history[-1][1],
            "fit": history[-1][0],
            "warm_start": init.method if init is not None else None,
            "n_prompts": len(task),
        },
    )
