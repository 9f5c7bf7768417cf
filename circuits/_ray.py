"""Sweeps sharded over Ray actors: ``discover(..., executor="ray")``.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp import RULE_SETS, CircuitGraph, InterpError, TransformerModel, progress_bar

from ._patching import activation_patching
from ._tasks import Task

__all__ = ["RayExecutor", "as_executor", "prompt_sharded", "sharded_discover"]

# methods whose scores are means over prompts (RelP: every name in interp.RULE_SETS too)
PROMPT_SHARDED = ("atp", "eap", "eap-ig", "eap-ig-activations", "clean-corrupted")
CELL_SHARDED = ("activation-patching",)  # at node level
SHARDS_PER_WORKER = 4  # several shards a worker: an even load and a progress bar that moves


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


def as_executor(executor: Any) -> RayExecutor:
    """``"ray"`` or a :class:`RayExecutor`, checked."""
    if isinstance(executor, RayExecutor):
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


class _Worker:
    """A Ray actor: one copy of the model, and the shards it is handed."""

    def __init__(self, loaded_with: dict[str, Any]) -> None:
        from interp import load_model

        self.model = load_model(**loaded_with)
        self.device = next(self.model.bridge.parameters()).device

    def discover(self, task: Task, method: str, level: str, options: dict[str, Any]) -> Any:
        from ._discover import discover

        graph = discover(self.model, task.to(self.device), method, level, **options)
        return graph.node_scores, graph.edge_scores, graph.meta

    def patch(self, task: Task, component: str, cells: Tensor, options: dict[str, Any]) -> Tensor:
        values = activation_patching(
            self.model, task.to(self.device), component, cells=cells, **options
        )
        return values.cpu()


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


def _workers(ray: Any, executor: RayExecutor, model: TransformerModel) -> list[Any]:
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


def _gather(ray: Any, refs: list[Any], desc: str, progress: bool | None) -> list[Any]:
    """The results of ``refs`` in order, with one progress bar over them."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending = list(refs)
    with progress_bar(total=len(refs), desc=desc, progress=progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = ray.get(done[0])
            bar.update(1)
    return results


def _splits(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices of ``range(n)`` as even as can be (none empty)."""
    parts = max(1, min(n, parts))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sharded_discover(
    executor: Any,
    model: TransformerModel,
    task: Task,
    method: str,
    level: str,
    *,
    progress: bool | None = None,
    **options: Any,
) -> CircuitGraph:
    """:func:`circuits.discover` with the work cut into shards that Ray actors run."""
    executor = as_executor(executor)
    if prompt_sharded(method):
        run = _by_prompts
    elif method in CELL_SHARDED and level == "node":
        run = _by_cells
    else:
        raise InterpError(
            f"executor='ray' shards {', '.join(PROMPT_SHARDED)} and the RelP rule sets by "
            f"prompts, and activation-patching at node level by cells; got {method!r} at "
            f"{level} level: run it without an executor."
        )
    ray = _ray()
    _loaded_with(model)  # fail before starting Ray
    _connect(ray, executor)
    workers = _workers(ray, executor, model)
    shards = executor.shards or SHARDS_PER_WORKER * len(workers)
    return run(ray, workers, shards, model, task, method, level, progress, options)


def _by_prompts(
    ray: Any,
    workers: Sequence[Any],
    shards: int,
    model: TransformerModel,
    task: Task,
    method: str,
    level: str,
    progress: bool | None,
    options: dict[str, Any],
) -> CircuitGraph:
    """Scores are means over prompts: each shard's, weighted by its share of the prompts."""
    parts = _splits(len(task), shards)
    cpu = task.to("cpu")
    options = {**options, "progress": False}
    refs = [
        workers[i % len(workers)].discover.remote(cpu.subset(part), method, level, options)
        for i, part in enumerate(parts)
    ]
    results = _gather(ray, refs, f"{method} on {len(workers)} Ray workers", progress)
    n = len(task)

    def combine(which: int) -> Tensor | None:
        scores = [r[which] for r in results]
        if any(s is None for s in scores):
            return None
        total = sum((p.stop - p.start) / n * s.double() for p, s in zip(parts, scores, strict=True))
        return total.to(scores[0].dtype)

    graph = CircuitGraph.from_model(model)
    meta = {**results[0][2], "n_prompts": n, "executor": "ray", "shards": len(parts)}
    return graph.with_scores(
        node_scores=combine(0),
        edge_scores=combine(1),
        metric=task.metric_name,
        task=task.name,
        meta=meta,
    )


def _by_cells(
    ray: Any,
    workers: Sequence[Any],
    shards: int,
    model: TransformerModel,
    task: Task,
    method: str,
    level: str,
    progress: bool | None,
    options: dict[str, Any],
) -> CircuitGraph:
    """Node-level activation patching: the input (patching the residual entering block 0),
    every head and every MLP, dealt round robin to the shards of each component."""
    from ._discover import _node_graph

    direction = options.pop("direction", "denoising")
    options = {**options, "direction": direction, "progress": False}
    spec = model.spec
    wanted = {
        "resid": torch.zeros(spec.n_layers, dtype=torch.bool),
        "heads": torch.ones(spec.n_layers, spec.n_heads, dtype=torch.bool),
        "mlp": torch.ones(spec.n_layers, dtype=torch.bool),
    }
    wanted["resid"][0] = True  # the input node only
    total = sum(int(mask.sum()) for mask in wanted.values())
    jobs: list[tuple[str, Tensor]] = []
    for component, mask in wanted.items():
        cells = mask.flatten().nonzero().flatten()
        parts = max(1, round(shards * len(cells) / total))
        for k in range(min(parts, len(cells))):
            shard = torch.zeros(mask.numel(), dtype=torch.bool)
            shard[cells[k::parts]] = True
            jobs.append((component, shard.view(mask.shape)))
    task_ref = ray.put(task.to("cpu"))
    refs = [
        workers[i % len(workers)].patch.remote(task_ref, component, cells, options)
        for i, (component, cells) in enumerate(jobs)
    ]
    results = _gather(ray, refs, f"{method} on {len(workers)} Ray workers", progress)
    values = {c: torch.full(m.shape, float("nan")) for c, m in wanted.items()}
    for (component, cells), part in zip(jobs, results, strict=True):
        values[component] = torch.where(cells, part, values[component])
    device = next(model.bridge.parameters()).device
    graph = CircuitGraph.from_model(
        model,
        metric=task.metric_name,
        task=task.name,
        meta={"direction": direction, "executor": "ray", "shards": len(jobs)},
    )
    return _node_graph(model, task, graph, lambda component, **kw: values[component].to(device))
