"""The README's quick start runs as written (from a scratch directory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.integration
def test_quick_start_runs(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no Python quick start"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "circuit.json").exists()
    assert namespace["model"].top_predictions(namespace["prompt"], k=1)[0][0] == " Mary"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().splitlines()[:6]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)


def test_analysis_example_runs() -> None:
    """The representation-analyses example trains small networks offline and fits the three
    estimators; what it prints must be what the README says it is."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "NeuralCodes" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    summary, report = namespace["align"].summary(), namespace["codes"].report()
    assert list(summary.index) == ["1", "4"] and (summary["cka"] > 0).all()
    assert set(report.index) == {"train", "test"}
    assert 0 <= report.loc["test", "redundancy"] <= 1
    assert namespace["basis"].kept_[-1] == 10  # the output layer keeps its 10 logits
