"""Run every benchmark script in this folder (``make bench``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
for script in sorted(here.glob("bench_*.py")):
    print(f"\n== {script.name} ==", flush=True)
    subprocess.run([sys.executable, str(script), *sys.argv[1:]], check=True, cwd=here)
