"""The ``interp`` command line.

``interp models`` lists what can be loaded, ``interp sites MODEL`` the places one can hook,
``interp show`` and ``interp export`` read circuit-graph files, ``interp discover`` finds a
circuit, ``interp evaluate`` measures one (``--sweep``: MIB's table of sizes with CPR and CMD),
``interp demo`` runs the demo.

Every argument and the task file are checked before a model is loaded: numbers, names, output
paths (probed for writing), and, with the model's tokenizer alone, the prompts (one-token answers,
lengths against the context, answers and prompts that would make the clean and corrupted runs
equal). Any error a user can cause prints one line ``error: ...`` on stderr and exits with status
1, without a traceback (``--debug`` shows it). Output files are written atomically: a failed or
interrupted run leaves no file and never touches an existing one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import typer
from typer.core import TyperGroup

from circuits import METHODS, METRICS, parse_memory
from circuits._options import Ablation, Selection
from circuits._tasks import read_task_file
from interp import (
    FORMATS,
    MODELS,
    RULE_SETS,
    CircuitGraph,
    InterpError,
    TransformerModel,
    check_option,
    did_you_mean,
    load_model,
    load_tokenizer,
)

KINDS = ("input", "resid", "attn", "mlp", "logits")
LARGE_N_PROMPTS = 1024  # above this, a warning: time grows with the prompts
INTERRUPTED = 130


class _OneLineErrors(TyperGroup):
    """Runs a command so that every error a user can cause is one line ``error: ...`` on stderr
    with exit status 1: click's usage errors, the toolkit's errors, files that cannot be read or
    written. Anything else is an internal error, said in one line too. ``--debug`` (anywhere on
    the command line) shows the traceback instead."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args
        args = [a for a in args if a != "--debug"]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            _fail("interrupted", INTERRUPTED)
        except Exception as err:
            if _is_usage_error(err):  # a bad option value, a missing argument...
                if type(err).__name__ == "NoArgsIsHelpError":  # `interp` alone: the help
                    typer.echo(err.format_message())
                    sys.exit(0)
                ctx = getattr(err, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                _fail(err.format_message() + hint)
            if debug:
                raise
            _fail(_describe(err))
        if code == INTERRUPTED:  # typer turns Ctrl-C into this exit code
            _fail("interrupted", INTERRUPTED)
        sys.exit(code or 0)


def _is_usage_error(err: BaseException) -> bool:
    """Whether ``err`` is click's (as vendored by typer) way of refusing a command line."""
    return hasattr(err, "format_message") and type(err).__module__.split(".")[0] in (
        "typer",
        "click",
    )


def _describe(err: BaseException) -> str:
    if isinstance(err, InterpError):
        return str(err)
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror or err}{where}"
    if isinstance(err, MemoryError):
        return "out of memory; try fewer --n-prompts or a smaller model."
    return (
        f"internal error ({type(err).__name__}: {err}). This is a bug: rerun with --debug for "
        "the traceback and report it."
    )


def _fail(message: str, code: int = 1) -> None:
    typer.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(code)


def _warn(message: str) -> None:
    typer.echo("warning: " + " ".join(message.split()), err=True)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Mechanistic interpretability toolkit: models, sites, circuit graphs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error (anywhere on the line)."
    ),
) -> None:
    # --debug is read (and removed) by _OneLineErrors before click parses the line; it is
    # declared here so that `interp --help` lists it
    pass


DEMO_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _load(name: str) -> Any:
    typer.echo(f"loading {name} ...", err=True)
    start = time.perf_counter()
    model = load_model(name)
    typer.echo(f"loaded {model} in {time.perf_counter() - start:.1f} s", err=True)
    return model


# -- checks that run before a model is loaded ------------------------------------------------------


def _at_least(option: str, value: int | None, low: int = 1, why: str = "") -> None:
    if value is not None and value < low:
        raise InterpError(f"{option} must be at least {low}; got {value}{why}.")


def _check_n_prompts(n_prompts: int | None) -> None:
    _at_least("--n-prompts", n_prompts)
    if n_prompts is not None and n_prompts > LARGE_N_PROMPTS:
        _warn(
            f"--n-prompts {n_prompts} is large: time grows with it (memory does not: prompts "
            "run in chunks that fit --max-memory); the README's results use 8 to 32."
        )


