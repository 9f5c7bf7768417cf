"""Ours vs auto-circuit, nnsight and TransformerLens 2.x on identical weights, with floors.

Each peer runs in its own virtual environment under ``peers/.venvs/``, built on first use from
the pinned lock files in ``peers/`` (torch 2.13 CPU first, then the lock), and in its own
process with one thread, as ours does. The weights are one ``save_pretrained`` folder of a
GPT-2-small-shaped model (12 layers, d_model 768, 12 heads, seed 0) that every side loads;
the prompts are the same token ids (IOI pairs of one template). The clean logits of every
peer are compared with ours before its times are used.

Rows:

- EAP: ``discover(model, task, "eap", "edge", direction="noising")`` vs auto-circuit's
  ``mask_gradient_prune_scores`` with ``mask_val=0`` (no integrated gradients). auto-circuit
  takes the gradient at the clean run with respect to edge masks that move towards the
  corrupted activations, which is EAP in the noising direction.
- EAP-IG: the same number of gradient passes on both sides. Ours integrates along the input
  embeddings (Hanna et al. 2024, left Riemann sum); auto-circuit integrates along every edge
  mask at once, from 0 to 1 inclusive. They are different estimators: the difference column
  then shows how far apart they are, not an error.
- faithfulness of 3 circuit sizes: ``faithfulness_curve`` vs ``run_circuits`` (tree patching,
  resample ablation), both given our EAP scores so that they choose the same edges.
- head patching at every position: ``activation_patching(model, task, "heads",
  per_position=True)`` vs TransformerLens 2's ``get_act_patch_attn_head_out_by_pos`` and
  nnsight (one trace per layer and position, one invoke per head). ``--quick`` patches the
  heads of the middle layer at two positions (24 cells) on every side, and EAP-IG takes 3
  gradient passes instead of 5.

Prints each side's seconds, peer / ours, the largest difference of values, and time / floor
(``_floor.py``) with this machine's matmul rate measured in the same run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import fixed_name_task, parser, profile_row, timed
from _floor import Shapes, describe, faithfulness_flops, gradient_flops, matmul_rate
from _floor import patching_flops as patch_flops

import interp
from circuits import activation_patching, discover, faithfulness_curve

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
VENVS = PEERS_DIR / ".venvs"
TORCH = "torch==2.13.0"  # the CPU wheel, before the lock (else pip fetches a CUDA build)


@dataclass(frozen=True)
class Peer:
    label: str
    env: str
    script: str
    rows: tuple[str, ...]


PEERS = (
    Peer("auto-circuit", "autocircuit", "peer_autocircuit.py", ("eap", "eap_ig", "faith")),
    Peer("nnsight", "nnsight", "peer_nnsight.py", ("heads",)),
    Peer("TransformerLens 2", "tl2", "peer_tl2.py", ("heads",)),
)
ROWS = {
    "eap": "EAP",
    "eap_ig": "EAP-IG",
    "faith": "faithfulness, 3 sizes",
    "heads": "head patching, every position",
}


def peer_python(peer: Peer) -> Path | None:
    """The peer environment's Python, built from its lock file if missing; None (and the
    reason printed) where pip cannot build it."""
    venv = VENVS / peer.env
    python = venv / "bin" / "python"
    stamp = venv / ".built"
    lock = PEERS_DIR / f"{peer.env}.lock"
    if stamp.exists() and stamp.read_text() == lock.read_text():
        return python
    print(f"building {peer.label}'s environment from {lock.name} (once) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", TORCH],
        [str(python), "-m", "pip", "install", "--quiet", "-r", str(lock)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"skipping {peer.label}: `{' '.join(step[-3:])}` failed: {' | '.join(tail)}")
            return None
    stamp.write_text(lock.read_text())
    return python


def save_model(folder: Path) -> Path:
    """A GPT-2-small-shaped model (seed 0) and our word tokenizer, saved for every side."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from interp._loading import word_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def run_peer(peer: Peer, python: Path, spec: dict, work: Path, timeout: float) -> dict | None:
    out = work / peer.env
    spec_file = work / f"{peer.env}.json"
    spec_file.write_text(json.dumps({**spec, "rows": {r: spec["rows"][r] for r in peer.rows}}))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    }
    env.pop("PYTHONPATH", None)
    cmd = [str(python), str(PEERS_DIR / peer.script), str(spec_file), str(out)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{peer.label}: no result within {timeout:.0f} s; left out")
        return None
    if done.returncode:
        print(f"{peer.label} failed:\n{done.stderr[-2000:]}")
        return None
    result = json.loads((out / "result.json").read_text())
    result["logits"] = torch.load(out / "logits.pt", weights_only=True)
    return result


def edge_scores(graph) -> dict[str, float]:
    return dict(zip(graph.edge_names(), graph.edge_scores.tolist(), strict=True))


def score_diff(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, float]:
    """(max |ours - theirs| with the sign convention that fits, largest |score|)."""
    names = sorted(ours)
    missing = set(names) ^ set(theirs)
    if missing:
        raise SystemExit(f"edge sets differ: {sorted(missing)[:5]} ...")
    a = torch.tensor([ours[n] for n in names], dtype=torch.float64)
    b = torch.tensor([theirs[n] for n in names], dtype=torch.float64)
    return min((a - b).abs().max().item(), (a + b).abs().max().item()), a.abs().max().item()


def heads_cells(model: interp.TransformerModel, tokens: int, quick: bool) -> list | None:
    """Every cell, or with ``quick`` the heads of the middle layer at two positions."""
    if not quick:
        return None
    layer = model.spec.n_layers // 2
    return [[layer, p, h] for p in (tokens // 2, tokens - 1) for h in range(model.spec.n_heads)]


def main() -> None:
    p = parser(__doc__, n_prompts=8)
    p.add_argument("--ig-steps", type=int, default=None, help="EAP-IG passes (5; --quick 3)")
    p.add_argument("--sizes", type=int, nargs=3, default=[200, 2000, 20000])
    p.add_argument("--peers", nargs="*", default=[q.env for q in PEERS])
    p.add_argument("--rows", nargs="*", default=list(ROWS))
    p.add_argument("--peer-timeout", type=float, default=1800.0)
    args = p.parse_args()
    args.ig_steps = args.ig_steps or (3 if args.quick else 5)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    model_dir = save_model(work / "model")
    model = interp.load_model(str(model_dir))
    task = fixed_name_task(model, args.n_prompts)
    shapes = Shapes.of(model, task)
    rate = matmul_rate(shapes)
    print(
        f"model: GPT-2 small's shapes, random (seed 0), {model.spec.n_layers} layers x "
        f"{model.spec.n_heads} heads, d_model {model.spec.d_model}; {len(task)} prompt pairs of "
        f"{task.clean.shape[1]} tokens; threads: 1 per side; load {os.getloadavg()[0]:.2f}"
    )
    print(describe(shapes, rate))
    with torch.no_grad():
        our_logits = model(task.clean)

    # ours first, alone on the machine's thread
    ours: dict[str, tuple[float, object]] = {}
    floors: dict[str, float] = {}  # FLOPs, then seconds
    calls = {}
    eap = None
    if {"eap", "faith"} & set(args.rows):
        calls["eap"] = lambda: discover(model, task, "eap", "edge", direction="noising")
        eap, seconds = timed(calls["eap"])
        ours["eap"] = (seconds, eap)
        print(f"ours, {ROWS['eap']}: {seconds:.1f} s", flush=True)
        floors["eap"] = gradient_flops(shapes, 1)
    if "eap_ig" in args.rows:
        calls["eap_ig"] = lambda: discover(
            model, task, "eap-ig", "edge", direction="noising", ig_steps=args.ig_steps
        )
        graph, seconds = timed(calls["eap_ig"])
        ours["eap_ig"] = (seconds, graph)
        print(f"ours, {ROWS['eap_ig']}: {seconds:.1f} s", flush=True)
        floors["eap_ig"] = gradient_flops(shapes, args.ig_steps)
    if "faith" in args.rows:
        calls["faith"] = lambda: faithfulness_curve(model, eap, task, args.sizes, progress=False)
        curve, seconds = timed(calls["faith"])
        ours["faith"] = (seconds, curve)
        print(f"ours, {ROWS['faith']}: {seconds:.1f} s", flush=True)
        n_edges = len(eap.edge_names())
        floors["faith"] = faithfulness_flops(shapes, n_edges, args.sizes)
    cells = heads_cells(model, shapes.tokens, args.quick)
    if "heads" in args.rows:
        mask = None
        if cells is not None:
            mask = torch.zeros(model.spec.n_layers, shapes.tokens, model.spec.n_heads, dtype=bool)
            mask[tuple(torch.tensor(cells).T)] = True
        calls["heads"] = lambda: activation_patching(
            model, task, "heads", per_position=True, cells=mask, progress=False
        )
        values, seconds = timed(calls["heads"])
        ours["heads"] = (seconds, values)
        print(f"ours, {ROWS['heads']}: {seconds:.1f} s", flush=True)
        where = None if cells is None else [(layer, p) for layer, p, _ in cells]
        floors["heads"] = patch_flops(shapes, "heads", per_position=True, cells=where)
    if "eap" not in args.rows:
        ours.pop("eap", None)
    # the rate again after our rows: the faster of the two is the machine's (the floor is a
    # least time); other jobs on the machine slow down the rows and the GEMM alike
    again = matmul_rate(shapes)
    print(f"matmul rate after our rows: {again / 1e9:.1f} GFLOP/s")
    rate = max(rate, again)
    floors = {row: flops / rate for row, flops in floors.items()}

    spec = {
        "model_dir": str(model_dir),
        "threads": 1,
        "clean": task.clean.tolist(),
        "corrupt": task.corrupt.tolist(),
        "answer": task.answer.tolist(),
        "wrong": task.wrong.tolist(),
        "rows": {
            "eap": {},
            "eap_ig": {"ig_steps": args.ig_steps},
            "faith": {"sizes": args.sizes, "scores": edge_scores(eap) if eap else None},
            "heads": {"cells": cells},
        },
    }
    peers: dict[str, dict] = {}
    for peer in PEERS:
        if peer.env not in args.peers or not set(peer.rows) & set(args.rows):
            continue
        python = peer_python(peer)
        if python is None:
            continue
        print(f"running {peer.label} ...", flush=True)
        result = run_peer(peer, python, spec, work, args.peer_timeout)
        if result is None:
            continue
        diff = (result["logits"] - our_logits).abs().max().item()
        print(f"{peer.label} {result['version']}: clean logits max |difference| {diff:.1e}")
        if diff > 1e-3:
            print(f"  {peer.label}'s logits disagree with ours: its rows are left out")
            continue
        peers[peer.label] = result

    # our rows once more: the first call above is cold, as a user's first call is (edge
    # model set-up, first touches of memory); the second shows the steady state
    warm = {row: timed(calls[row])[1] for row in ours}
    header = ["row", "ours", *[q.label for q in PEERS], "max abs diff", "floor", "ours / floor"]
    header.append("again / floor")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row, (seconds, value) in ours.items():
        cells_out, diffs = [], []
        for peer in PEERS:
            got = peers.get(peer.label, {}).get("rows", {}).get(row)
            if got is None:
                cells_out.append("–")
                continue
            theirs = got["seconds"]
            cells_out.append(
                f"{theirs:.1f} s ({theirs / seconds:.1f}x; {theirs / floors[row]:.1f}x floor)"
            )
            diffs.append(compare(row, value, got, model))
        diff = "; ".join(d for d in diffs if d) or "–"
        print(
            f"| {ROWS[row]} | {seconds:.1f} s | " + " | ".join(cells_out) + f" | {diff} | "
            f"{floors[row]:.2f} s | {seconds / floors[row]:.1f}x | "
            f"{warm[row]:.1f} s, {warm[row] / floors[row]:.1f}x |"
        )
    heads = "every cell" if cells is None else f"{len(cells)} cells (layer, position, head)"
    print(
        f"\n(x): peer time / ours, and / floor. Head patching: {heads} on every side. Floors: _floor.py at "
        f"{rate / 1e9:.1f} GFLOP/s, measured in this run. again: our second call of the row."
    )
    for row in ours:
        if min(ours[row][0], warm[row]) > 1.5 * floors[row]:
            profile_row(ROWS[row], calls[row], min(ours[row][0], warm[row]))


def compare(row: str, ours, got: dict, model) -> str:
    """The largest difference between our values and a peer's for one row, as text."""
    if row in ("eap", "eap_ig"):
        mine = edge_scores(ours)
        diff, scale = score_diff(mine, got["scores"])
        names = sorted(mine)
        pair = torch.tensor([[mine[n] for n in names], [got["scores"][n] for n in names]])
        r = abs(torch.corrcoef(pair.double())[0, 1].item())
        return f"{diff:.1e} (of {scale:.1e}; r {r:.3f})"
    if row == "faith":
        theirs = torch.tensor(got["metric"], dtype=torch.float64)
        mine = torch.tensor(ours["metric"].tolist(), dtype=torch.float64)
        return f"{(theirs - mine).abs().max().item():.1e}"
    values = ours.double()
    theirs = torch.tensor(got["values"], dtype=torch.float64)
    if got.get("cells") is not None:
        index = torch.tensor(got["cells"])
        values = values[index[:, 0], index[:, 1], index[:, 2]]
    else:
        values = values.flatten()
    return f"{(values - theirs).abs().max().item():.1e}"


if __name__ == "__main__":
    main()
