"""Metrics are data: each equals a direct computation from logits, and every method reads it."""

from __future__ import annotations

import pytest
import torch

from circuits import discover, faithfulness, ioi_task
from interp import InterpError


@pytest.fixture(scope="module")
def task(tiny_gpt2):
    return ioi_task(tiny_gpt2, 4, seed=3)


def _last(model, task, tokens):
    logits = model(tokens).double()
    return logits[torch.arange(len(task)), task.lengths - 1]


def test_each_metric_equals_a_direct_computation(tiny_gpt2, task):
    last = _last(tiny_gpt2, task, task.corrupt)
    rows = torch.arange(len(task))
    clean = torch.log_softmax(_last(tiny_gpt2, task, task.clean), -1)
    direct = {
        "logit_diff": (last[rows, task.answer] - last[rows, task.wrong]).mean(),
        "prob": torch.softmax(last, -1)[rows, task.answer].mean(),
        "kl": (clean.exp() * (clean - torch.log_softmax(last, -1))).sum(-1).mean(),
    }
    for name, expected in direct.items():
        ours = task.with_metric(name, tiny_gpt2).measure(tiny_gpt2(task.corrupt))
        assert float(ours) == pytest.approx(float(expected), rel=1e-4, abs=1e-6), name
    kl = task.with_metric("kl", tiny_gpt2)
    assert float(kl.measure(tiny_gpt2(kl.clean))) == pytest.approx(0.0, abs=1e-6)
    # a subset keeps each prompt's own reference distribution
    part = kl.subset([2, 3])
    expected = (clean.exp() * (clean - torch.log_softmax(last, -1))).sum(-1)[2:].mean()
    assert float(part.measure(tiny_gpt2(part.corrupt))) == pytest.approx(float(expected), abs=1e-6)


def test_a_callable_is_a_metric_and_bad_ones_are_refused(tiny_gpt2, task):
    def answer_logit(logits, answer, wrong):
        return logits[torch.arange(len(logits)), answer]

    custom = task.with_metric(answer_logit)
    last = _last(tiny_gpt2, task, task.clean)
    expected = last[torch.arange(len(task)), task.answer].mean()
    assert float(custom.measure(tiny_gpt2(task.clean))) == pytest.approx(float(expected), 1e-4)
    assert custom.metric_name == "answer_logit"
    with pytest.raises(InterpError, match="one value per row"):
        task.with_metric(lambda lg, a, w: lg).measure(tiny_gpt2(task.clean))
    with pytest.raises(InterpError, match="Did you mean 'prob'"):
        task.with_metric("porb")
    with pytest.raises(InterpError, match="pass the model"):
        task.with_metric("kl")


@pytest.mark.parametrize("metric", ["prob", "kl"])
def test_methods_read_the_metric_from_the_task(tiny_gpt2, task, metric):
    measured = task.with_metric(metric, tiny_gpt2)
    # node activation patching of the input is the other run: m(clean) - m(corrupt)
    graph = discover(tiny_gpt2, measured, "activation-patching", "node", progress=False)
    with torch.no_grad():
        gap = measured.measure(tiny_gpt2(task.clean)) - measured.measure(tiny_gpt2(task.corrupt))
    assert float(graph.nodes["input"].score) == pytest.approx(float(gap), rel=1e-4, abs=1e-6)
    assert graph.metric == metric
    # attribution and faithfulness run on it too; the full circuit recovers everything
    eap = discover(tiny_gpt2, measured, "eap", "edge")
    full = eap.top(eap.n_ranked("edge"))
    result = faithfulness(tiny_gpt2, full, measured)
    assert result["metric"] == pytest.approx(result["clean"], abs=1e-6)  # m(C) = m(N)
    assert result["metric"] != pytest.approx(result["corrupt"], abs=1e-6)


def test_a_task_from_token_ids_without_texts_can_be_split(tiny_gpt2, task):
    from dataclasses import replace

    bare = replace(task, clean_text=(), corrupt_text=())
    part = bare.subset([0, 2])
    assert torch.equal(part.clean, task.clean[[0, 2]]) and part.clean_text == ()
    graph = discover(tiny_gpt2, bare, "eap", "edge", rows_per_pass=2)  # chunks call subset
    assert int((~graph.edge_scores.isnan()).sum()) == len(graph.edges)


@pytest.mark.parametrize("size", [1, 3, 7])
def test_kl_reference_streams_over_prompt_chunks(tiny_gpt2, monkeypatch, size):
    """The clean run's reference distributions, made over chunks of 1, 3 (the last one short)
    and all 7 prompts, equal a float64 computation over the whole batch."""
    from circuits._memory import MemoryBudget
    from circuits._metrics import _clean_log_probs

    task = ioi_task(tiny_gpt2, 7, seed=5)
    monkeypatch.setattr(MemoryBudget, "logit_rows", lambda self, positions: size)
    passes = []
    real = type(tiny_gpt2).__call__
    monkeypatch.setattr(
        type(tiny_gpt2),
        "__call__",
        lambda self, x, *a, **k: passes.append(len(x)) or real(self, x, *a, **k),
    )
    ours = _clean_log_probs(tiny_gpt2, task)
    monkeypatch.undo()
    assert passes == [min(size, 7 - i) for i in range(0, 7, size)]
    expected = torch.log_softmax(_last(tiny_gpt2, task, task.clean), -1)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    torch.testing.assert_close(ours.double(), expected, atol=1e-5, rtol=0)


def test_kl_reference_chunks_follow_max_memory(tiny_gpt2):
    from circuits._memory import MemoryBudget

    positions = ioi_task(tiny_gpt2, 2, seed=5).clean.shape[1]
    assert MemoryBudget(tiny_gpt2, "1KB").logit_rows(positions) == 1
    assert MemoryBudget(tiny_gpt2, "1GB").logit_rows(positions) > 1000
