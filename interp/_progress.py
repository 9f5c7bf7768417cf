"""One progress-bar policy for the whole toolkit: tqdm, shown on a terminal, quiet otherwise."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks


def progress_bar(
    iterable: Iterable[Any] | None = None, *, desc: str, progress: bool | None = None, **kwargs: Any
) -> tqdm:
    """A tqdm bar; ``progress=None`` shows it only when stderr is a terminal (tqdm's own test).

    Examples
    --------
    >>> sum(progress_bar(range(3), desc="demo", progress=False))
    3
    """
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=desc, disable=None if progress is None else not progress, **kwargs)
