"""Memory-bounded methods: the ``max_memory`` parser, chunked runs equal to unchunked ones for
every method at chunk sizes 1, 3 and all, and peak allocation that grows with ``max_memory``,
not with the number of prompts."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

import interp
from circuits import (
    activation_patching,
    attribution_patching,
    edge_attribution,
    edge_patching,
    edge_pruning,
    exact_edge_scores,
    faithfulness,
    ioi_task,
    lookahead_patching,
    node_attribution,
    prepare_edge_model,
    refine_circuit,
    refined_patching,
)
from circuits._memory import DEFAULT_MAX_MEMORY, MemoryBudget, parse_memory

N = 7  # prompts: chunks of 1, 3 (the last one short) and all
SIZES = (1, 3, N)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=0, equal_nan=True)


@pytest.fixture(scope="module")
def task(tiny_llama):
    return ioi_task(tiny_llama, N, seed=3, template_ids=[0])


# -- the parser ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4096, 4096),
        ("2GB", 2 * 2**30),
        ("512MB", 512 * 2**20),
        ("512 mb", 512 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("64k", 64 * 2**10),
        ("100", 100),
        ("1TB", 2**40),
        (None, DEFAULT_MAX_MEMORY),
    ],
)
def test_parse_memory(value, expected) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["", "GB", "2XB", "-1GB", "2 G B", "1e9", "0", 0, -5, 1.5, True])
def test_parse_memory_refuses_what_is_not_a_size(value) -> None:
    with pytest.raises(interp.InterpError, match="max_memory"):
        parse_memory(value)


def test_a_bad_max_memory_is_refused_by_the_methods(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(interp.InterpError, match="max_memory must look like"):
        edge_attribution(tiny_gpt2, None, task, max_memory="lots")
    with pytest.raises(interp.InterpError, match="rows_per_pass"):
        edge_attribution(tiny_gpt2, None, task, rows_per_pass=0)


def test_chunks_follow_the_budget(tiny_llama) -> None:
    small, large = MemoryBudget(tiny_llama, "64KB"), MemoryBudget(tiny_llama, "1GB")
    assert small.gradient_rows(16) == 1  # never less than one row
    assert large.gradient_rows(16) > 100 * small.gradient_rows(16)
    assert large.patch_rows(16) > large.gradient_rows(16)  # no gradients: more rows


# -- chunked equals unchunked --------------------------------------------------------------------


def _memory_for(per_token: float, positions: int, rows: int, share: float = 1.0) -> int:
    """The max_memory that gives ``rows`` rows of a budget's per-token cost."""
    return math.ceil(per_token * positions * (rows + 0.5) / share)


@pytest.mark.parametrize("ig_over", ["inputs", "activations"])
def test_edge_attribution_does_not_depend_on_chunks(tiny_llama, task, ig_over) -> None:
    if ig_over == "activations":  # 2 n_layers + 1 times the passes: fewer prompts
        task = task.subset(slice(0, 4))
    copies = 2 if ig_over == "inputs" else 1  # inputs: rows are prompts x IG points
    runs = [
        edge_attribution(
            tiny_llama, None, task, ig_steps=2, ig_over=ig_over, rows_per_pass=size * copies
        )
        for size in (1, 3, len(task))
    ]
    for run in runs[:-1]:
        close(run.edge_scores, runs[-1].edge_scores)
        close(run.node_scores, runs[-1].node_scores)


def test_ig_points_split_over_passes_do_not_change_eap_ig(tiny_llama, task) -> None:
    # fewer rows per pass than points on the path: each prompt's points go in groups
    runs = [
        edge_attribution(tiny_llama, None, task, ig_steps=5, rows_per_pass=rows)
        for rows in (1, 3, 5 * N)
    ]
    for run in runs[:-1]:
        close(run.edge_scores, runs[-1].edge_scores)
        close(run.node_scores, runs[-1].node_scores)


def test_node_attribution_and_atp_do_not_depend_on_chunks(tiny_llama, task) -> None:
    nodes = [node_attribution(tiny_llama, None, task, rows_per_pass=s).node_scores for s in SIZES]
    cells = [
        attribution_patching(tiny_llama, task, "heads", per_position=True, rows_per_pass=2 * s)
        for s in SIZES
    ]
    for i in range(2):
        close(nodes[i], nodes[-1])
        close(cells[i], cells[-1])


