"""The ``interp`` command line.

``interp models`` lists what can be loaded, ``interp sites MODEL`` the places one can hook,
``interp show`` and ``interp export`` read circuit-graph files, ``interp discover`` finds a
circuit, ``interp evaluate`` measures one (``--sweep``: MIB's table of sizes with CPR and CMD),
``interp demo`` runs the demo.
Errors the user can fix print one line and exit with status 1 (no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import typer

from circuits import METHODS
from circuits._options import Ablation, Selection
from interp import FORMATS, MODELS, CircuitGraph, InterpError, load_model

app = typer.Typer(
    help="Mechanistic interpretability toolkit: models, sites, circuit graphs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEMO_PROMPT = "When Mary and John went to the store, John gave a drink to"


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InterpError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def _load(name: str) -> Any:
    typer.echo(f"loading {name} ...", err=True)
    start = time.perf_counter()
    model = load_model(name)
    typer.echo(f"loaded {model} in {time.perf_counter() - start:.1f} s", err=True)
    return model


@app.command()
@_friendly
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
@_friendly
def sites(
    model: str = typer.Argument(..., help="Model name or path (see `interp models`)."),
    kind: str = typer.Option(None, help="Only one kind: input, resid, attn, mlp, logits."),
    heads: bool = typer.Option(True, help="Include per-head sites."),
) -> None:
    """List the sites of a model with the axes of their activations."""
    loaded = _load(model)
    for site in loaded.sites(kind, heads=heads):
        typer.echo(f"{site!s:<22} {', '.join(loaded.axes(site))}")


# choices read from the registries, so a registered format or method shows up here by itself
ExportFormat = Enum("ExportFormat", {name: name for name in FORMATS}, type=str)


def _read_graph(path: Path) -> CircuitGraph:
    return CircuitGraph.from_json(path)


@app.command()
@_friendly
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
    g = _read_graph(graph)
    typer.echo(f"wrote {g.export(out, None if to is None else to.value)}")


@app.command()
@_friendly
def show(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    top: int = typer.Option(10, help="How many top nodes and edges to list."),
) -> None:
    """Print a short summary of a circuit-graph file."""
    typer.echo(_read_graph(graph).summary(top))


def _task(
    model: Any,
    task: str,
    n_prompts: int,
    seed: int,
    split: str | None = None,
    metric: str = "logit_diff",
) -> Any:
    from circuits import ioi_task, task_from_jsonl

    if task == "ioi":
        built = ioi_task(model, n_prompts, seed=seed, split=split)
    elif task.endswith(".jsonl"):
        if split is not None:
            raise InterpError("--split divides the IOI data; a JSONL task has no split.")
        built = task_from_jsonl(model, task)
    else:
        raise InterpError(f"--task must be 'ioi' or a .jsonl file; got {task!r}.")
    return built.with_metric(metric, model)


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
) -> tuple[Any, Any, dict[str, Any]]:
    """Discover, select the circuit, and measure its faithfulness: on the same prompts, or with
    ``held_out`` on the other IOI half (the task is then found on the train half)."""
    from circuits import discover, faithfulness, select_circuit

    model = _load(model_name)
    split = "train" if held_out else split
    task = _task(model, task_name, n_prompts, seed, split, metric)
    typer.echo(
        f"task {task.name}: {len(task)} prompt pairs; running {method} ({level} level) ...",
        err=True,
    )
    graph = discover(model, task, method, level)
    k = min(top, graph.n_ranked(level))
    if level == "edge":
        circuit = select_circuit(graph, k, selection)
    else:  # nodes are chosen by score alone; greedy growth is for edges
        circuit = graph.top(k, level="node", absolute=selection.endswith("abs"))
    if held_out:
        task = _task(model, task_name, 2 * n_prompts, seed, HELD_OUT[split], metric)
    typer.echo(f"measuring faithfulness on {len(task)} prompt pairs ...", err=True)
    result = faithfulness(model, circuit, task)
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


@app.command()
@_friendly
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
) -> None:
    """Discover a circuit, measure its faithfulness and write it out."""
    start = time.perf_counter()
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
    )
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    circuit.to_json(out)
    written = [str(out)]
    for path, write in ((png, circuit.draw), (html, circuit.to_html)):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path)
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
@_friendly
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
) -> None:
    """Print the faithfulness of a stored circuit (or, with --sweep, MIB's table of sizes)."""
    from circuits import evaluate as evaluate_graph
    from circuits import faithfulness, plot_evaluations

    g = _read_graph(graph)
    if sweep and top is not None:
        raise InterpError("--sweep chooses circuits of every size itself; drop --top.")
    loaded = _load(model)
    if g.model is not None and (g.model.n_layers, g.model.n_heads) != (
        loaded.spec.n_layers,
        loaded.spec.n_heads,
    ):
        raise InterpError(
            f"The graph is for {g.model.name} ({g.model.n_layers} layers, {g.model.n_heads} "
            f"heads), not {loaded.spec.name}; pass the matching --model."
        )
    n_prompts = n_prompts if n_prompts is not None else int(g.meta.get("n_prompts", 16))
    seed = seed if seed is not None else int(g.meta.get("seed", 0))
    chosen = _split(split) if split is not None else HELD_OUT.get(g.meta.get("split"))
    metric = metric or g.metric or "logit_diff"
    the_task = _task(loaded, task, n_prompts, seed, chosen, metric)
    typer.echo(
        f"task {the_task.name}: {len(the_task)} prompt pairs, seed {seed}"
        + (f", {chosen} split" if chosen else ""),
        err=True,
    )
    if sweep:
        result = evaluate_graph(
            loaded, g, the_task, selection=selection.value, ablation=ablation.value
        )
        typer.echo(result.summary())
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            plot_evaluations({g.method or graph.stem: result}, png)
            typer.echo(f"wrote {png}")
        return
    if top is not None:
        g = g.top(top, level=level.value)
    result = faithfulness(loaded, g, the_task, ablation=ablation.value)
    typer.echo(
        f"faithfulness {result['faithfulness']:.4f}  (circuit {metric} {result['metric']:.4f}; "
        f"clean {result['clean']:.4f}; {'corrupted' if ablation.value == 'corrupt' else 'empty'} "
        f"{result['corrupt']:.4f}; {result['n_nodes']} nodes, {result['n_edges']} edges)"
    )


@app.command()
@_friendly
def demo(
    model: str = typer.Option("smollm2-135m", help="Model to run."),
    method: str = typer.Option("eap-ig", help="Discovery method."),
    n_prompts: int = typer.Option(8, help="IOI prompt pairs to discover on (twice as many test)."),
    top: int = typer.Option(6000, help="Edges to keep (SmolLM2-135M has 123,211)."),
    out: Path = typer.Option(Path("out"), help="Folder for the circuit files."),
) -> None:
    """IOI circuit discovery on the embedded model; writes the circuit as JSON, PNG and HTML.

    The circuit is found on the IOI train half (templates and names) and its faithfulness
    measured on the held-out test half."""
    start = time.perf_counter()
    loaded, circuit, result = _run_discovery(
        model, "ioi", method, "edge", n_prompts, top, 0, held_out=True
    )
    prompt = DEMO_PROMPT
    typer.echo(
        f"\n{prompt!r} -> "
        + ", ".join(f"{tok!r} {p:.2f}" for tok, _, p in loaded.top_predictions(prompt, k=3))
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "circuit.json", "png": out / "circuit.png", "html": out / "circuit.html"}
    circuit.to_json(paths["json"])
    circuit.draw(paths["png"], max_edges=150)
    circuit.to_html(paths["html"], max_edges=150)
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
