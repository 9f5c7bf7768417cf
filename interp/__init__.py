"""interp: the model layer of the toolkit.

Loading (:func:`load_model`), naming places in a model (:class:`Site`), hooks, caches and
gradients through one wrapper (:class:`HookedModel`), and the common result object
(:class:`CircuitGraph`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._errors import (
    GraphFormatError,
    InterpError,
    ModelLoadError,
    NetworkRequiredError,
    ShapeError,
    UnknownSiteError,
    check_option,
    did_you_mean,
)
from ._formats import FORMATS, ExportFormat, register_format
from ._frozen import check_linearisable, frozen_gains
from ._graph import CircuitGraph, EdgeView, NodeView
from ._hooked import (
    ActivationCache,
    GradientRun,
    HookedModel,
    ModuleModel,
    TransformerModel,
    count_hooks,
    wrap,
)
from ._layout import GraphLayout, ReaderGroup, WriterGroup
from ._loading import (
    MODELS,
    ModelTokenizer,
    data_path,
    from_hf,
    load_model,
    load_tokenizer,
    ungroup_gqa,
    ungrouped,
)
from ._lrp import COMPOSITES, lrp, lrp_rules, plot_relevance
from ._progress import progress_bar
from ._restart import BlockInputs
from ._rule_core import Composite, Rule, RuleHandles, register_composite, register_rule
from ._rules import RULE_SETS, gradient_rules
from ._site import Site
from ._spec import ModelSpec

try:
    __version__ = version("interp-toolkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "COMPOSITES",
    "MODELS",
    "RULE_SETS",
    "ActivationCache",
    "BlockInputs",
    "CircuitGraph",
    "Composite",
    "EdgeView",
    "ExportFormat",
    "FORMATS",
    "NodeView",
    "GradientRun",
    "GraphLayout",
    "ReaderGroup",
    "WriterGroup",
    "GraphFormatError",
    "HookedModel",
    "InterpError",
    "ModelLoadError",
    "ModelSpec",
    "ModelTokenizer",
    "ModuleModel",
    "NetworkRequiredError",
    "ShapeError",
    "Rule",
    "RuleHandles",
    "Site",
    "TransformerModel",
    "UnknownSiteError",
    "__version__",
    "check_option",
    "check_linearisable",
    "count_hooks",
    "data_path",
    "did_you_mean",
    "from_hf",
    "frozen_gains",
    "gradient_rules",
    "load_model",
    "load_tokenizer",
    "lrp",
    "lrp_rules",
    "plot_relevance",
    "progress_bar",
    "register_format",
    "register_composite",
    "register_rule",
    "ungroup_gqa",
    "ungrouped",
    "wrap",
]
