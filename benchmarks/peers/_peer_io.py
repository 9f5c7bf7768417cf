"""What every peer script shares: the spec our driver writes, a timer, the result file.

Runs inside a peer's own virtual environment, so it imports nothing of ours.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def read_spec() -> tuple[dict, Path]:
    """The spec (``argv[1]``) and the folder for the results (``argv[2]``); one thread."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    torch.manual_seed(0)
    return spec, Path(sys.argv[2])


def tokens(spec: dict) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(spec[k]) for k in ("clean", "corrupt", "answer", "wrong")}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of the last position's answer minus wrong logit."""
    rows = torch.arange(len(answer))
    last = logits[:, -1]
    return (last[rows, answer] - last[rows, wrong]).mean()


def write(out: Path, name: str, version: str, logits: torch.Tensor, rows: dict) -> None:
    """Clean-run logits to ``logits.pt``, everything else to ``result.json``."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(logits.detach().float().cpu(), out / "logits.pt")
    payload = {"peer": name, "version": version, "threads": torch.get_num_threads(), "rows": rows}
    (out / "result.json").write_text(json.dumps(payload))
