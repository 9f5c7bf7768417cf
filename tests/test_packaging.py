"""The built wheel is complete: installed on its own, away from the source tree, it loads a model
and builds the IOI task from the data it ships.

The wheel is built without build isolation (the project's own setuptools, no download) from a
copy of the files a build reads, so the source tree gets no build/ or egg-info litter. The fresh
virtual environment sees the project environment's third-party packages through a ``.pth`` line
(a plain path: the editable install's finder there is not run), so torch is not installed twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "circuits", "analysis")
BUILD_INPUTS = ("pyproject.toml", "README.md", *PACKAGES)

CHECK = """
import sys
from pathlib import Path

import interp
from circuits import ioi_task

prefix = Path(sys.prefix).resolve()
for path in (interp.__file__, str(interp.data_path("ioi.json"))):
    assert prefix in Path(path).resolve().parents, f"{path} is not the wheel's copy in {prefix}"
task = ioi_task(interp.load_model("tiny-gpt2"), 4, seed=0)
assert len(task) == 4, len(task)
print("ok", interp.__file__)
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        src,
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--quiet",
        "-w",
        tmp / "dist",
        cwd=tmp,
    )
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_data_and_type_markers(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("interp/data/ioi.json", *(f"{p}/py.typed" for p in PACKAGES)):
        assert name in names, f"the wheel lacks {name}"
    tops = {name.split("/")[0] for name in names}
    assert tops - set(PACKAGES) == {"interp_toolkit-0.1.0.dist-info"}, tops  # no tests, no data/


@pytest.mark.slow
def test_installed_wheel_runs_outside_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--no-deps",
        "--no-index",
        "--quiet",
        wheel,
        cwd=tmp_path,
    )
    purelib = _run(
        python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
    )
    (Path(purelib.strip()) / "project-packages.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    # -I: no PYTHONPATH, no user site, no current directory on sys.path
    assert "ok" in _run(python, "-I", "-c", CHECK, cwd=work, env=env)
    assert "tiny-gpt2" in _run(venv / "bin" / "interp", "models", cwd=work, env=env)