def _check_method(method: str, level: str) -> None:
    entry = METHODS.get(method)
    if entry is None and method not in RULE_SETS:
        raise InterpError(
            f"--method {method!r} is not a registered method; registered: "
            f"{', '.join(METHODS)}." + did_you_mean(method, METHODS)
        )
    if entry is not None and level not in entry.levels:
        raise InterpError(
            f"--method {method} scores {' and '.join(entry.levels)}s, not {level}s; "
            f"pass --level {entry.levels[0]}."
        )


def _check_output(path: Path | None, option: str, *, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work: a directory where a
    file is wanted (or a file where a folder is), a file where a parent folder should be, or a
    folder that cannot be written (probed by creating and removing a temporary file in it)."""
    if path is None:
        return
    try:
        if folder and path.exists() and not path.is_dir():
            raise InterpError(f"{option} {path} is a file; it names a folder for the output files.")
        if not folder and path.is_dir():
            raise InterpError(
                f"{option} {path} is a directory; give a file name (e.g. {path / 'circuit.json'})."
            )
        ancestor = path if folder else path.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
    except (OSError, ValueError) as err:  # a name no file can have
        raise InterpError(f"{option} {str(path)[:200]!r} is not a usable path ({err}).") from None
    if not ancestor.is_dir():
        raise InterpError(
            f"{option} {path}: {ancestor} is a file, so nothing can be written inside it."
        )
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise InterpError(
            f"{option} {path}: cannot write in {ancestor} ({err.strerror})."
        ) from None


def _check_task_source(task: str, split: str | None) -> None:
    """``--task``: 'ioi', or a readable JSONL file of well-formed rows (read now, no model)."""
    if task == "ioi":
        return
    if not task.endswith(".jsonl"):
        raise InterpError(f"--task must be 'ioi' or a .jsonl file; got {task!r}.")
    if split is not None:
        raise InterpError("--split divides the IOI data; a JSONL task has no split.")
    read_task_file(task)


def _max_memory(value: str | None) -> dict[str, int]:
    """``--max-memory`` as the methods' keyword (none when not given, so the toolkit's default
    applies and checkpoints of sweeps run without it still match), checked before any load."""
    if value is None:
        return {}
    try:
        return {"max_memory": parse_memory(value)}
    except InterpError as err:
        raise InterpError(str(err).replace("max_memory", "--max-memory", 1)) from None


MAX_MEMORY_HELP = (
    "Working memory the method's chunks of prompts may hold, e.g. 2GB or 512MB (binary units; "
    "default 1GB); the model's own weights come on top."
)


def _tokenizer(model: str) -> Any:
    """The model's tokenizer and sizes, loaded without the weights, to check prompts with."""
    typer.echo(f"checking the inputs with the tokenizer of {model} ...", err=True)
    return load_tokenizer(model)


def _check_gap(model: Any, task: Any, memory: dict[str, int] | None = None) -> None:
    """The clean and corrupted runs must differ in the task's metric: attribution scores and
    faithfulness are both read relative to that gap (one forward pass each, over prompt chunks
    that fit ``--max-memory``)."""
    import torch

    from circuits._edges import chunked_metric

    if isinstance(model, TransformerModel):
        clean = chunked_metric(model, task, "clean", **(memory or {}))
        corrupt = chunked_metric(model, task, "corrupt", **(memory or {}))
    else:  # any callable from tokens to logits: one pass each
        with torch.no_grad():
            clean = float(task.measure(model(task.clean)))
            corrupt = float(task.measure(model(task.corrupt)))
    if not (math.isfinite(clean) and math.isfinite(corrupt)):
        raise InterpError(
            f"The task's {task.metric_name} is not finite on this model (clean {clean}, "
            f"corrupted {corrupt}); check the prompts and the model."
        )
    if clean == corrupt:
        raise InterpError(
            f"The clean and corrupted prompts give the same {task.metric_name} ({clean:.6g}) on "
            "this model, so there is no effect to explain and faithfulness is undefined; the "
            "corruption must change what the model predicts."
        )


def _warn_if_empty(circuit: CircuitGraph, what: str) -> None:
    if circuit.n_edges_in_graph == 0:
        _warn(
            f"the circuit is empty: {what} lies on a path from input to logits, so nothing is "
            "kept after pruning and its faithfulness is that of the corrupted run. Try a larger "
            "--top (or --selection top-abs)."
        )


