"""Sharded sweeps: on Ray actors (``discover(..., executor="ray")``), and resumable from a
checkpoint (``discover(..., checkpoint=DIR)``).

Ray is the engine: each worker is a Ray actor that loads the model once (with the arguments
:func:`interp.load_model` recorded on it) and runs shards of the sweep in process. A worker
that dies mid-sweep is restarted by Ray (the actor's ``max_restarts``) and its shard run again
(``max_task_retries``); shards are pure functions of their inputs, so the result is unchanged.

How a method is sharded:

- the gradient methods (AtP, EAP, EAP-IG, clean-corrupted, RelP): by prompts. Their scores
  are means over prompts, so the shards' scores, weighted by their share of the prompts, add
  up to the whole task's;
- activation patching at node level: by cells (a head, an MLP, the input), every worker
  patching its cells over all prompts.

The driver shows one progress bar over the shards. Actors stay up for the next sweep with the
same model until Ray shuts down (``ray.shutdown()``, or the end of the driver process).

With a checkpoint folder, the plan of the sweep and every finished shard are written there,
each file atomically (a temporary file renamed into place), so a sweep stopped at any moment
(Ctrl-C, ``kill -9``) leaves only whole files, and the same call again runs only the missing
shards (in this process, or on Ray with any number of workers: the plan is read back) and
gives the identical result. A folder holding another sweep is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from interp import RULE_SETS, CircuitGraph, InterpError, TransformerModel, progress_bar

from ._patching import activation_patching
from ._tasks import Task

__all__ = ["RayExecutor", "as_executor", "prompt_sharded", "sharded_curve", "sharded_discover"]

# methods whose scores are means over prompts (RelP: every name in interp.RULE_SETS too)
PROMPT_SHARDED = ("atp", "eap", "eap-ig", "eap-ig-activations", "clean-corrupted")
CELL_SHARDED = ("activation-patching",)  # at node level
SHARDS_PER_WORKER = 4  # several shards a worker: an even load and a progress bar that moves
LOCAL_SHARDS = 8  # shards of a checkpointed sweep in this process
PLAN_FILE = "sweep.json"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class RayExecutor:
    """Where and how wide a sharded sweep runs (``executor="ray"`` is ``RayExecutor()``).

    Parameters
    ----------
    address : str, optional
        The Ray cluster to join when Ray is not running in this process yet: ``None`` or
        ``"auto"`` joins the one ``RAY_ADDRESS`` or ``ray start`` on this machine names, or
        starts a local one; anything else is passed to ``ray.init(address=...)``.
    workers : int, optional
        Ray actors, each holding one copy of the model (default: one per CPU of the cluster,
        or per GPU for a model on a GPU).
    shards : int, optional
        Pieces the work is cut into (default: 4 per worker).
    max_restarts : int
        How often Ray restarts a worker that died; its shard then runs again.

    Examples
    --------
    >>> RayExecutor(workers=2).workers
    2
    """

    address: str | None = None
    workers: int | None = None
    shards: int | None = None
    max_restarts: int = 3

    def __post_init__(self) -> None:
        for name in ("workers", "shards"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InterpError(f"RayExecutor.{name} must be an int >= 1 or None; got {value!r}.")
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int):
            raise InterpError(
                f"RayExecutor.max_restarts must be an int; got {self.max_restarts!r}."
            )


def as_executor(executor: Any) -> RayExecutor | None:
    """``None`` (this process), ``"ray"`` or a :class:`RayExecutor`, checked."""
    if executor is None or isinstance(executor, RayExecutor):
        return executor
    if executor == "ray":
        return RayExecutor()
    raise InterpError(
        f"executor must be None (this process), 'ray' or a circuits.RayExecutor; got {executor!r}."
    )


def prompt_sharded(method: str) -> bool:
    return method in PROMPT_SHARDED or method in RULE_SETS


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InterpError(
            "executor='ray' needs the ray package: pip install 'interp-toolkit[ray]'."
        ) from None
    return ray


def _connect(ray: Any, executor: RayExecutor) -> None:
    if ray.is_initialized():
        return
    address = None if executor.address in (None, "auto") else executor.address
    ray.init(address=address, include_dashboard=False, logging_level="WARNING")


# -- running shards --------------------------------------------------------------------------------


class _Shards:
    """Runs shards of a sweep on one copy of the model; each returns a dict of tensors (and
    the method's meta), which is what a checkpoint file holds."""

    def __init__(self, model: TransformerModel) -> None:
        self.model = model
        self.device = next(model.bridge.parameters()).device

    def prompts(
        self,
        task: Task,
        start: int,
        stop: int,
        method: str,
        level: str,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        from ._discover import discover

        part = task.subset(slice(start, stop)).to(self.device)
        graph = discover(self.model, part, method, level, **options)
        out: dict[str, Any] = {"meta": graph.meta}
        for name in ("node_scores", "edge_scores"):
            if getattr(graph, name) is not None:
                out[name] = getattr(graph, name).cpu()
        return out

    def cells(
        self, task: Task, component: str, cells: list[int], options: dict[str, Any]
    ) -> dict[str, Any]:
        spec = self.model.spec
        shape = (spec.n_layers, spec.n_heads) if component == "heads" else (spec.n_layers,)
        mask = torch.zeros(shape, dtype=torch.bool)
        mask.view(-1)[cells] = True
        values = activation_patching(
            self.model, task.to(self.device), component, cells=mask, **options
        )
        return {"values": values.cpu()}

    def curve(
        self, task: Task, graph: CircuitGraph, sizes: list[int], options: dict[str, Any]
    ) -> Any:
        from ._edges import faithfulness_curve

        # through its lossless dict form: a graph read back shares this process's layout
        graph = CircuitGraph.from_dict(graph)
        return faithfulness_curve(self.model, graph, task.to(self.device), sizes, **options)


class _Worker(_Shards):
    """A Ray actor: loads its copy of the model once, then runs the shards it is handed."""

    def __init__(self, loaded_with: dict[str, Any]) -> None:
        from interp import load_model

        super().__init__(load_model(**loaded_with))


Call = tuple[str, tuple[Any, ...]]  # a _Shards method and its arguments after the task


def _run_here(shards: _Shards, task: Task, calls: dict[int, Call]) -> Iterator[tuple[int, Any]]:
    for i, (name, args) in calls.items():
        yield i, getattr(shards, name)(task, *args)


def _run_on_ray(
    ray: Any, actors: list[Any], task: Task, calls: dict[int, Call]
) -> Iterator[tuple[int, Any]]:
    """Results as they come; shard j goes to actor j mod workers."""
    task_ref = ray.put(task.to("cpu"))
    refs = {
        getattr(actors[j % len(actors)], name).remote(task_ref, *args): i
        for j, (i, (name, args)) in enumerate(calls.items())
    }
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield refs[done[0]], ray.get(done[0])
    finally:  # stopped (Ctrl-C, a failed shard): the shards not begun are dropped
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref)


_POOLS: dict[tuple[Any, ...], list[Any]] = {}


def _loaded_with(model: TransformerModel) -> dict[str, Any]:
    loaded_with = getattr(model, "loaded_with", None)
    if loaded_with is None:
        raise InterpError(
            "executor='ray' loads the model again in every worker, with the arguments "
            "interp.load_model recorded on it; this model was not made by load_model (or was "
            "changed since): run it without an executor, or load it with load_model."
        )
    return dict(loaded_with)


def _actors(ray: Any, executor: RayExecutor, model: TransformerModel) -> list[Any]:
    """The pool of actors holding this model, started on first use."""
    loaded_with = _loaded_with(model)
    device = loaded_with.get("device")
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu:  # Ray hands each actor its GPU as device 0
        loaded_with["device"] = torch.device("cuda")
    resources = ray.cluster_resources()
    count = executor.workers or max(1, int(resources.get("GPU" if on_gpu else "CPU", 1)))
    context = ray.get_runtime_context()
    key = (  # a new Ray instance (new node id) starts new actors
        context.get_node_id(),
        context.get_job_id(),
        repr(sorted(loaded_with.items())),
        count,
        executor.max_restarts,
    )
    if key not in _POOLS:
        actor = ray.remote(
            num_cpus=0 if on_gpu else 1,
            num_gpus=1 if on_gpu else 0,
            max_restarts=executor.max_restarts,
            max_task_retries=executor.max_restarts,
        )(_Worker)
        _POOLS[key] = [actor.remote(loaded_with) for _ in range(count)]
    return _POOLS[key]


# -- checkpoints -----------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, renamed into place when complete."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _digest(x: Any) -> Any:
    """A JSON-able form of a sweep's inputs that is the same in every process."""
    if isinstance(x, Tensor):
        data = x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"tensor {x.dtype} {tuple(x.shape)} {hashlib.sha256(data).hexdigest()}"
    if isinstance(x, dict):
        return {str(k): _digest(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, list | tuple):
        return [_digest(v) for v in x]
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        fields = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
        return {"type": type(x).__qualname__, **_digest(fields)}
    if callable(x):
        return f"{getattr(x, '__module__', '')}.{getattr(x, '__qualname__', type(x).__name__)}"
    return repr(x)


# options that change how a sweep runs but not its result (chunking is exact): a sweep stopped
# for lack of memory resumes from its checkpoint with a smaller max_memory
_RESULT_FREE = frozenset(
    {"progress", "max_memory", "rows_per_pass", "masks_per_pass", "prompts_per_pass"}
)


def _fingerprint(
    model: TransformerModel, task: Task, method: str, level: str, options: dict[str, Any]
) -> str:
    loaded_with = getattr(model, "loaded_with", None)
    weights = loaded_with if loaded_with is not None else model.bridge.state_dict()
    fields = ("clean", "corrupt", "lengths", "answer", "wrong", "metric")
    inputs = {
        "method": method,
        "level": level,
        "options": {k: v for k, v in options.items() if k not in _RESULT_FREE},
        "model": {"spec": model.spec, "weights": weights},
        "task": {f: getattr(task, f) for f in fields},
    }
    text = json.dumps(_digest(inputs), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class _Checkpoint:
    """A folder with the sweep's plan (``sweep.json``) and one file per finished shard."""

    def __init__(self, folder: str | os.PathLike[str], fingerprint: str) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InterpError(f"checkpoint must be a folder; {self.folder} is a file.")
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".tmp-*"):  # a write that a kill cut short
            stale.unlink(missing_ok=True)
        self.fingerprint = fingerprint
        self.plan: dict[str, Any] | None = None
        plan_file = self.folder / PLAN_FILE
        if plan_file.exists():
            try:
                stored = json.loads(plan_file.read_text())
            except (OSError, ValueError) as e:
                raise InterpError(f"Cannot read the checkpoint plan {plan_file}: {e}.") from None
            if stored.get("fingerprint") != fingerprint:
                raise InterpError(
                    f"The checkpoint folder {self.folder} holds another sweep (a different "
                    "model, task, method or options); use a new folder, or delete this one "
                    "to start over."
                )
            self.plan = stored["plan"]

    def start(self, plan: dict[str, Any]) -> dict[str, Any]:
        """The stored plan, or ``plan``, stored now."""
        if self.plan is None:
            body = {"version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint, "plan": plan}
            text = json.dumps(body, indent=1).encode()
            _atomic_write(self.folder / PLAN_FILE, lambda f: f.write(text))
            self.plan = plan
        return self.plan

    def _file(self, i: int) -> Path:
        return self.folder / f"shard-{i:05d}.pt"

    def done(self, count: int) -> dict[int, Any]:
        results = {}
        for i in range(count):
            if self._file(i).exists():
                try:
                    results[i] = torch.load(self._file(i), weights_only=True)
                except Exception as e:  # whatever makes it unreadable, the file is named
                    raise InterpError(
                        f"Cannot read the checkpoint file {self._file(i)} ({e}); delete it and "
                        "run again to recompute that shard."
                    ) from None
        return results

    def save(self, i: int, result: Any) -> None:
        _atomic_write(self._file(i), lambda f: torch.save(result, f))


# -- the sweep -------------------------------------------------------------------------------------


def sharded_discover(
    executor: Any,
    model: TransformerModel,
    task: Task,
    method: str,
    level: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    """:func:`circuits.discover` with the work cut into shards that Ray actors (or this
    process, shard after shard) run; with a ``checkpoint`` folder, finished shards are kept
    there and not run again."""
    executor = as_executor(executor)
    if prompt_sharded(method):
        kind = "prompts"
    elif method in CELL_SHARDED and level == "node":
        kind = "cells"
    else:
        what = "executor='ray'" if checkpoint is None else "A checkpoint"
        raise InterpError(
            f"{what} shards {', '.join(PROMPT_SHARDED)} and the RelP rule sets by prompts, "
            f"and activation-patching at node level by cells; got {method!r} at {level} level: "
            "run it without one."
        )
    store = None
    if checkpoint is not None:
        store = _Checkpoint(checkpoint, _fingerprint(model, task, method, level, options))
    if executor is None:
        count, workers = LOCAL_SHARDS, 1
    else:
        ray = _ray()
        _loaded_with(model)  # fail before starting Ray
        _connect(ray, executor)
        actors = _actors(ray, executor, model)
        count, workers = executor.shards or SHARDS_PER_WORKER * len(actors), len(actors)
    options = {**options, "progress": False}
    if kind == "prompts":
        plan = {"prompts": _splits(len(task), count)}
        if store is not None:
            plan = store.start(plan)
        calls = {
            i: ("prompts", (a, b, method, level, options))
            for i, (a, b) in enumerate(plan["prompts"])
        }
    else:
        options.setdefault("direction", "denoising")
        plan = {"cells": _cell_jobs(model, count)}
        if store is not None:
            plan = store.start(plan)
        calls = {i: ("cells", (c, cells, options)) for i, (c, cells) in enumerate(plan["cells"])}
    results = {} if store is None else store.done(len(calls))
    todo = {i: call for i, call in calls.items() if i not in results}
    if executor is None:
        run = _run_here(_Shards(model), task, todo)
    else:
        run = _run_on_ray(ray, actors, task, todo)
    where = "this process" if executor is None else f"{workers} Ray workers"
    ordered = _collect(run, len(calls), results, f"{method} on {where}", progress, store)
    meta = {"shards": len(calls)}
    if executor is not None:
        meta["executor"] = "ray"
    if kind == "prompts":
        return _combine_prompts(model, task, plan["prompts"], ordered, meta)
    return _combine_cells(
        model, task, plan["cells"], ordered, {**meta, "direction": options["direction"]}
    )


def _collect(
    run: Iterator[tuple[int, Any]],
    total: int,
    results: dict[int, Any],
    desc: str,
    progress: bool | None,
    store: _Checkpoint | None = None,
) -> list[Any]:
    """Every shard's result in plan order, kept as it comes (one progress bar for all)."""
    with progress_bar(total=total, initial=len(results), desc=desc, progress=progress) as bar:
        for i, result in run:
            if store is not None:
                store.save(i, result)
            results[i] = result
            bar.update(1)
    return [results[i] for i in range(total)]


def sharded_curve(
    executor: Any,
    model: TransformerModel,
    graph: CircuitGraph,
    task: Task,
    sizes: Sequence[int],
    *,
    progress: bool | None = None,
    **options: Any,
) -> Any:
    """:func:`circuits.faithfulness_curve` with the sizes shared out to Ray actors (each
    measures the baselines again: a sweep over many sizes pays for that)."""
    executor = as_executor(executor)
    if executor is None:
        raise InterpError("sharded_curve needs an executor ('ray' or a RayExecutor).")
    import pandas as pd

    ray = _ray()
    _loaded_with(model)
    _connect(ray, executor)
    actors = _actors(ray, executor, model)
    sizes = [int(k) for k in sizes]
    parts = _splits(len(sizes), executor.shards or SHARDS_PER_WORKER * len(actors))
    options = {**options, "progress": False}
    data = graph.to_dict()
    calls = {i: ("curve", (data, sizes[a:b], options)) for i, (a, b) in enumerate(parts)}
    run = _run_on_ray(ray, actors, task, calls)
    desc = f"faithfulness curve on {len(actors)} Ray workers"
    return pd.concat(_collect(run, len(calls), {}, desc, progress), ignore_index=True)


def _splits(n: int, parts: int) -> list[list[int]]:
    """``parts`` contiguous ``[start, stop)`` ranges of ``range(n)``, as even as can be."""
    parts = max(1, min(n, parts))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [[a, b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _cell_jobs(model: TransformerModel, shards: int) -> list[list[Any]]:
    """The input (patching the residual entering block 0), every head and every MLP, dealt
    round robin to about ``shards`` jobs: ``[component, flat cell indices]``."""
    spec = model.spec
    cells = {
        "resid": [0],
        "heads": list(range(spec.n_layers * spec.n_heads)),
        "mlp": list(range(spec.n_layers)),
    }
    total = sum(len(c) for c in cells.values())
    jobs = []
    for component, flat in cells.items():
        parts = min(len(flat), max(1, round(shards * len(flat) / total)))
        jobs += [[component, flat[k::parts]] for k in range(parts)]
    return jobs


def _combine_prompts(
    model: TransformerModel,
    task: Task,
    parts: list[list[int]],
    results: list[dict[str, Any]],
    meta: dict[str, Any],
) -> CircuitGraph:
    """Scores are means over prompts: each shard's, weighted by its share of the prompts."""
    n = len(task)

    def combine(name: str) -> Tensor | None:
        if any(name not in r for r in results):
            return None
        total = sum(
            (b - a) / n * r[name].double() for (a, b), r in zip(parts, results, strict=True)
        )
        return total.to(results[0][name].dtype)

    return CircuitGraph.from_model(model).with_scores(
        node_scores=combine("node_scores"),
        edge_scores=combine("edge_scores"),
        metric=task.metric_name,
        task=task.name,
        meta={**results[0]["meta"], "n_prompts": n, **meta},
    )


def _combine_cells(
    model: TransformerModel,
    task: Task,
    jobs: list[list[Any]],
    results: list[dict[str, Any]],
    meta: dict[str, Any],
) -> CircuitGraph:
    """Node-level activation patching from the cells' metrics."""
    from ._discover import _node_graph

    spec, dtype = model.spec, results[0]["values"].dtype
    values = {
        "resid": torch.full((spec.n_layers,), float("nan"), dtype=dtype),
        "heads": torch.full((spec.n_layers, spec.n_heads), float("nan"), dtype=dtype),
        "mlp": torch.full((spec.n_layers,), float("nan"), dtype=dtype),
    }
    for (component, cells), result in zip(jobs, results, strict=True):
        values[component].view(-1)[cells] = result["values"].reshape(-1)[cells]
    device = next(model.bridge.parameters()).device
    graph = CircuitGraph.from_model(model, metric=task.metric_name, task=task.name, meta=meta)
    return _node_graph(model, task, graph, lambda component, **kw: values[component].to(device))