def test_activation_and_lookahead_patching_do_not_depend_on_chunks(tiny_llama, task) -> None:
    budget = MemoryBudget(tiny_llama)
    positions = task.clean.shape[1]
    exact, ahead = [], []
    for size in SIZES:
        memory = _memory_for(budget.cache_token(), positions, size, share=0.5)
        exact.append(
            activation_patching(
                tiny_llama, task, "heads", tokens_per_pass=40, max_memory=memory, progress=False
            )
        )
        ahead.append(
            lookahead_patching(tiny_llama, task, "resid", tokens_per_pass=60, max_memory=memory)
        )
    for i in range(2):
        close(exact[i], exact[-1])
        close(ahead[i], ahead[-1])


def test_refined_patching_does_not_depend_on_chunks(tiny_llama, task) -> None:
    budget = MemoryBudget(tiny_llama)
    positions = task.clean.shape[1]
    runs = [
        refined_patching(
            tiny_llama,
            task,
            budget=0.3,
            estimate="atp",
            max_memory=_memory_for(budget.cache_token(), positions, size, share=0.5),
        )
        for size in SIZES
    ]
    for run in runs[:-1]:
        close(run.values, runs[-1].values)
        assert torch.equal(run.exact, runs[-1].exact)


@pytest.mark.parametrize("source", ["corrupt", "mean", "zero"])
def test_edge_patching_does_not_depend_on_chunks(tiny_llama, task, source) -> None:
    model, layout = prepare_edge_model(tiny_llama)
    per_token = MemoryBudget(model).patch_token(task.clean.shape[1])
    gen = torch.Generator().manual_seed(0)
    masks = layout.to_matrix(torch.rand(len(layout.edge_src), 4, generator=gen) < 0.3)
    masks = masks.permute(2, 0, 1)
    runs = []
    for size in SIZES:  # one mask per pass: `size` prompts per pass
        memory = _memory_for(per_token, task.clean.shape[1], size)
        runs.append(
            edge_patching(model, task, masks, source=source, masks_per_pass=1, max_memory=memory)
        )
    runs.append(edge_patching(model, task, masks, source=source, masks_per_pass=3))
    for run in runs[:-1]:
        close(run, runs[-1])


def test_faithfulness_and_exact_edges_do_not_depend_on_chunks(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, N, seed=5, template_ids=[0])
    graph = edge_attribution(tiny_gpt2, None, task)
    model, layout = prepare_edge_model(tiny_gpt2)
    per_token = MemoryBudget(model).patch_token(task.clean.shape[1])
    every = len(layout.edge_src)
    faith, exact = [], []
    for size in SIZES:  # prompts per pass
        memory = _memory_for(per_token, task.clean.shape[1], size)
        faith.append(
            faithfulness(tiny_gpt2, graph.top(15), task, ablation="mean", max_memory=memory)
        )
        exact.append(
            exact_edge_scores(tiny_gpt2, graph, task, edges_per_pass=every, max_memory=memory)
        )
    for f, e in zip(faith[:-1], exact[:-1], strict=True):
        assert f["faithfulness"] == pytest.approx(faith[-1]["faithfulness"], abs=1e-5)
        assert f["corrupt"] == pytest.approx(faith[-1]["corrupt"], abs=1e-5)
        close(e, exact[-1])
    # edges per pass: 3 (the last pass short) against all at once
    close(
        exact_edge_scores(tiny_gpt2, graph, task.subset(slice(0, 2)), edges_per_pass=3),
        exact_edge_scores(tiny_gpt2, graph, task.subset(slice(0, 2)), edges_per_pass=every),
    )


def test_refine_circuit_does_not_depend_on_chunks(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, N, seed=6)
    first = edge_attribution(tiny_gpt2, None, task, ig_steps=2)
    model, _ = prepare_edge_model(tiny_gpt2)
    per_token = MemoryBudget(model).patch_token(task.clean.shape[1])
    runs = [
        refine_circuit(
            tiny_gpt2,
            first,
            task,
            20,
            candidates=4,
            rounds=1,
            masks_per_pass=1,
            max_memory=_memory_for(per_token, task.clean.shape[1], size),
            progress=False,
        )
        for size in SIZES
    ]
    for run in runs[:-1]:
        assert torch.equal(run.edge_in_graph, runs[-1].edge_in_graph)
        assert run.meta["refine"]["after"] == pytest.approx(
            runs[-1].meta["refine"]["after"], abs=1e-5
        )


@pytest.mark.parametrize("objective", ["kl", "metric"])
def test_edge_pruning_does_not_depend_on_chunks(tiny_gpt2, objective) -> None:
    task = ioi_task(tiny_gpt2, N, seed=7)
    runs = [
        edge_pruning(
            tiny_gpt2, task, target=0.2, steps=3, objective=objective, prompts_per_pass=size,
            progress=False,
        )
        for size in SIZES
    ]  # fmt: skip
    for run in runs[:-1]:
        close(run.edge_scores, runs[-1].edge_scores)
        assert run.meta["fit"] == pytest.approx(runs[-1].meta["fit"], abs=1e-5)


