"""Sweeps sharded over Ray actors (``discover(..., executor="ray")``) give the in-process result.

One local Ray instance with 2 CPUs serves the whole module (it takes seconds to start) and is
shut down at the end, leaving no Ray process behind. Workers hold tiny-gpt2.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest
import torch

import interp
from circuits import RayExecutor, discover, ioi_task

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install '.[ray]'")

pytestmark = pytest.mark.slow  # Ray's start-up alone takes seconds


def _ray_children() -> list[psutil.Process]:
    names = ("raylet", "gcs_server", "ray::", "default_worker")
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            text = " ".join(child.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if any(name in text for name in names):
            found.append(child)
    return found


@pytest.fixture(scope="module")
def local_ray():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield ray
    ray.shutdown()
    deadline = time.monotonic() + 20
    while _ray_children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_children(), "Ray processes were left running after ray.shutdown()"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert torch.equal(a.isnan(), b.isnan())
    return float((a - b).abs().nan_to_num().max())


def test_eap_ig_edges_sharded_by_prompts(local_ray, tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 6)
    alone = discover(tiny_gpt2, task, "eap-ig", "edge")
    sharded = discover(tiny_gpt2, task, "eap-ig", "edge", executor="ray")
    assert _max_diff(sharded.edge_scores, alone.edge_scores) < 1e-6
    assert _max_diff(sharded.node_scores, alone.node_scores) < 1e-6
    assert sharded.meta["executor"] == "ray" and sharded.meta["shards"] == 6
    assert sharded.meta["n_prompts"] == 6 and sharded.method == "eap-ig"


def test_activation_patching_nodes_sharded_by_cells(local_ray, tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4)
    alone = discover(tiny_gpt2, task, "activation-patching", "node")
    sharded = discover(
        tiny_gpt2, task, "activation-patching", "node", executor=RayExecutor(shards=3)
    )
    assert _max_diff(sharded.node_scores, alone.node_scores) < 1e-6
    assert int((~sharded.node_scores.isnan()).sum()) > 0


def test_killed_worker_is_retried(local_ray, tiny_gpt2, tmp_path: Path) -> None:
    """The first worker to measure the metric kills its own process (once: a marker file says
    it has happened); Ray restarts the actor and runs its shard again."""
    marker = tmp_path / "killed"
    driver = os.getpid()

    def dying_logit_diff(logits, answer, wrong):
        if os.getpid() != driver and not marker.exists():
            marker.touch()
            os._exit(1)  # as kill -9 would: no clean-up, no exception
        rows = torch.arange(len(logits))
        return logits[rows, answer] - logits[rows, wrong]

    task = ioi_task(tiny_gpt2, 4).with_metric(dying_logit_diff)
    alone = discover(tiny_gpt2, task, "eap", "edge")
    sharded = discover(tiny_gpt2, task, "eap", "edge", executor="ray")
    assert marker.exists(), "no worker was killed: the test did not test anything"
    assert _max_diff(sharded.edge_scores, alone.edge_scores) < 1e-6


def test_unshardable_method_and_unknown_executor(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(interp.InterpError, match="by cells; got 'activation-patching' at edge"):
        discover(tiny_gpt2, task, "activation-patching", "edge", executor="ray")
    with pytest.raises(interp.InterpError, match="executor must be None"):
        discover(tiny_gpt2, task, "eap", "edge", executor="dask")
    with pytest.raises(interp.InterpError, match="workers must be an int"):
        RayExecutor(workers=0)
