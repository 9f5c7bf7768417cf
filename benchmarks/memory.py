"""Peak resident memory and time per prompt against the number of prompts, at a max_memory.

For EAP-IG (edges, 5 steps over the inputs) and activation patching (heads) on SmolLM2-135M
(the embedded model) with 8, 32, 128 and 512 IOI prompts by default. Each size runs in a fresh
subprocess, so every peak (the child's ``ru_maxrss``, from ``os.wait4``) is the whole
process: Python, torch, the model and its ungrouped copy, and the method's
working memory. Flat peaks mean the methods stream over prompts. Time per prompt is given as
wall seconds and as the child's CPU seconds (steadier on a shared machine), with the load
average when each size ended.

    python benchmarks/memory.py                          # all sizes, both methods
    python benchmarks/memory.py --sizes 8 32 --methods eap-ig --max-memory 1GB
    python benchmarks/memory.py --device cuda --sizes 512 --methods eap-ig   # on a GPU

On a GPU the table adds the peak GPU memory (``torch.cuda.max_memory_allocated``) and the
time is synchronised with the GPU's queue.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

METHODS = ("eap-ig", "activation-patching")


def child(method: str, model_name: str, n: int, max_memory: str | None, device: str | None) -> None:
    """Run one method once in this process and print a JSON line with its timings."""
    start = time.perf_counter()
    import torch

    import interp
    from circuits import discover, ioi_task

    cuda = device is not None and device.startswith("cuda")
    model = interp.load_model(model_name, device=device)
    if method == "eap-ig":
        interp.ungrouped(model)  # built once per model: part of loading, not of the method
    loaded = time.perf_counter()
    task = ioi_task(model, n, seed=0).to(model.device)
    options = {} if max_memory is None else {"max_memory": max_memory}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    run, cpu = time.perf_counter(), time.process_time()
    discover(model, task, method, "edge" if method == "eap-ig" else "node", **options)
    if cuda:
        torch.cuda.synchronize()
    done, cpu_done = time.perf_counter(), time.process_time()
    print(
        json.dumps(
            {
                "load_s": loaded - start,
                "method_s": done - run,
                # CPU seconds of this process: on a shared machine, wall time measures the load
                "method_cpu_s": cpu_done - cpu,
                "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
            }
        )
    )


def measure(
    method: str, model_name: str, n: int, max_memory: str | None, device: str | None
) -> dict:
    """One size in a fresh subprocess: its timings and its peak resident memory (the child's
    own ``ru_maxrss``, read when it is reaped)."""
    cmd = [sys.executable, __file__, "--child", method, "--model", model_name, "--sizes", str(n)]
    if max_memory is not None:
        cmd += ["--max-memory", max_memory]
    if device is not None:
        cmd += ["--device", device]
    with tempfile.TemporaryFile("w+") as errors:  # a file: a chatty child never blocks on it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # reaped here, with its resource usage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{method} with {n} prompts failed:\n{errors.read()[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {**result, "peak_gb": usage.ru_maxrss * 1024 / 1e9}  # Linux: kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--max-memory", default=None, help="e.g. 1GB (default: the toolkit's)")
    parser.add_argument("--device", default=None, help="e.g. cuda (default: the CPU)")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.sizes[0], args.max_memory, args.device)
        return
    print(f"{args.model} on {args.device or 'the CPU'}, max_memory={args.max_memory or 'default'}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(
        f"{'method':<22}{'prompts':>8}{'peak RSS GB':>13}{'s/prompt':>10}{'cpu s/prompt':>14}"
        f"{'load s':>8}{'load avg':>10}{'GPU peak GB':>13}"
    )
    for method in args.methods:
        for n in args.sizes:
            r = measure(method, args.model, n, args.max_memory, args.device)
            gpu = "" if r["gpu_peak_gb"] is None else f"{r['gpu_peak_gb']:>13.2f}"
            print(
                f"{method:<22}{n:>8}{r['peak_gb']:>13.2f}{r['method_s'] / n:>10.3f}"
                f"{r['method_cpu_s'] / n:>14.3f}{r['load_s']:>8.1f}{os.getloadavg()[0]:>10.2f}{gpu}",
                flush=True,
            )


if __name__ == "__main__":
    main()
