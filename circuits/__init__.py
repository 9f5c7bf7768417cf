"""circuits: circuit discovery on top of the model layer.

Tasks (:func:`ioi_task`, :func:`task_from_jsonl`), activation patching (:func:`activation_patching`;
estimators between it and AtP: :func:`lookahead_patching`, :func:`refined_patching`),
edge patching and faithfulness (:func:`edge_patching`, :func:`faithfulness`; MIB's sweep of
circuit sizes with CPR and CMD: :func:`evaluate`; exact refinement of a circuit's boundary:
:func:`refine_circuit`), the gradient methods AtP / EAP / EAP-IG
(:func:`attribution_patching`, :func:`edge_attribution`, :func:`node_attribution`), and
:func:`discover`, which looks methods up by name (and shards a sweep over Ray actors with
``executor="ray"``: :class:`RayExecutor`).
"""

from __future__ import annotations

from ._attribution import attribution_patching, edge_attribution, node_attribution
from ._boundary import refine_circuit
from ._discover import METHODS, discover, register_method
from ._edges import (
    edge_patching,
    exact_edge_scores,
    faithfulness,
    faithfulness_curve,
    plot_faithfulness,
    prepare_edge_model,
)
from ._evaluate import (
    MIB_FRACTIONS,
    Evaluation,
    evaluate,
    faithfulness_areas,
    plot_evaluations,
    select_circuit,
)
from ._masks import edge_pruning, masked_metric
from ._memory import DEFAULT_MAX_MEMORY, MemoryBudget, parse_memory
from ._metrics import METRICS, AnswerProb, KLToClean, LogitDiff, Metric, UserMetric
from ._patching import activation_patching, lookahead_patching, patching_costs
from ._ray import RayExecutor
from ._refined import Refined, refined_patching
from ._tasks import Task, TaskError, ioi_split, ioi_task, task_from_jsonl, task_from_pairs

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "MemoryBudget",
    "parse_memory",
    "METRICS",
    "AnswerProb",
    "KLToClean",
    "LogitDiff",
    "Metric",
    "UserMetric",
    "METHODS",
    "MIB_FRACTIONS",
    "RayExecutor",
    "Evaluation",
    "Refined",
    "Task",
    "TaskError",
    "activation_patching",
    "lookahead_patching",
    "masked_metric",
    "attribution_patching",
    "discover",
    "edge_attribution",
    "edge_patching",
    "edge_pruning",
    "evaluate",
    "exact_edge_scores",
    "faithfulness",
    "faithfulness_areas",
    "faithfulness_curve",
    "ioi_split",
    "ioi_task",
    "node_attribution",
    "patching_costs",
    "plot_evaluations",
    "plot_faithfulness",
    "prepare_edge_model",
    "refine_circuit",
    "refined_patching",
    "register_method",
    "select_circuit",
    "task_from_jsonl",
    "task_from_pairs",
]
