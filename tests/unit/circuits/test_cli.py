"""The `interp` command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from circuits.cli import app
from interp import CircuitGraph, ModelSpec

runner = CliRunner()


@pytest.fixture
def graph_file(tmp_path):
    spec = ModelSpec(name="toy", architecture="gpt2", n_layers=2, n_heads=2, d_model=8)
    g = CircuitGraph.from_model(spec, method="unit-test")
    g = g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges))).top(4)
    path = tmp_path / "graph.json"
    g.to_json(path)
    return path, g


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "interp"  # the venv's console script
    assert exe.exists()
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "export" in out.stdout and "models" in out.stdout


def test_models_lists_network_needs() -> None:
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    lines = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()[1:]
        if line and not line.startswith("Also")
    }
    assert lines["smollm2-135m"] == "no" and lines["gpt2"] == "yes"


def test_sites_of_a_tiny_model() -> None:
    result = runner.invoke(app, ["sites", "tiny-gpt2", "--kind", "attn", "--no-heads"])
    assert result.exit_code == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert "a1.z" in names and "a0<q>" in names and "a0.h1" not in names


@pytest.mark.parametrize("fmt", ["json", "graphml", "dot", "csv", "html", "png", "svg", "eap-ig"])
def test_export_every_format(graph_file, tmp_path, fmt: str) -> None:
    path, g = graph_file
    out = tmp_path / f"out.{fmt}"
    result = runner.invoke(app, ["export", str(path), "--to", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.stat().st_size > 0
    if fmt == "json":
        assert CircuitGraph.from_json(out) == g
    if fmt == "eap-ig":
        assert set(json.loads(out.read_text())) == {"cfg", "nodes", "edges"}


def test_show_summarises(graph_file) -> None:
    path, g = graph_file
    result = runner.invoke(app, ["show", str(path), "--top", "3"])
    assert result.exit_code == 0
    assert "unit-test" in result.stdout and "top 3 edges" in result.stdout
    assert g.edges_df().sort_values("score", key=abs).iloc[-1]["name"] in result.stdout


def test_bad_file_is_one_line_error(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "interp-toolkit.circuit-graph", "format_')
    result = runner.invoke(app, ["show", str(bad)])
    assert result.exit_code == 1
    assert "truncated" in result.output and "Traceback" not in result.output


def test_unknown_model_is_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = runner.invoke(app, ["sites", "some-org/not-a-model"])
    assert result.exit_code == 1 and "needs the network" in result.output


def test_demo_on_a_tiny_model(tmp_path) -> None:
    result = runner.invoke(
        app, ["demo", "--model", "tiny-gpt2", "--top", "30", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "faithfulness" in result.stdout
    graph = CircuitGraph.from_json(tmp_path / "circuit.json")
    assert graph.model.name == "tiny-gpt2" and graph.method == "eap-ig"
    assert 0 < graph.n_edges_in_graph <= 30
    assert (tmp_path / "circuit.png").read_bytes().startswith(b"\x89PNG")
    assert "<svg" in (tmp_path / "circuit.html").read_text()


def test_discover_json_summary(tmp_path) -> None:
    out = tmp_path / "c.json"
    result = runner.invoke(
        app,
        [
            "discover",
            "--model",
            "tiny-llama",
            "--method",
            "eap",
            "--n-prompts",
            "4",
            "--top",
            "25",
            "--out",
            str(out),
            "--png",
            str(tmp_path / "c.png"),
            "--json-summary",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"method", "level", "n_nodes", "n_edges", "faithfulness", "seconds"} <= set(summary)
    assert summary["method"] == "eap" and summary["n_edges"] <= 25
    graph = CircuitGraph.from_json(out)
    assert graph.meta["faithfulness"] == pytest.approx(summary["faithfulness"])
    evaluated = runner.invoke(
        app, ["evaluate", str(out), "--model", "tiny-llama", "--n-prompts", "4"]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert f"{summary['faithfulness']:.4f}" in evaluated.stdout


def test_discover_rejects_bad_task_and_mismatched_model(tmp_path) -> None:
    result = runner.invoke(app, ["discover", "--model", "tiny-gpt2", "--task", "sst2"])
    assert result.exit_code == 1 and "--task must be" in result.output
    out = tmp_path / "c.json"
    runner.invoke(
        app,
        [
            "discover",
            "--model",
            "tiny-gpt2",
            "--method",
            "atp",
            "--level",
            "node",
            "--top",
            "3",
            "--n-prompts",
            "2",
            "--out",
            str(out),
        ],
    )
    result = runner.invoke(app, ["evaluate", str(out), "--model", "gpt2-shaped"])
    assert result.exit_code == 1 and "not gpt2-shaped" in result.output


def test_discover_node_level_can_keep_every_ranked_node(tmp_path) -> None:
    # --top larger than the graph keeps every node that can be ranked: all but input and
    # logits, which always stay in (one node too few was kept before)
    out = tmp_path / "c.json"
    args = ["discover", "--model", "tiny-gpt2", "--method", "atp", "--level", "node"]
    result = runner.invoke(app, [*args, "--top", "1000", "--n-prompts", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    circuit = CircuitGraph.from_json(out)
    assert circuit.n_nodes_in_graph == len(circuit.node_names)


def test_help_lists_what_the_registries_hold() -> None:
    from circuits import METHODS
    from interp import FORMATS

    discover_help = runner.invoke(app, ["discover", "--help"], terminal_width=400).output
    export_help = runner.invoke(app, ["export", "--help"], terminal_width=400).output
    assert all(name in discover_help for name in METHODS)
    assert all(name in export_help for name in FORMATS)


def discover_to(path: Path, *args: str) -> dict:
    result = runner.invoke(
        app,
        ["discover", "--model", "tiny-gpt2", "--method", "eap", "--top", "20", "--out", str(path)]
        + list(args)
        + ["--json-summary"],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_evaluate_defaults_to_the_circuits_prompt_count_and_seed(tmp_path) -> None:
    out = tmp_path / "c.json"
    summary = discover_to(out, "--n-prompts", "3", "--seed", "5")
    result = runner.invoke(app, ["evaluate", str(out), "--model", "tiny-gpt2"])
    assert result.exit_code == 0, result.output
    assert "3 prompt pairs, seed 5" in result.output
    assert f"{summary['faithfulness']:.4f}" in result.stdout  # the very task it was found on
    other = runner.invoke(app, ["evaluate", str(out), "--model", "tiny-gpt2", "--seed", "6"])
    assert "3 prompt pairs, seed 6" in other.output


def test_evaluate_uses_the_held_out_split(tmp_path, tiny_gpt2) -> None:
    from circuits import faithfulness, ioi_task

    out = tmp_path / "c.json"
    discover_to(out, "--n-prompts", "4", "--split", "train")
    graph = CircuitGraph.from_json(out)
    assert graph.meta["split"] == "train"
    result = runner.invoke(app, ["evaluate", str(out), "--model", "tiny-gpt2"])
    assert result.exit_code == 0, result.output
    assert "test split" in result.output
    test_task = ioi_task(tiny_gpt2, 4, seed=0, split="test")
    expected = faithfulness(tiny_gpt2, graph, test_task)["faithfulness"]
    assert f"faithfulness {expected:.4f}" in result.stdout
    same = runner.invoke(app, ["evaluate", str(out), "--model", "tiny-gpt2", "--split", "train"])
    assert "train split" in same.output


def test_evaluate_sweep_prints_mibs_table(tmp_path, tiny_gpt2) -> None:
    from circuits import evaluate, ioi_task

    out = tmp_path / "c.json"
    discover_to(out, "--n-prompts", "3")
    png = tmp_path / "sweep.png"
    args = ["evaluate", str(out), "--model", "tiny-gpt2", "--sweep", "--ablation", "zero"]
    result = runner.invoke(app, [*args, "--selection", "greedy-abs", "--png", str(png)])
    assert result.exit_code == 0, result.output
    expected = evaluate(
        tiny_gpt2,
        CircuitGraph.from_json(out),
        ioi_task(tiny_gpt2, 3, seed=0),
        selection="greedy-abs",
        ablation="zero",
        progress=False,
    )
    assert f"CPR {expected.cpr:.4f}" in result.stdout and f"CMD {expected.cmd:.4f}" in result.stdout
    assert "effective_edges" in result.stdout and "greedy-abs" in result.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    both = runner.invoke(
        app, ["evaluate", str(out), "--model", "tiny-gpt2", "--sweep", "--top", "5"]
    )
    assert both.exit_code == 1 and "drop --top" in both.output


def test_max_memory_reaches_every_chunked_pass_and_changes_no_result(tmp_path, monkeypatch):
    """--max-memory sizes the chunks of discovery, faithfulness, the kl metric's reference and
    the gap check (every MemoryBudget made gets it), and the circuit and its metrics are those
    of the default budget, where all four prompts run in one pass."""
    from circuits._memory import MemoryBudget

    budgets = []
    made = MemoryBudget.__init__

    def spy(self, model, max_memory=None):
        budgets.append(max_memory)
        made(self, model, max_memory)

    monkeypatch.setattr(MemoryBudget, "__init__", spy)
    args = ["discover", "--model", "tiny-gpt2", "--method", "eap-ig", "--n-prompts", "4"]
    args += ["--top", "20", "--metric", "kl", "--json-summary"]
    small = runner.invoke(app, [*args, "--out", str(tmp_path / "s.json"), "--max-memory", "256KB"])
    assert small.exit_code == 0, small.output
    assert budgets and set(budgets) == {256 * 2**10}, budgets
    budgets.clear()
    default = runner.invoke(app, [*args, "--out", str(tmp_path / "d.json")])
    assert default.exit_code == 0, default.output
    assert 256 * 2**10 not in budgets
    ours, theirs = (json.loads(r.stdout.strip().splitlines()[-1]) for r in (small, default))
    # KL values of order 1e-4: their faithfulness (a ratio of two) is compared through them
    for key in ("metric", "clean", "corrupt"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-7), key
    a, b = (CircuitGraph.from_json(tmp_path / f) for f in ("s.json", "d.json"))
    torch.testing.assert_close(a.edge_scores, b.edge_scores, atol=1e-5, rtol=0, equal_nan=True)
    assert torch.equal(a.edge_in_graph, b.edge_in_graph)
    budgets.clear()
    evaluate = ["evaluate", str(tmp_path / "s.json"), "--model", "tiny-gpt2", "--metric"]
    evaluate.append("logit_diff")
    small = runner.invoke(app, [*evaluate, "--max-memory", "256KB"])
    assert small.exit_code == 0, small.output
    assert set(budgets) == {256 * 2**10}, budgets
    default = runner.invoke(app, evaluate)
    assert "faithfulness" in small.stdout
    # the same numbers up to the last printed digit: chunks of one prompt sum the metric in
    # another order (~1e-8), and this random model's clean-corrupted gap of ~1e-3 can carry
    # that into the fourth decimal of faithfulness
    numbers = [re.findall(r"-?\d+\.\d+", r.stdout) for r in (small, default)]
    assert len(numbers[0]) == len(numbers[1]) == 4
    for ours, theirs in zip(*numbers, strict=True):
        assert float(ours) == pytest.approx(float(theirs), abs=1.5e-4)