def _write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(temporary path)`` beside ``path``, then rename: a failed or interrupted write
    leaves no file and never touches an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp's file is private; the target should not be
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@app.command()
def models() -> None:
    """List the model names `load_model` understands and which of them need the network."""
    width = max(len(n) for n in MODELS)
    typer.echo(f"{'name':<{width}}  network  description")
    for entry in MODELS.values():
        net = "yes" if entry.needs_network else "no"
        typer.echo(f"{entry.name:<{width}}  {net:<7}  {entry.description}")
    typer.echo(
        "\nAlso: any Hugging Face Hub name (needs the network), a local model directory, "
        "or a .gguf file."
    )


@app.command()
def sites(
    model: str = typer.Argument(..., help="Model name or path (see `interp models`)."),
    kind: str = typer.Option(None, help="Only one kind: input, resid, attn, mlp, logits."),
    heads: bool = typer.Option(True, help="Include per-head sites."),
) -> None:
    """List the sites of a model with the axes of their activations."""
    if kind is not None:
        check_option("--kind", kind, KINDS)
    loaded = _load(model)
    for site in loaded.sites(kind, heads=heads):
        typer.echo(f"{site!s:<22} {', '.join(loaded.axes(site))}")


# choices read from the registries, so a registered format or method shows up here by itself
ExportFormat = Enum("ExportFormat", {name: name for name in FORMATS}, type=str)


def _read_graph(path: Path) -> CircuitGraph:
    return CircuitGraph.from_json(path)


@app.command()
def export(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    to: ExportFormat = typer.Option(
        None,
        "--to",
        help="Output format (default: from the suffix of --out): "
        + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values())
        + ".",
    ),
    out: Path = typer.Option(..., "--out", help="Output file."),
) -> None:
    """Convert a circuit-graph JSON file to another format."""
    _check_output(out, "--out")
    g = _read_graph(graph)
    typer.echo(f"wrote {g.export(out, None if to is None else to.value)}")


@app.command()
def show(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    top: int = typer.Option(10, help="How many top nodes and edges to list."),
) -> None:
    """Print a short summary of a circuit-graph file."""
    _at_least("--top", top, 0)
    typer.echo(_read_graph(graph).summary(top))


def _task(
    model: Any,
    task: str,
    n_prompts: int,
    seed: int,
    split: str | None = None,
    metric: str | None = "logit_diff",
    memory: dict[str, int] | None = None,
) -> Any:
    """The task on a model, or (``metric=None``) on its tokenizer alone, to check the prompts."""
    from circuits import ioi_task, task_from_jsonl

    _check_task_source(task, split)
    if task == "ioi":
        built = ioi_task(model, n_prompts, seed=seed, split=split)
    else:
        built = task_from_jsonl(model, task)
    # kl's clean reference runs over prompt chunks that fit --max-memory
    return built if metric is None else built.with_metric(metric, model, **(memory or {}))


METRIC_HELP = "What the task measures: logit_diff, prob (of the answer) or kl (to the clean run)."


class Level(str, Enum):
    node = "node"
    edge = "edge"


def _choices(name: str, words: Any) -> type[Enum]:
    """A typer choice from an option-word ``Literal``."""
    return Enum(name, {w: w for w in get_args(words)}, type=str)


SplitChoice = Enum("SplitChoice", {"all": "all", "train": "train", "test": "test"}, type=str)
AblationChoice = _choices("AblationChoice", Ablation)
SelectionChoice = _choices("SelectionChoice", Selection)
HELD_OUT = {"train": "test", "test": "train", None: None}


def _split(choice: Any) -> str | None:
    return None if choice is None or choice.value == "all" else choice.value


