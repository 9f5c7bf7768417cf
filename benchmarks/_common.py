"""Shared set-up of the benchmark scripts: models, tasks and a timer."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

import interp
from circuits import ioi_task, task_from_pairs


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(result, seconds), waiting for the GPU's queued work where there is one."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def fixed_name_task(model: interp.TransformerModel, n: int, seed: int = 0):
    """IOI prompts of one template whose answer and wrong tokens are the same in every pair
    (TransformerLens' per-example metric functions cannot look up per-prompt answers)."""
    from circuits._tasks import ioi_data

    data = ioi_data()
    template = data["baba_templates"][0]
    g = torch.Generator().manual_seed(seed)
    clean, corrupt = [], []
    for _ in range(n):
        place = data["places"][int(torch.randint(8, (1,), generator=g))]
        obj = data["objects"][int(torch.randint(8, (1,), generator=g))]
        text = template.replace("[PLACE]", place).replace("[OBJECT]", obj)
        clean.append(text.replace("[B]", "John").replace("[A]", "Mary").rsplit(" Mary", 1)[0])
        corrupt.append(
            text.replace("[B]", "Lisa", 1)
            .replace("[A]", "Kevin", 1)
            .replace("[B]", "Adam")
            .rsplit(" [A]", 1)[0]
        )
    return task_from_pairs(model, clean, corrupt, [" Mary"] * n, [" John"] * n, name="ioi-fixed")


def parser(description: str, model: str = "smollm2-135m", n_prompts: int = 8):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=model)
    p.add_argument("--n-prompts", type=int, default=n_prompts)
    p.add_argument("--device", default=None, help="e.g. cuda (default: the CPU)")
    return p


def load(args: argparse.Namespace) -> interp.TransformerModel:
    return interp.load_model(args.model, device=args.device)


def ioi(model: interp.TransformerModel, n: int):
    return ioi_task(model, n, seed=0, template_ids=[0]).to(model.device)
