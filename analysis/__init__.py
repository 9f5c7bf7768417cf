"""analysis: representation analyses (neural codes, neuron alignment, LinearScope, interaction basis).

So far: :class:`LinearScope` (plain networks) and :class:`TransformerLinearScope` (input
embeddings to logits), the linear interpreters of a network at one input.
"""

from __future__ import annotations

from ._linearscope import (
    LinearInterpretation,
    LinearScope,
    TransformerInterpretation,
    TransformerLinearScope,
)

__all__ = [
    "LinearInterpretation",
    "LinearScope",
    "TransformerInterpretation",
    "TransformerLinearScope",
]