def _run_discovery(
    model_name: str,
    task_name: str,
    method: str,
    level: str,
    n_prompts: int,
    top: int,
    seed: int,
    split: str | None = None,
    metric: str = "logit_diff",
    selection: str = "greedy-signed",
    held_out: bool = False,
    ray: str | None = None,
    checkpoint: Path | None = None,
    max_memory: str | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Check everything, then discover, select the circuit, and measure its faithfulness: on
    the same prompts, or with ``held_out`` on the other IOI half (the task is then found on the
    train half)."""
    from circuits import RayExecutor, discover, faithfulness, select_circuit

    split = "train" if held_out else split
    memory = _max_memory(max_memory)
    tokens = _check_discovery(
        model_name, task_name, method, level, n_prompts, top, seed, split, metric
    )
    if held_out:
        _task(tokens, task_name, 2 * n_prompts, seed, HELD_OUT[split], None)
    model = _load(model_name)
    task = _task(model, task_name, n_prompts, seed, split, metric, memory)
    _check_gap(model, task, memory)
    typer.echo(
        f"task {task.name}: {len(task)} prompt pairs; running {method} ({level} level) ...",
        err=True,
    )
    executor = None if ray is None else RayExecutor(address=ray)
    graph = discover(model, task, method, level, executor=executor, checkpoint=checkpoint, **memory)
    k = min(top, graph.n_ranked(level))
    if level == "edge":
        circuit = select_circuit(graph, k, selection)
    else:  # nodes are chosen by score alone; greedy growth is for edges
        circuit = graph.top(k, level="node", absolute=selection.endswith("abs"))
    _warn_if_empty(circuit, f"none of the top {k} {level}s")
    if held_out:
        task = _task(model, task_name, 2 * n_prompts, seed, HELD_OUT[split], metric, memory)
        _check_gap(model, task, memory)
    typer.echo(f"measuring faithfulness on {len(task)} prompt pairs ...", err=True)
    result = faithfulness(model, circuit, task, **memory)
    circuit = circuit.copy(
        meta={
            **circuit.meta,
            "faithfulness": result["faithfulness"],
            "top": top,
            "selection": selection,
            "seed": seed,
            "split": split,
        }
    )
    return model, circuit, result


def _check_discovery(
    model_name: str,
    task_name: str,
    method: str,
    level: str,
    n_prompts: int,
    top: int,
    seed: int,
    split: str | None,
    metric: str,
) -> Any:
    """Every check of a discovery that needs no model: numbers, names, the task file, and the
    prompts on the model's tokenizer alone (loaded in seconds, not the model's minutes), which
    is returned."""
    _check_n_prompts(n_prompts)
    _at_least("--top", top, why=": a circuit of no edges explains nothing")
    _check_method(method, level)
    check_option("--metric", metric, tuple(METRICS))
    _check_task_source(task_name, split)
    tokens = _tokenizer(model_name)
    _task(tokens, task_name, n_prompts, seed, split, None)
    return tokens


@app.command()
def discover(
    model: str = typer.Option("smollm2-135m", help="Model name or path."),
    task: str = typer.Option("ioi", help="'ioi' or a JSONL file of clean/corrupt/answer/wrong."),
    method: str = typer.Option(
        "eap-ig",
        help="A registered method: "
        + "; ".join(f"{m.name} ({m.description})" for m in METHODS.values())
        + ".",
    ),
    level: Level = typer.Option(Level.edge, help="Score edges or nodes."),
    n_prompts: int = typer.Option(16, help="IOI prompt pairs."),
    top: int = typer.Option(200, help="Keep the top K edges (or nodes)."),
    seed: int = typer.Option(0, help="Seed of the IOI generator."),
    split: SplitChoice = typer.Option(
        SplitChoice.all,
        help="IOI prompts from one half of the templates and names (train), the other (test), "
        "or all; `interp evaluate` then uses the other half.",
    ),
    metric: str = typer.Option("logit_diff", help=METRIC_HELP),
    selection: SelectionChoice = typer.Option(
        SelectionChoice["greedy-signed"],
        help="How the top K are chosen: by |score| or signed score (positive first), over all "
        "edges (top-) or grown from the logits (greedy-).",
    ),
    out: Path = typer.Option(Path("out/circuit.json"), help="Where to write the circuit (JSON)."),
    png: Path = typer.Option(None, help="Also draw the circuit to this PNG."),
    html: Path = typer.Option(None, help="Also write a standalone HTML page."),
    json_summary: bool = typer.Option(
        False, "--json-summary", help="End with one line of JSON (for scripts)."
    ),
    ray: str = typer.Option(
        None,
        "--ray",
        metavar="auto|ADDRESS",
        help="Shard the work over Ray workers (pip install 'interp-toolkit[ray]'): 'auto' joins "
        "the cluster RAY_ADDRESS names or starts a local one; or a cluster's address.",
    ),
    checkpoint: Path = typer.Option(
        None,
        help="Keep every finished shard of the sweep in this folder: the same command after an "
        "interruption (Ctrl-C, kill -9) runs only what is missing, with the identical result.",
    ),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP),
) -> None:
    """Discover a circuit, measure its faithfulness and write it out."""
    start = time.perf_counter()
    for path, option in ((out, "--out"), (png, "--png"), (html, "--html")):
        _check_output(path, option)
    _, circuit, result = _run_discovery(
        model,
        task,
        method,
        level.value,
        n_prompts,
        top,
        seed,
        _split(split),
        metric,
        selection.value,
        ray=ray,
        checkpoint=checkpoint,
        max_memory=max_memory,
    )
    seconds = time.perf_counter() - start
    _write(out, circuit.to_json)
    written = [str(out)]
    for path, write in ((png, circuit.draw), (html, circuit.to_html)):
        if path is not None:
            _write(path, write)
            written.append(str(path))
    typer.echo(circuit.summary(10))
    typer.echo(
        f"\ncircuit: {result['n_nodes']} nodes, {result['n_edges']} edges; faithfulness "
        f"{result['faithfulness']:.3f} ({circuit.metric} {result['metric']:.3f}; clean "
        f"{result['clean']:.3f}, corrupted {result['corrupt']:.3f}); {seconds:.1f} s"
    )
    typer.echo("wrote " + ", ".join(written))
    if json_summary:
        summary = {
            "method": method,
            "level": level.value,
            "n_nodes": result["n_nodes"],
            "n_edges": result["n_edges"],
            "faithfulness": result["faithfulness"],
            "metric": result["metric"],
            "clean": result["clean"],
            "corrupt": result["corrupt"],
            "seconds": seconds,
            "discovery_seconds": circuit.meta.get("seconds"),
            "out": str(out),
        }
        typer.echo(json.dumps(summary))


@app.command()
def evaluate(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    model: str = typer.Option("smollm2-135m", help="Model name or path."),
    task: str = typer.Option("ioi", help="'ioi' or a JSONL file."),
    n_prompts: int = typer.Option(
        None, help="IOI prompt pairs (default: as many as the circuit was found with, or 16)."
    ),
    seed: int = typer.Option(
        None, help="Seed of the IOI generator (default: the circuit's own seed, or 0)."
    ),
    split: SplitChoice = typer.Option(
        None,
        help="IOI half to evaluate on (default: the other half than the circuit was found on; "
        "all if it was found on all).",
    ),
    top: int = typer.Option(None, help="Re-select the top K by the stored scores first."),
    level: Level = typer.Option(Level.edge, help="Level of --top."),
    ablation: AblationChoice = typer.Option(
        AblationChoice["corrupt"],
        help="What edges outside the circuit carry: corrupted, mean or zero.",
    ),
    sweep: bool = typer.Option(
        False,
        "--sweep",
        help="MIB's evaluation: faithfulness of the circuits at 0.1%, 0.2%, ..., 100% of the "
        "edges, chosen by the stored scores, with the areas CPR and CMD.",
    ),
    selection: SelectionChoice = typer.Option(
        SelectionChoice["top-abs"], help="How --sweep chooses each circuit from the scores."
    ),
    png: Path = typer.Option(None, help="With --sweep: also plot the curve to this file."),
    metric: str = typer.Option(
        None, help=METRIC_HELP.rstrip(".") + " (default: the circuit's own metric)."
    ),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP),
) -> None:
    """Print the faithfulness of a stored circuit (or, with --sweep, MIB's table of sizes)."""
    from circuits import evaluate as evaluate_graph
    from circuits import faithfulness, plot_evaluations

    g = _read_graph(graph)
    if sweep and top is not None:
        raise InterpError("--sweep chooses circuits of every size itself; drop --top.")
    _at_least("--top", top, why=": a circuit of no edges explains nothing")
    if top is not None and top > g.n_ranked(level.value):
        raise InterpError(
            f"--top {top}, but {graph} has only {g.n_ranked(level.value)} scored {level.value}s."
        )
    _check_n_prompts(n_prompts)
    _check_output(png, "--png")
    memory = _max_memory(max_memory)
    n_prompts = n_prompts if n_prompts is not None else int(g.meta.get("n_prompts", 16))
    seed = seed if seed is not None else int(g.meta.get("seed", 0))
    stored = HELD_OUT.get(g.meta.get("split")) if task == "ioi" else None
    chosen = _split(split) if split is not None else stored
    metric = metric or g.metric or "logit_diff"
    check_option("--metric", metric, tuple(METRICS))
    _check_task_source(task, chosen)
    tokens = _tokenizer(model)
    _check_graph_fits(g, tokens.name, tokens.n_layers, tokens.n_heads)
    _task(tokens, task, n_prompts, seed, chosen, None)
    loaded = _load(model)
    _check_graph_fits(g, loaded.spec.name, loaded.spec.n_layers, loaded.spec.n_heads)
    the_task = _task(loaded, task, n_prompts, seed, chosen, metric, memory)
    _check_gap(loaded, the_task, memory)
    typer.echo(
        f"task {the_task.name}: {len(the_task)} prompt pairs, seed {seed}"
        + (f", {chosen} split" if chosen else ""),
        err=True,
    )
    if sweep:
        result = evaluate_graph(
            loaded, g, the_task, selection=selection.value, ablation=ablation.value, **memory
        )
        typer.echo(result.summary())
        if png is not None:
            _write(png, lambda path: plot_evaluations({g.method or graph.stem: result}, path))
            typer.echo(f"wrote {png}")
        return
    if top is not None:
        g = g.top(top, level=level.value)
    _warn_if_empty(g, f"none of the top {top} {level.value}s" if top else "no edge of the file")
    result = faithfulness(loaded, g, the_task, ablation=ablation.value, **memory)
    typer.echo(
        f"faithfulness {result['faithfulness']:.4f}  (circuit {metric} {result['metric']:.4f}; "
        f"clean {result['clean']:.4f}; {'corrupted' if ablation.value == 'corrupt' else 'empty'} "
        f"{result['corrupt']:.4f}; {result['n_nodes']} nodes, {result['n_edges']} edges)"
    )


def _check_graph_fits(
    g: CircuitGraph, name: str, n_layers: int | None, n_heads: int | None
) -> None:
    if g.model is None or n_layers is None or n_heads is None:
        return
    if (g.model.n_layers, g.model.n_heads) != (n_layers, n_heads):
        raise InterpError(
            f"The graph is for {g.model.name} ({g.model.n_layers} layers, {g.model.n_heads} "
            f"heads), not {name} ({n_layers} layers, {n_heads} heads); pass the matching --model."
        )


@app.command()
def demo(
    model: str = typer.Option("smollm2-135m", help="Model to run."),
    method: str = typer.Option("eap-ig", help="Discovery method."),
    n_prompts: int = typer.Option(32, help="IOI prompt pairs to discover on (twice as many test)."),
    top: int = typer.Option(6000, help="Edges to keep (SmolLM2-135M has 123,211)."),
    out: Path = typer.Option(Path("out"), help="Folder for the circuit files."),
    max_memory: str = typer.Option(None, "--max-memory", metavar="SIZE", help=MAX_MEMORY_HELP),
) -> None:
    """IOI circuit discovery on the embedded model; writes the circuit as JSON, PNG and HTML.

    The circuit is found on the IOI train half (templates and names) and its faithfulness
    measured on the held-out test half."""
    start = time.perf_counter()
    _check_output(out, "--out", folder=True)
    loaded, circuit, result = _run_discovery(
        model, "ioi", method, "edge", n_prompts, top, 0, held_out=True, max_memory=max_memory
    )
    prompt = DEMO_PROMPT
    typer.echo(
        f"\n{prompt!r} -> "
        + ", ".join(f"{tok!r} {p:.2f}" for tok, _, p in loaded.top_predictions(prompt, k=3))
    )
    paths = {"json": out / "circuit.json", "png": out / "circuit.png", "html": out / "circuit.html"}
    _write(paths["json"], circuit.to_json)
    _write(paths["png"], lambda path: circuit.draw(path, max_edges=150))
    _write(paths["html"], lambda path: circuit.to_html(path, max_edges=150))
    typer.echo(circuit.summary(10))
    typer.echo(
        f"\n{method} circuit of {top} edges grown from the logits (positive scores first): "
        f"{result['n_nodes']} nodes, {result['n_edges']} edges after pruning; faithfulness on "
        f"held-out prompts {result['faithfulness']:.3f} "
        f"(logit diff {result['metric']:.2f}; clean {result['clean']:.2f}, corrupted "
        f"{result['corrupt']:.2f}); {time.perf_counter() - start:.0f} s in all"
    )
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="interp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
