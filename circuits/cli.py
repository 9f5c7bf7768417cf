"""The ``interp`` command line.

``interp models`` lists what can be loaded, ``interp sites MODEL`` the places one can hook,
``interp show`` and ``interp export`` read circuit-graph files, ``interp demo`` runs the demo.
Errors the user can fix print one line and exit with status 1 (no traceback).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from interp import MODELS, CircuitGraph, InterpError, load_model

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


class ExportFormat(str, Enum):
    json = "json"
    graphml = "graphml"
    dot = "dot"
    csv = "csv"
    html = "html"
    png = "png"
    svg = "svg"
    eap_ig = "eap-ig"


def _read_graph(path: Path) -> CircuitGraph:
    return CircuitGraph.from_json(path)


@app.command()
@_friendly
def export(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    to: ExportFormat = typer.Option(..., "--to", help="Output format."),
    out: Path = typer.Option(..., "--out", help="Output file."),
) -> None:
    """Convert a circuit-graph JSON file to another format."""
    g = _read_graph(graph)
    out.parent.mkdir(parents=True, exist_ok=True)
    writers: dict[ExportFormat, Callable[[Path], Any]] = {
        ExportFormat.json: lambda p: g.to_json(p, indent=1),
        ExportFormat.graphml: g.to_graphml,
        ExportFormat.dot: g.to_dot,
        ExportFormat.csv: g.to_csv,
        ExportFormat.html: g.to_html,
        ExportFormat.png: g.draw,
        ExportFormat.svg: g.draw,
        ExportFormat.eap_ig: g.to_eap_ig,
    }
    writers[to](out)
    typer.echo(f"wrote {out}")


@app.command()
@_friendly
def show(
    graph: Path = typer.Argument(..., help="A circuit-graph JSON file."),
    top: int = typer.Option(10, help="How many top nodes and edges to list."),
) -> None:
    """Print a short summary of a circuit-graph file."""
    typer.echo(_read_graph(graph).summary(top))


@app.command()
@_friendly
def demo(
    model: str = typer.Option("smollm2-135m", help="Model to run."),
    prompt: str = typer.Option(DEMO_PROMPT, help="Prompt to complete."),
    out: Path = typer.Option(Path("out"), help="Folder for the files the demo writes."),
) -> None:
    """Load the embedded model, complete an IOI prompt, summarise a cache of its activations."""
    loaded = _load(model)
    typer.echo(f"\nprompt: {prompt!r}")
    typer.echo("top next-token predictions:")
    for token, logit, prob in loaded.top_predictions(prompt, k=5):
        typer.echo(f"  {token!r:<14} logit {logit:7.3f}   p {prob:.3f}")
    last = loaded.spec.n_layers - 1
    watched = ["input", "r0.mid", f"a{last}", f"a{last}.h0", f"a{last}.pattern", f"m{last}",
               f"r{last}.post", "logits"]
    _, cache = loaded.run_with_cache(prompt, watched)
    typer.echo("\ncache summary:")
    typer.echo(cache.summary())
    out.mkdir(parents=True, exist_ok=True)
    graph = CircuitGraph.from_model(loaded, method="none (full graph)", task=prompt)
    path = out / "graph.json"
    graph.to_json(path)
    typer.echo(f"\nwrote the model's full computational graph ({len(graph.nodes)} nodes, "
               f"{len(graph.edges)} edges) to {path}")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="interp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
