"""Names the docstring examples use (pytest --doctest-modules runs them)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict) -> None:
    import torch
    from torch import nn

    import analysis
    import circuits
    import interp

    doctest_namespace.update(
        torch=torch,
        nn=nn,
        PROMPT="When Mary and John went to the store, John gave a drink to",
        **{name: getattr(interp, name) for name in interp.__all__},
        **{name: getattr(circuits, name) for name in circuits.__all__},
        **{name: getattr(analysis, name) for name in analysis.__all__},
    )
