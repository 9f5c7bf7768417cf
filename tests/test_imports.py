"""The import contracts in pyproject.toml (checked on the real tree by ``make lint``) catch what
they are meant to catch: each run here is on a small stand-in tree with the same three packages
and the project's own contracts, once clean and once per kind of violation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# A tree that keeps every contract: the modules the contracts name, importing as the real ones do.
CLEAN = {
    "interp/__init__.py": "from ._loading import load\nfrom ._hooked import Hooked\n",
    "interp/_errors.py": "",
    "interp/_spec.py": "from ._errors import *\n",
    "interp/_restart.py": "from ._errors import *\n",
    "interp/_hooked.py": "from . import _restart\nfrom ._spec import *\nHooked = 1\n",
    "interp/_loading.py": "from ._hooked import Hooked\nfrom ._spec import *\nload = 1\n",
    "circuits/__init__.py": "from ._tasks import *\n",
    "circuits/_tasks.py": "import interp\nfrom interp import load\n",
    "circuits/cli.py": "import analysis\nfrom circuits import _tasks\n",
    "analysis/__init__.py": "from ._codes import *\n",
    "analysis/_codes.py": "from interp import Hooked\n",
}

VIOLATIONS = {
    "interp imports circuits": ("interp/_graph.py", "import circuits\n"),
    "interp imports analysis": ("interp/_graph.py", "from analysis import _codes\n"),
    "analysis imports circuits": ("analysis/_more.py", "import circuits\n"),
    "circuits imports analysis outside the CLI": ("circuits/_edges.py", "import analysis\n"),
    "a private module of interp from circuits": (
        "circuits/_edges.py",
        "from interp._spec import *\n",
    ),
    "a private module of interp from analysis": ("analysis/_more.py", "import interp._hooked\n"),
    "a private module of analysis from the CLI": (
        "circuits/cli.py",
        "from analysis._codes import *\n",
    ),
    "a cycle between loading and hooked models": ("interp/_hooked.py", "from . import _loading\n"),
    "the restart engine imports hooked models": ("interp/_restart.py", "from ._hooked import *\n"),
}


def _lint(tree: dict[str, str], where: Path) -> subprocess.CompletedProcess[str]:
    for name, text in tree.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    shutil.copy2(ROOT / "pyproject.toml", where / "pyproject.toml")
    # the stand-in packages come first on the path, before the editable install of the real ones
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_tree_that_keeps_the_layering_passes(tmp_path: Path) -> None:
    done = _lint(CLEAN, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("violation", sorted(VIOLATIONS))
def test_each_violation_breaks_a_contract(tmp_path: Path, violation: str) -> None:
    name, line = VIOLATIONS[violation]
    tree = dict(CLEAN)
    tree[name] = tree.get(name, "") + line
    done = _lint(tree, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
    importer = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    assert f"{importer} ->" in done.stdout, done.stdout
