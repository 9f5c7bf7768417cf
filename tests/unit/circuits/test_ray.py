"""Sweeps sharded over Ray actors (``discover(..., executor="ray")``) give the in-process result.

One local Ray instance with 2 CPUs serves the whole module (it takes seconds to start) and is
shut down at the end, leaving no Ray process behind. Workers hold tiny-gpt2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

import interp
from circuits import RayExecutor, discover, faithfulness_curve, ioi_task

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


def test_faithfulness_curve_sharded_by_sizes(local_ray, tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 4)
    graph = discover(tiny_gpt2, task, "eap", "edge")
    sizes = [1, 5, 20, 50, 110]
    alone = faithfulness_curve(tiny_gpt2, graph, task, sizes, progress=False)
    sharded = faithfulness_curve(tiny_gpt2, graph, task, sizes, executor=RayExecutor(shards=3))
    assert sharded["k"].tolist() == sizes and list(sharded.columns) == list(alone.columns)
    for column in ("k", "n_edges", "n_nodes"):
        assert sharded[column].tolist() == alone[column].tolist()
    for column in ("metric", "clean", "corrupt"):
        assert float((sharded[column] - alone[column]).abs().max()) < 1e-6
    # faithfulness divides by clean - corrupt, small on a random model
    gap = abs(float(alone["clean"][0] - alone["corrupt"][0]))
    assert float((sharded["faithfulness"] - alone["faithfulness"]).abs().max()) * gap < 1e-6


def test_unshardable_method_and_unknown_executor(tiny_gpt2) -> None:
    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(interp.InterpError, match="by cells; got 'activation-patching' at edge"):
        discover(tiny_gpt2, task, "activation-patching", "edge", executor="ray")
    with pytest.raises(interp.InterpError, match="executor must be None"):
        discover(tiny_gpt2, task, "eap", "edge", executor="dask")
    with pytest.raises(interp.InterpError, match="workers must be an int"):
        RayExecutor(workers=0)


# -- checkpoints: resume after Ctrl-C or kill -9 ---------------------------------------------------


def _counting(calls: list[int], stop_at: int | None = None):
    """Logit difference, counting its calls; a Ctrl-C at call ``stop_at``."""

    def logit_diff(logits, answer, wrong):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        rows = torch.arange(len(logits))
        return logits[rows, answer] - logits[rows, wrong]

    return logit_diff


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_resume_after_ctrl_c_runs_only_missing_shards(tiny_gpt2, tmp_path: Path) -> None:
    base = ioi_task(tiny_gpt2, 8)
    calls: list[int] = []
    task = base.with_metric(_counting(calls))
    full = discover(tiny_gpt2, task, "eap-ig", "edge", checkpoint=tmp_path / "full")
    per_shard, shards = len(calls) // 8, full.meta["shards"]
    assert shards == 8 and len(calls) == 8 * per_shard
    assert _max_diff(full.edge_scores, discover(tiny_gpt2, task, "eap-ig").edge_scores) < 1e-6

    calls.clear()
    stopped = base.with_metric(_counting(calls, stop_at=3 * per_shard + 1))
    with pytest.raises(KeyboardInterrupt):
        discover(tiny_gpt2, stopped, "eap-ig", "edge", checkpoint=tmp_path / "cut")
    assert _files(tmp_path / "cut") == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"] + [
        "sweep.json"
    ]
    calls.clear()
    again = discover(tiny_gpt2, task, "eap-ig", "edge", checkpoint=tmp_path / "cut")
    assert len(calls) == 5 * per_shard  # the three finished shards are not run again
    assert _max_diff(again.edge_scores, full.edge_scores) == 0.0  # bit for bit
    assert _max_diff(again.node_scores, full.node_scores) == 0.0
    assert len(_files(tmp_path / "cut")) == 9  # no temporary file left behind


def test_a_sweep_resumes_with_another_max_memory(tiny_gpt2, tmp_path: Path) -> None:
    """A sweep stopped (say, for lack of memory) resumes from its checkpoint with a smaller
    max_memory, which changes the chunks but not the result; another option is refused."""
    base = ioi_task(tiny_gpt2, 8)
    full = discover(tiny_gpt2, base, "eap-ig", "edge")
    calls: list[int] = []
    discover(
        tiny_gpt2,
        base.with_metric(_counting(calls)),
        "eap-ig",
        "edge",
        checkpoint=tmp_path / "probe",
    )
    per_shard = len(calls) // 8
    calls.clear()
    stopped = base.with_metric(_counting(calls, stop_at=2 * per_shard + 1))
    with pytest.raises(KeyboardInterrupt):
        discover(tiny_gpt2, stopped, "eap-ig", "edge", checkpoint=tmp_path / "cut")
    calls.clear()
    task = base.with_metric(_counting(calls))
    again = discover(
        tiny_gpt2, task, "eap-ig", "edge", checkpoint=tmp_path / "cut", max_memory="64KB"
    )
    assert len(calls) > 6 * per_shard  # six shards left, in more (smaller) passes each
    assert _max_diff(again.edge_scores, full.edge_scores) < 1e-6
    with pytest.raises(interp.InterpError, match="holds another sweep"):
        discover(tiny_gpt2, base, "eap-ig", "edge", checkpoint=tmp_path / "cut", ig_steps=3)


def test_checkpoint_of_another_sweep_is_refused(tiny_gpt2, tmp_path: Path) -> None:
    task = ioi_task(tiny_gpt2, 2)
    discover(tiny_gpt2, task, "eap", "edge", checkpoint=tmp_path)
    with pytest.raises(interp.InterpError, match="holds another sweep"):
        discover(tiny_gpt2, task, "eap-ig", "edge", checkpoint=tmp_path)
    with pytest.raises(interp.InterpError, match="A checkpoint shards"):
        discover(tiny_gpt2, task, "activation-patching", "edge", checkpoint=tmp_path / "x")


def test_resume_on_ray_from_a_checkpoint_made_here(local_ray, tiny_gpt2, tmp_path: Path) -> None:
    """The plan is read back, so Ray's workers finish what this process began."""
    base = ioi_task(tiny_gpt2, 4)
    calls: list[int] = []
    task = base.with_metric(_counting(calls))
    full = discover(tiny_gpt2, task, "activation-patching", "node", checkpoint=tmp_path / "a")
    n_shards = full.meta["shards"]
    stopped = base.with_metric(_counting([], stop_at=len(calls) // 2))
    with pytest.raises(KeyboardInterrupt):
        discover(tiny_gpt2, stopped, "activation-patching", "node", checkpoint=tmp_path / "b")
    assert 1 < len(_files(tmp_path / "b")) < n_shards + 1
    resumed = discover(
        tiny_gpt2, task, "activation-patching", "node", executor="ray", checkpoint=tmp_path / "b"
    )
    assert resumed.meta["shards"] == n_shards and resumed.meta["executor"] == "ray"
    assert _max_diff(resumed.node_scores, full.node_scores) < 1e-6


KILLED_RUN = """
import os, signal, sys, json
import torch, interp
from circuits import discover, ioi_task
calls = []
def logit_diff(logits, answer, wrong):
    calls.append(1)
    if len(calls) == int(os.environ.get("KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    rows = torch.arange(len(logits))
    return logits[rows, answer] - logits[rows, wrong]
model = interp.load_model("tiny-gpt2")
task = ioi_task(model, 8).with_metric(logit_diff)
graph = discover(model, task, "eap", "edge", checkpoint=sys.argv[1])
print(json.dumps({"calls": len(calls), "edges": graph.edge_scores.tolist()}))
"""


def test_resume_after_kill_9_gives_the_identical_result(tiny_gpt2, tmp_path: Path) -> None:
    def run(kill_at: int) -> subprocess.CompletedProcess:
        env = {**os.environ, "KILL_AT": str(kill_at)}
        return subprocess.run(
            [sys.executable, "-c", KILLED_RUN, str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    killed = run(kill_at=4)  # in the fourth shard or earlier: eap measures once or more a shard
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = [p for p in _files(tmp_path) if p.startswith("shard-")]
    assert 0 < len(kept) < 8 and not [p for p in _files(tmp_path) if p.startswith(".tmp")]
    done = run(kill_at=0)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    task = ioi_task(tiny_gpt2, 8)
    alone = discover(tiny_gpt2, task, "eap", "edge")
    assert _max_diff(torch.tensor(out["edges"]), alone.edge_scores) < 1e-6
