"""The toolkit's exceptions: one base class, specific subclasses that also inherit the builtin a
caller would naturally catch (``KeyError`` for unknown names, ``ValueError`` for bad values)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InterpError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class UnknownSiteError(InterpError, KeyError):
    """A site name that the model (or the grammar) does not know."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class ShapeError(InterpError, ValueError):
    """A tensor whose shape does not fit where it is used."""


class GraphFormatError(InterpError, ValueError):
    """A circuit-graph file or dictionary that is malformed."""


class ModelLoadError(InterpError, RuntimeError):
    """A model that cannot be loaded."""


class NetworkRequiredError(ModelLoadError, ConnectionError):
    """A model that needs the Hugging Face Hub, which cannot be reached."""


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates that look most like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A sentence suggesting close matches, or an empty string when there are none."""
    matches = close_matches(name, candidates)
    if not matches:
        return ""
    return " Did you mean " + ", ".join(repr(m) for m in matches) + "?"
