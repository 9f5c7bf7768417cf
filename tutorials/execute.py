"""Execute the tutorials in place, so that they are stored with their outputs (``make notebooks``).

A reader on GitHub or in JupyterLab sees every table and plot without running anything. Progress
bars are left out of the stored outputs: they are live widgets (or stderr lines) that say nothing
once the cell has finished, and a stored widget shows only as "Loading widget...". So are warnings
printed to stderr that name this machine's paths.

    python tutorials/execute.py                 # every tutorial
    python tutorials/execute.py 02_ioi*.ipynb   # some
    python tutorials/execute.py --clean-only    # only strip progress bars from stored outputs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
WIDGET = "application/vnd.jupyter.widget-view+json"


def _kept(output: dict) -> bool:
    """False for a progress bar (widget or stderr) or a stderr warning."""
    if output.get("output_type") == "stream" and output.get("name") == "stderr":
        return False
    data = output.get("data", {})
    return not (WIDGET in data or "it/s]" in "".join(data.get("text/plain", "")))


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if _kept(o)]
    nb.metadata.pop("widgets", None)
    return nb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("notebooks", nargs="*", help="default: every tutorial")
    p.add_argument("--clean-only", action="store_true")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = p.parse_args()
    paths = [HERE / n for n in args.notebooks] or sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        if not args.clean_only:
            NotebookClient(nb, timeout=args.timeout, resources={"metadata": {"path": HERE}}).execute()
        nbformat.write(clean(nb), path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
