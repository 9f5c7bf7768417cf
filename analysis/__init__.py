"""analysis: representation analyses (neural codes, neuron alignment, LinearScope, interaction basis).

So far: :class:`LinearScope`, the linear interpreter of a plain network at one input.
"""

from __future__ import annotations

from ._linearscope import LinearInterpretation, LinearScope

__all__ = ["LinearInterpretation", "LinearScope"]
