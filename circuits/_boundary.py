"""Exact refinement of a circuit's boundary: the edge analogue of :func:`refined_patching`.

A first stage (EAP-IG by default) ranks every edge; a selection rule cuts the ranking to a
circuit of ``k`` edges. Attribution is linear, so the circuit it gives is good where edges add
up and wrong at the boundary, where an edge's worth depends on which others are kept. Each
round here measures that boundary exactly with the batched edge patcher, in the circuit's own
context:

1. the ``candidates`` best-ranked edges outside the circuit that can join it (both ends already
   in it, or the input or the logits) are each added alone; those that bring the circuit
   closer to the full model all go in;
2. in that grown circuit, each of its ``candidates`` (plus the additions) worst-ranked edges is
   removed alone, which says which ones it can spare;
3. the circuit takes the n most helpful additions and drops the n most dispensable edges, for
   n = all the helpful ones, half, a quarter, ..., 1; each of these (pruned to input -> logits
   paths, so at most ``k`` edges) is measured, and the best replaces the circuit if it is
   closer to the full model.

Closeness to the full model, ``-|m - m(full)|``, is the objective, so a circuit that already
overshoots is pulled back rather than pushed further. Rounds stop when nothing improves. Cost per
round: about ``2 * candidates + log2(candidates)`` patched runs of the task, in batches of
``masks_per_pass``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from interp import CircuitGraph, GraphLayout, InterpError, TransformerModel, progress_bar

from ._edges import baselines, check_layout, edge_patching, prepare_edge_model
from ._evaluate import select_circuit
from ._options import Ablation, Selection, check_option
from ._tasks import Task

__all__ = ["refine_circuit"]


def _metrics(
    model: TransformerModel,
    layout: GraphLayout,
    task: Task,
    keeps: list[Tensor],
    ablation: Ablation,
    masks_per_pass: int | None,
    max_memory: int | str | None = None,
) -> Tensor:
    """The metric with every edge outside each kept set ablated (one value per set)."""
    patched = torch.stack([layout.to_matrix(~keep) for keep in keeps])
    return edge_patching(
        model, task, patched, source=ablation, masks_per_pass=masks_per_pass, max_memory=max_memory
    ).double()


def _pruned(graph: CircuitGraph, keep: Tensor) -> Tensor:
    """``keep`` cut to the edges on an input -> logits path."""
    circuit = graph.copy(edge_in_graph=keep, node_in_graph=torch.ones_like(graph.node_in_graph))
    circuit = circuit.prune()
    return circuit.edge_in_graph & circuit.node_in_graph[graph.edge_src]


def refine_circuit(
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    k: int,
    *,
    selection: Selection = "greedy-signed",
    candidates: int = 32,
    rounds: int = 4,
    ablation: Ablation = "corrupt",
    masks_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> CircuitGraph:
    """Cut a scored graph to ``k`` edges, then swap edges across the circuit's boundary while
    exact patching says the circuit gets closer to the full model.

    Parameters
    ----------
    model : TransformerModel
    graph : CircuitGraph
        Edge scores of a first stage (EAP-IG, ...), which rank the candidates.
    task : Task
        The prompts the exact runs use (the discovery prompts, not the evaluation ones).
    k : int
        Edges requested; the circuit keeps at most ``k`` after pruning.
    selection : {"top-abs", "top-signed", "greedy-abs", "greedy-signed"}
        How the first circuit is cut from the ranking (:func:`select_circuit`); its sign word
        also ranks the candidates.
    candidates : int
        Edges tried on each side of the boundary per round.
    rounds : int
        At most this many rounds of swaps.
    ablation : {"corrupt", "mean", "zero"}
        What an edge outside the circuit carries, as in :func:`evaluate`.
    masks_per_pass, max_memory
        Chunking of the edge-patching passes (:func:`edge_patching`); the result does not
        depend on it.

    Returns
    -------
    CircuitGraph
        The refined circuit in the in-graph flags, and scores that rank its edges first (each
        in the first stage's order) and every other edge after them, so ``top(n)`` and
        greedy selection at its size give it back. ``meta["refine"]`` has the metric before
        and after, the full and empty metrics, and the swaps of each round.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4)
    >>> first = discover(model, task, "eap-ig")
    >>> refined = refine_circuit(model, first, task, 20, candidates=4, rounds=1, progress=False)
    >>> refined.n_edges_in_graph <= 20
    True
    """
    check_option("selection", selection, Selection)
    check_option("ablation", ablation, Ablation)
    for name, value, least in (("candidates", candidates, 1), ("rounds", rounds, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InterpError(f"{name} must be an int >= {least}; got {value!r}.")
    edge_model, layout = prepare_edge_model(model)
    check_layout(graph, layout)
    scores = graph.edge_scores.double()
    rank = scores.abs() if selection.endswith("abs") else scores
    rank = torch.where(rank.isnan(), torch.full_like(rank, -math.inf), rank)
    start = select_circuit(graph, k, selection)
    keep = start.edge_in_graph & start.node_in_graph[graph.edge_src]
    full, empty = baselines(edge_model, task, max_memory)
    if ablation != "corrupt":
        every = torch.zeros_like(keep)
        empty = float(
            _metrics(edge_model, layout, task, [every], ablation, masks_per_pass, max_memory)[0]
        )
    current = float(
        _metrics(edge_model, layout, task, [keep], ablation, masks_per_pass, max_memory)[0]
    )
    before, history = current, []
    src, dst = graph.edge_src, graph.edge_dst
    has_in, has_out = torch.zeros_like(graph.node_in_graph), torch.zeros_like(graph.node_in_graph)
    has_in[dst], has_out[src] = True, True
    ends = ~has_in | ~has_out  # input and logits: always in
    for _ in progress_bar(range(rounds), desc="refining", progress=progress):
        nodes = ends.clone()
        nodes[src[keep]] = True
        nodes[dst[keep]] = True
        joinable = ~keep & nodes[src] & nodes[dst] & (rank > -math.inf)
        adds = _best(rank, joinable, candidates)
        if len(adds) == 0:
            break
        # 1. each joinable edge added alone; those that help go in together
        trials = []
        for edge in adds.tolist():
            trial = keep.clone()
            trial[edge] = True
            trials.append(trial)
        gain = _gains(
            _metrics(edge_model, layout, task, trials, ablation, masks_per_pass, max_memory),
            current,
            full,
        )
        helpful = adds[gain.argsort(descending=True)][: int((gain > 0).sum())]
        if len(helpful) == 0:
            break
        grown = keep.clone()
        grown[helpful] = True
        # 2. in the grown circuit, each of its worst-ranked edges removed alone
        removes = _best(-rank, grown, candidates + len(helpful))
        trials = [_pruned(graph, _without(grown, edge)) for edge in removes.tolist()]
        gain = _gains(
            _metrics(edge_model, layout, task, trials, ablation, masks_per_pass, max_memory),
            current,
            full,
        )
        harmless = removes[gain.argsort(descending=True)]
        # 3. back to at most k edges: the n most helpful additions and the n least harmful
        # removals, for n = all of them, half, a quarter, ..., 1
        proposals, sizes = [], []
        n = len(helpful)
        while n >= 1:
            trial = keep.clone()
            trial[helpful[:n]] = True
            trial[harmless[:n]] = False
            proposals.append(_pruned(graph, trial))
            sizes.append(n)
            n //= 2
        values = _metrics(edge_model, layout, task, proposals, ablation, masks_per_pass, max_memory)
        best = int((values - full).abs().argmin())
        if abs(float(values[best]) - full) >= abs(current - full):
            break
        keep, current = proposals[best], float(values[best])
        history.append({"swaps": sizes[best], "metric": current})
    refined = graph.copy()
    refined.edge_in_graph = keep
    refined.node_in_graph = torch.zeros_like(graph.node_in_graph)
    refined.node_in_graph[src[keep]] = True
    refined.node_in_graph[dst[keep]] = True
    # the circuit's edges first (in the first stage's order, signs kept where |score| ranks),
    # then the rest as they were
    finite = scores[~scores.isnan()]
    lift = float(finite.abs().max()) * 2 + 1 if len(finite) else 1.0
    if selection.endswith("abs"):
        lifted = torch.where(scores < 0, scores - lift, scores + lift)
    else:
        lifted = scores + lift
    lifted = torch.where(scores.isnan(), torch.full_like(scores, lift), lifted)
    refined.edge_scores = torch.where(keep, lifted, scores).to(graph.score_dtype)
    refined.meta = {
        **graph.meta,
        "refine": {
            "k": k,
            "selection": selection,
            "candidates": candidates,
            "ablation": ablation,
            "full": full,
            "empty": empty,
            "before": before,
            "after": current,
            "rounds": history,
            "n_prompts": len(task),
        },
    }
    return refined


def _gains(values: Tensor, current: float, full: float) -> Tensor:
    """How much closer to the full model's metric each value is than the current one."""
    return abs(current - full) - (values - full).abs()


def _without(keep: Tensor, edge: int) -> Tensor:
    trial = keep.clone()
    trial[edge] = False
    return trial


def _best(rank: Tensor, allowed: Tensor, n: int) -> Tensor:
    """The (up to) ``n`` allowed edges of highest rank."""
    idx = allowed.nonzero().flatten()
    if len(idx) == 0:
        return idx
    return idx[rank[idx].argsort(descending=True, stable=True)[:n]]
