"""Bad command lines: every error a user can cause is one line `error: ...` on stderr with exit
status 1, found before the model is loaded, with no file written and none touched (`--debug`
shows the traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import circuits
from circuits import cli
from circuits.cli import app
from interp import CircuitGraph, InterpError, ModelSpec

runner = CliRunner()
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = {
    "clean": "When Mary and John went to the store, John gave a drink to",
    "corrupt": "When Lisa and Kevin went to the store, Adam gave a drink to",
    "answer": " Mary",
    "wrong": " John",
}


def one_line_error(result, message: str = "", *, code: int = 1, loads: bool = False) -> str:
    """The result is exit status ``code`` and exactly one stderr line, `error: ...` matching
    ``message``, no traceback, and (unless ``loads``) no model load was started."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output, result.output
    assert loads or "loading " not in result.stderr, result.stderr
    assert message in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.jsonl").write_text(json.dumps(GOOD))
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_dir.jsonl").mkdir()
    spec = ModelSpec(name="tiny-gpt2", architecture="gpt2", n_layers=2, n_heads=4, d_model=64)
    g = CircuitGraph.from_model(spec, method="unit-test")
    g.with_scores(edge_scores=torch.linspace(-1, 1, len(g.edges))).top(5).to_json(
        tmp_path / "graph.json"
    )
    return tmp_path


def task_line(tmp_path: Path, **changes) -> str:
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({**GOOD, **changes}))
    return str(path)


DISCOVER = ["discover", "--model", "tiny-gpt2", "--method", "eap", "--n-prompts", "2"]

# (arguments after DISCOVER, with {d} for the folder of files, the error's text)
DISCOVER_CASES = [
    (["--top", "0"], "--top must be at least 1; got 0"),
    (["--top", "-3"], "--top must be at least 1; got -3"),
    (["--n-prompts", "0"], "--n-prompts must be at least 1; got 0"),
    (["--n-prompts", "abc"], "Invalid value for '--n-prompts'"),
    (["--top", "1.5"], "Invalid value for '--top'"),
    (["--level", "bogus"], "Invalid value for '--level'"),
    (["--selection", "best"], "Invalid value for '--selection'"),
    (["--split", "half"], "Invalid value for '--split'"),
    (["--bogus-option"], "No such option"),
    (["--method", "eap-gi"], "--method 'eap-gi' is not a registered method"),
    (["--method", "atp"], "--method atp scores nodes, not edges; pass --level node"),
    (["--metric", "logit-diff"], "--metric must be one of"),
    (["--task", "sst2"], "--task must be 'ioi' or a .jsonl file"),
    (["--task", "{d}/missing.jsonl"], "No task file"),
    (["--task", "{d}/a_dir.jsonl"], "is a directory; --task takes a .jsonl file"),
    (["--task", "{d}/good.jsonl", "--split", "train"], "a JSONL task has no split"),
    (["--out", "{d}"], "is a directory; give a file name"),
    (["--out", "{d}/a_file/c.json"], "a_file is a file, so nothing can be written inside it"),
    (["--png", "{d}/a_file/c.png"], "a_file is a file"),
    (["--html", "{d}"], "--html"),
    (["--model", "{d}/missing.gguf"], "No model file or directory"),
    (["--model", "{d}/a_file"], "is a file but not a .gguf file"),
    (["--model", "{d}"], "has no config.json"),
    (["--max-memory", "2XB"], "--max-memory must look like '2GB', '512MB' or '1.5GiB'"),
    (["--max-memory", "0"], "--max-memory must be at least 1 byte; got '0'"),
    (["--max-memory", "-1GB"], "--max-memory must look like"),
    (["--max-memory", ""], "--max-memory must look like"),
]


