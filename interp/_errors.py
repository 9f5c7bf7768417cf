"""The toolkit's exceptions: one base class, specific subclasses that also inherit the builtin a
caller would naturally catch (``KeyError`` for unknown names, ``ValueError`` for bad values)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, get_args


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


def check_option(name: str, value: Any, words: Any) -> str:
    """``value`` if it is one of ``words`` (a ``Literal`` type or a collection of strings);
    otherwise an :class:`InterpError` that lists the words and suggests close matches.

    Option words are checked once, at the public entry point, so that a misspelt word is an
    error and never a silent fallback.

    Examples
    --------
    >>> from typing import Literal
    >>> check_option("direction", "noising", Literal["denoising", "noising"])
    'noising'
    >>> check_option("direction", "nosing", ("denoising", "noising"))
    Traceback (most recent call last):
    ...
    interp._errors.InterpError: direction must be one of 'denoising', 'noising'; got 'nosing'. Did you mean 'noising', 'denoising'?
    """
    allowed = get_args(words) or tuple(words)
    if not isinstance(value, str) or value not in allowed:
        raise InterpError(
            f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}."
            + (did_you_mean(value, allowed) if isinstance(value, str) else "")
        )
    return value
