"""Run every benchmark script in this folder (``make bench``).

``--quick`` runs each in its smaller form (``make bench`` does; ``make bench BENCH=`` runs the
full ones); ``--only NAME ...`` picks scripts (``peers``, ``eap``, ...). Other arguments go to
every script. Every script runs with one thread per side (``OMP_NUM_THREADS=1``), so the
numbers do not depend on how many cores the machine has.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

# scripts that do not take --quick, and their smaller form
QUICK = {"bench_hamming_knn.py": ["--train", "5000", "--test", "1000"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="the smaller form of every script")
    p.add_argument("--only", nargs="*", default=None, help="e.g. peers eap patching")
    args, rest = p.parse_known_args()
    here = Path(__file__).resolve().parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed = []
    for script in sorted(here.glob("bench_*.py")):
        if args.only is not None and script.stem.removeprefix("bench_") not in args.only:
            continue
        extra = QUICK.get(script.name, ["--quick"]) if args.quick else []
        print(f"\n== {script.name} {' '.join(extra + rest)} ==", flush=True)
        done = subprocess.run([sys.executable, str(script), *extra, *rest], cwd=here, env=env)
        if done.returncode:
            failed.append(script.name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
