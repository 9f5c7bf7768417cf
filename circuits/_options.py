"""The option words of circuit discovery, each a ``Literal`` checked once at the public entry
point (:func:`interp.check_option`), so a misspelt word is an error, never a silent fallback."""

from __future__ import annotations

from typing import Literal

from interp import check_option

__all__ = [
    "Ablation",
    "Component",
    "Direction",
    "IgOver",
    "Level",
    "Run",
    "Selection",
    "Source",
    "Split",
    "check_option",
]

Direction = Literal["denoising", "noising"]
Ablation = Literal["corrupt", "mean", "zero"]  # what an edge outside the circuit carries
Level = Literal["edge", "node"]
IgOver = Literal["inputs", "activations"]  # where EAP-IG walks its path
Component = Literal["heads", "attn", "mlp", "resid"]
Run = Literal["clean", "corrupt"]  # the prompts edge patching runs
Source = Literal["clean", "corrupt", "mean", "zero"]  # where patched activations come from
Selection = Literal["top-abs", "top-signed", "greedy-abs", "greedy-signed"]  # circuit of size k
Split = Literal["train", "test"]  # halves of the IOI data that share no template and no name