@pytest.mark.parametrize(("args", "message"), DISCOVER_CASES)
def test_discover_refuses_a_bad_argument_before_loading(files, args, message) -> None:
    out = files / "c.json"
    args = [a.replace("{d}", str(files)) for a in args]
    result = runner.invoke(app, [*DISCOVER, "--out", str(out), *args])
    one_line_error(result, message)
    assert not out.exists() and not list(files.glob(".*"))  # no file, no temporary left


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"wrong": " Mary"}, "the answer and the wrong answer are the same token"),
        ({"clean": "", "corrupt": ""}, "the clean prompt is empty"),
        ({"corrupt": GOOD["clean"]}, "the same tokens"),
        ({"clean": " Mary" * 300, "corrupt": " John" * 300}, "context is 128 tokens"),
        ({"answer": " Mary Lisa"}, "is 2 tokens"),
        ({"answer": 3}, "'answer' must be a string"),
    ],
)
def test_discover_refuses_a_bad_task_with_the_tokenizer_alone(tmp_path, changes, message) -> None:
    """These ran the whole discovery (or were cut to the context) before."""
    out = tmp_path / "c.json"
    task = task_line(tmp_path, **changes)
    result = runner.invoke(app, [*DISCOVER, "--task", task, "--out", str(out)])
    one_line_error(result, message)
    assert "task.jsonl line 1" in result.stderr and not out.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"\xff\xfe\x00", "line 1: not UTF-8 text"), (b"", "has no prompt pairs")],
)
def test_discover_refuses_an_unreadable_task_file(tmp_path, content: bytes, message) -> None:
    (tmp_path / "t.jsonl").write_bytes(content)
    result = runner.invoke(app, [*DISCOVER, "--task", str(tmp_path / "t.jsonl")])
    one_line_error(result, message)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "is empty (0 bytes)"), (b"GGUF\x03\x00\x00\x00", "runs past the end of the file")],
)
def test_a_broken_gguf_is_one_line(tmp_path, data: bytes, message: str) -> None:
    """A corrupt, empty or truncated .gguf gave a traceback; its header is read first now (in
    `sites` at the start of the load, in `discover` with the tokenizer, before any load)."""
    model = str(tmp_path / "m.gguf")
    (tmp_path / "m.gguf").write_bytes(data)
    one_line_error(runner.invoke(app, ["sites", model]), message, loads=True)
    one_line_error(runner.invoke(app, ["discover", "--model", model]), message)


def test_other_commands_refuse_bad_arguments(files) -> None:
    graph = str(files / "graph.json")
    cases = [
        (["sites", "tiny-gpt2", "--kind", "bogus"], "--kind must be one of"),
        (["show", graph, "--top", "-5"], "--top must be at least 0; got -5"),
        (["show", str(files)], "is a directory; give a graph file"),
        (["show", str(files / "good.jsonl")], "Not a circuit-graph file"),
        (["show", str(files / "a_file")], "not valid JSON"),
        (["show"], "Missing argument 'graph'"),
        (["export", graph, "--out", str(files)], "is a directory"),
        (["export", graph, "--out", str(files / "a_file" / "g.svg")], "a_file is a file"),
        (["export", graph, "--to", "svg", "--out", str(files / "g.png")], "suffix of 'png'"),
        (["export", graph, "--to", "jpeg", "--out", str(files / "g.jpeg")], "Invalid value"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--top", "0"], "--top must be at least 1"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--top", "10000"], "has only 110 scored edges"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--n-prompts", "0"], "--n-prompts must be"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--metric", "kld"], "--metric must be"),
        (["evaluate", graph, "--model", "gpt2-shaped"], "not gpt2-shaped (12 layers, 12 heads)"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--sweep", "--png", str(files)], "directory"),
        (["demo", "--model", "tiny-gpt2", "--out", str(files / "a_file")], "is a file; it names a folder"),
        (["demo", "--model", "tiny-gpt2", "--top", "0"], "--top must be at least 1"),
        (["demo", "--model", "tiny-gpt2", "--max-memory", "lots"], "--max-memory must look like"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--max-memory", "1 G B"], "--max-memory must"),
        (["evaluate", graph, "--model", "tiny-gpt2", "--max-memory", "0.1"], "at least 1 byte"),
        (["bogus-command"], "No such command 'bogus-command'"),
    ]  # fmt: skip
    for args, message in cases:
        one_line_error(runner.invoke(app, args), message)
    assert sorted(p.name for p in files.iterdir()) == [
        "a_dir.jsonl",
        "a_file",
        "good.jsonl",
        "graph.json",
    ]


def test_debug_shows_the_traceback(files) -> None:
    args = ["show", str(files), "--debug"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, InterpError)
    result = runner.invoke(app, ["--debug", *args[:-1]])
    assert isinstance(result.exception, InterpError)


def test_an_internal_error_is_one_line_that_says_so(files, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(CircuitGraph, "summary", broken)
    result = runner.invoke(app, ["show", str(files / "graph.json")])
    one_line_error(result, "internal error (RuntimeError: something inside broke)")
    assert "--debug" in result.stderr


def test_a_failed_or_interrupted_run_writes_nothing_and_keeps_what_was_there(
    tmp_path, monkeypatch
) -> None:
    out = tmp_path / "c.json"
    out.write_text("an earlier circuit")
    for failure, code, message in (
        (KeyboardInterrupt(), 130, "interrupted"),
        (InterpError("the method gave up"), 1, "the method gave up"),
    ):

        def fail(*args, failure=failure, **kwargs):
            raise failure

        monkeypatch.setattr(circuits, "discover", fail)
        result = runner.invoke(app, [*DISCOVER, "--out", str(out)])
        assert result.exit_code == code and f"error: {message}" in result.stderr, result.output
        assert out.read_text() == "an earlier circuit"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]


def test_an_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch) -> None:
    """Root ignores permissions, so a read-only folder is simulated where the probe writes."""

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", read_only)
    result = runner.invoke(app, [*DISCOVER, "--out", str(tmp_path / "sub" / "c.json")])
    one_line_error(result, f"cannot write in {tmp_path} (Read-only file system)")
    assert not (tmp_path / "sub").exists()


