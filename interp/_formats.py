"""Export formats of a :class:`~interp.CircuitGraph`, in one registry.

A format is a function ``write(graph, path)`` registered under a name with the file suffixes it
owns. :meth:`CircuitGraph.export <interp.CircuitGraph.export>` and ``interp export --to`` look
formats up here, so a new format is one decorated function (next to its implementation) and
its test. Files are written atomically: to a temporary file beside the target, then renamed,
so an interrupted export never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import InterpError, check_option

if TYPE_CHECKING:
    from ._graph import CircuitGraph

__all__ = ["FORMATS", "ExportFormat", "export", "register_format"]

Writer = Callable[["CircuitGraph", Path], Any]


@dataclass(frozen=True)
class ExportFormat:
    """A registered export format: its name, the file suffixes it owns and its writer."""

    name: str
    suffixes: tuple[str, ...]
    write: Writer
    description: str


FORMATS: dict[str, ExportFormat] = {}


def register_format(
    name: str, *, suffixes: tuple[str, ...] = (), description: str
) -> Callable[[Writer], Writer]:
    """Register ``write(graph, path)`` as the export format ``name`` (a decorator).

    ``suffixes`` (with the dot, e.g. ``(".gexf",)``) let :func:`export` infer the format from
    a file name; a format without suffixes is only chosen by name.
    """

    def add(write: Writer) -> Writer:
        if name in FORMATS:
            raise InterpError(f"An export format named {name!r} is already registered.")
        owned = {s: f.name for f in FORMATS.values() for s in f.suffixes}
        taken = [s for s in suffixes if s in owned]
        if taken:
            raise InterpError(f"Suffixes {taken} already belong to {owned[taken[0]]!r}.")
        FORMATS[name] = ExportFormat(name, tuple(suffixes), write, description)
        return write

    return add


def format_for(path: Path, format: str | None) -> ExportFormat:
    """The format to write ``path`` in: ``format`` if given (a format with suffixes of its own
    refuses a file named with another format's suffix), else the one owning the suffix."""
    suffix = path.suffix.lower()
    owner = next((f for f in FORMATS.values() if suffix in f.suffixes), None)
    if format is None:
        if owner is None:
            raise InterpError(
                f"Cannot tell the format of {str(path)!r} from its suffix; pass a format "
                f"({', '.join(FORMATS)}) or use one of the suffixes "
                f"{', '.join(s for f in FORMATS.values() for s in f.suffixes)}."
            )
        return owner
    chosen = FORMATS[check_option("format", format, tuple(FORMATS))]
    if owner is not None and owner is not chosen and chosen.suffixes:
        raise InterpError(
            f"The file {str(path)!r} has the suffix of {owner.name!r}, not {format!r}; "
            f"name it with {' or '.join(chosen.suffixes)}."
        )
    return chosen


def export(graph: CircuitGraph, path: Any, format: str | None = None) -> Path:
    """Write ``graph`` to ``path`` in a registered format (atomically); returns the path."""
    path = Path(path)
    fmt = format_for(path, format)
    if path.is_dir():
        raise InterpError(f"{str(path)!r} is a directory; give a file name to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        fmt.write(graph, Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's file is private; the target should not be
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the built-in formats register themselves where they are implemented
from . import _graph_draw, _graph_io  # noqa: E402, F401
