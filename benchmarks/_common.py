"""Shared set-up of the benchmark scripts: models, tasks and a timer."""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from pathlib import Path
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
    p.add_argument("--quick", action="store_true", help="a smaller run (make bench's default)")
    return p


def load(args: argparse.Namespace) -> interp.TransformerModel:
    return interp.load_model(args.model, device=args.device)


def ioi(model: interp.TransformerModel, n: int):
    return ioi_task(model, n, seed=0, template_ids=[0]).to(model.device)


PROFILES = Path(__file__).resolve().parent.parent / "out" / "bench"


def profile_row(name: str, fn: Callable[[], Any], seconds: float, top: int = 12) -> Path:
    """Profile one more run of a row (torch.profiler, operators by self CPU time): the full
    table goes to ``out/bench/profile_<row>.txt``, its top ``top`` lines are printed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=25
    )
    PROFILES.mkdir(parents=True, exist_ok=True)
    path = PROFILES / f"profile_{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.txt"
    path.write_text(f"{name}: {seconds:.2f} s unprofiled\n{table}\nby input shape:\n{shapes}")
    lines = table.splitlines()
    print(f"\nprofile of ours, {name} ({seconds:.1f} s unprofiled; full table in {path}):")
    print("\n".join(lines[: top + 3]))
    return path