# -- half precision ------------------------------------------------------------------------------


def test_bfloat16_model_stays_in_bfloat16_and_scores_in_float32() -> None:
    wide = interp.load_model("tiny-gpt2")
    half = interp.load_model("tiny-gpt2", dtype=torch.bfloat16)
    assert next(half.bridge.parameters()).dtype == torch.bfloat16
    task = ioi_task(wide, 6, seed=2)
    graph = edge_attribution(half, None, task, ig_steps=2)
    assert graph.edge_scores.dtype == torch.float32
    assert next(half.bridge.parameters()).dtype == torch.bfloat16
    reference = edge_attribution(wide, None, task, ig_steps=2).edge_scores
    corr = torch.corrcoef(torch.stack([graph.edge_scores, reference]))[0, 1]
    assert float(corr) > 0.98
    cells = activation_patching(half, task, "heads", progress=False)
    assert cells.dtype == torch.float32


# -- peak memory ---------------------------------------------------------------------------------


class PeakMemory(TorchDispatchMode):
    """Live bytes of the tensor storages that torch ops allocate while active (weights made
    before it are not counted), and their peak: a CPU stand-in for
    ``torch.cuda.max_memory_allocated``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, object] = {}
        self.now = self.peak = 0

    def _free(self, key: int, nbytes: int) -> None:
        if self.live.pop(key, None) is not None:
            self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))

        def see(t: torch.Tensor) -> None:
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes and key not in self.live:
                self.live[key] = weakref.finalize(storage, self._free, key, nbytes)
                self.now += nbytes
                self.peak = max(self.peak, self.now)

        tree_map_only(torch.Tensor, see, out)
        return out


def _peak(fn) -> int:
    with PeakMemory() as meter:
        fn()
    return meter.peak


def test_eap_peak_memory_follows_max_memory_not_the_prompts(tiny_gpt2) -> None:
    def eap(n: int, memory: str):
        task = ioi_task(tiny_gpt2, n, seed=0, template_ids=[0])
        return lambda: edge_attribution(tiny_gpt2, None, task, max_memory=memory)

    few, many = _peak(eap(3, "512KB")), _peak(eap(9, "512KB"))
    assert many < 1.3 * few  # three times the prompts, about the same peak
    assert _peak(eap(9, "64MB")) > 2 * many  # a larger budget is used


@pytest.mark.parametrize("ig_steps", [1, 3])
def test_eap_passes_stay_within_max_memory(tiny, ig_steps) -> None:
    """What a budget's passes allocate beyond passes of one row stays within the budget: the
    per-row estimate (GRADIENT_VECTORS) may be generous, never short."""
    task = ioi_task(tiny, 12, seed=0, template_ids=[0])
    budget = 4 * 2**20
    rows = MemoryBudget(tiny, budget).gradient_rows(task.clean.shape[1])
    assert 3 <= rows < 12 * ig_steps  # several rows per pass, and more than one pass

    def eap(**chunking):
        return lambda: edge_attribution(tiny, None, task, ig_steps=ig_steps, **chunking)

    eap(rows_per_pass=1)()  # the edge model (tiny-llama's ungrouped copy) is built once
    one_row = _peak(eap(rows_per_pass=1))
    assert 0 < _peak(eap(max_memory=budget)) - one_row <= budget


def test_patching_peak_memory_follows_max_memory_not_the_prompts(tiny_gpt2) -> None:
    def patching(n: int, memory: str):
        task = ioi_task(tiny_gpt2, n, seed=0, template_ids=[0])
        return lambda: activation_patching(
            tiny_gpt2, task, "attn", max_memory=memory, progress=False
        )

    few, many = _peak(patching(3, "64KB")), _peak(patching(9, "64KB"))
    assert many < 1.3 * few
    assert _peak(patching(9, "64MB")) > 2 * many


def test_kl_reference_peak_memory_follows_max_memory_not_the_prompts(tiny_gpt2) -> None:
    from circuits._metrics import _clean_log_probs

    def reference(n: int, memory: str):
        task = ioi_task(tiny_gpt2, n, seed=0, template_ids=[0])
        return lambda: _clean_log_probs(tiny_gpt2, task, memory)

    few, many = _peak(reference(3, "64KB")), _peak(reference(9, "64KB"))
    assert many < 1.3 * few  # only the (prompts, vocab) reference itself grows
    assert _peak(reference(9, "64MB")) > 2 * many  # one pass over all prompts