def test_a_zero_gap_is_refused_before_discovery(tiny_gpt2) -> None:
    """A task whose clean and corrupted runs agree has nothing to attribute; faithfulness
    divides by that gap (it used to end in a NaN in the graph's meta data)."""
    from circuits import ioi_task

    task = ioi_task(tiny_gpt2, 2)
    with pytest.raises(InterpError, match="give the same logit_diff \\(0\\)"):
        cli._check_gap(lambda tokens: torch.zeros(*tokens.shape, 331), task)
    with pytest.raises(InterpError, match="not finite"):
        cli._check_gap(lambda tokens: torch.full((*tokens.shape, 331), torch.nan), task)
    cli._check_gap(tiny_gpt2, task)  # a real model: a gap


def test_an_empty_circuit_is_named(tmp_path) -> None:
    out = tmp_path / "c.json"
    args = [*DISCOVER, "--top", "1", "--selection", "top-abs", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    empty = CircuitGraph.from_json(out).n_edges_in_graph == 0
    assert empty == ("warning: the circuit is empty" in result.stderr)
    assert empty  # one edge with the largest |score| rarely joins input to logits by itself


def test_a_large_prompt_count_is_warned_about(tmp_path) -> None:
    result = runner.invoke(app, [*DISCOVER, "--n-prompts", "200000", "--method", "bogus"])
    assert "warning: --n-prompts 200000 is large" in result.stderr
    one_line_error(result, "--method 'bogus'")


# -- property: any number on the command line --------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.text(alphabet="-+.e0123456789x ", min_size=1, max_size=8),
)


@FAST
@given(n_prompts=NUMBERS, top=NUMBERS, seed=NUMBERS)
def test_any_numbers_give_one_line_and_no_model(n_prompts, top, seed) -> None:
    """With a misspelt method, every command line must stop at a one-line error before the
    model: a number error when a number is bad, else the method's."""
    args = [
        "discover", "--model", "tiny-gpt2", "--method", "eap-gi",
        f"--n-prompts={n_prompts}", f"--top={top}", f"--seed={seed}",
    ]  # fmt: skip
    one_line_error(runner.invoke(app, args))


@FAST
@given(top=NUMBERS)
def test_show_takes_any_count_or_refuses_it(tmp_path_factory, top) -> None:
    path = tmp_path_factory.mktemp("g") / "g.json"
    spec = ModelSpec(name="toy", architecture="gpt2", n_layers=1, n_heads=2, d_model=8)
    CircuitGraph.from_model(spec).to_json(path)
    result = runner.invoke(app, ["show", str(path), f"--top={top}"])
    if result.exit_code == 0:  # an integer, possibly written "0.0" (typer takes integral floats)
        value = float(top)
        assert value >= 0 and value == int(value)
    else:
        one_line_error(result)
