"""Interaction basis vs PCA vs neurons: the numbers of the issue's closing note.

For a modular-addition MLP (p = 31), a digits MLP and a small transformer trained offline on
modular addition, per node layer: directions kept, the number of edges holding 90% / 99% of the
edge mass into the next layer, and the Newman modularity Q of the interaction graph (Louvain,
resolution 1, raw edge weights, constant directions left out), in the interaction basis, PCA and
neurons (all centred, relative truncation 1e-10). For the MLPs also node ablation (fewest
directions, constant included, whose accuracy is within 0.01 of the unablated model, every count
tried) and edges needed (bisection, accuracy within 0.001).

The transformer is ``tiny-gpt2``'s architecture (``interp.load_model("tiny-gpt2", ...)``, GPT-2
blocks with LayerNorm and GELU; default 2 layers, d_model 64, 4 heads, d_mlp 256, dropout off),
trained from scratch on ``BOS a b =`` -> ``(a + b) mod p``. It uses direct token ids, not text:
the word tokenizer has single digits only, so ``a`` is token ``2 + a`` (a word of the tokenizer
whose meaning is irrelevant, the embeddings are learnt), ``=`` is token ``p + 2`` and BOS is the
tokenizer's BOS (id 0). The loss is the cross-entropy of the last position's logits over the p
number tokens (accuracy: their arg max); AdamW (betas 0.9, 0.98), full batch on 70% of the p^2
pairs, 20 warm-up steps and a linear decay to 0. The bases are fitted on all p^2 prompts, every
(prompt, position) pair a data point, at the MLP sites ``m{L}.in -> m{L}.post -> m{L}`` and around
the MLP with ``residual=True`` (``r{L}.mid -> (r{L}.mid, m{L}.post) -> r{L}.post``). Its sections
contain a LayerNorm, so attributions are gradient x input rather than exact integrated gradients;
no ablations are run there (their score would be the MLP output's, not the model's).

Run from ``benchmarks/``: ``python interaction_basis.py`` (about seven minutes on one core, most
of it the transformer's fits; ``--parts`` picks sections).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from _common import timed

import interp
from analysis import (
    InteractionBasis,
    accuracy,
    compare_bases,
    digits,
    mlp,
    modular_addition,
    train,
    transformer_mlp,
)

BASES = ("interaction", "pca", "neuron")
SHORT = {"interaction": "IB", "pca": "PCA", "neuron": "neurons"}


# -- training ------------------------------------------------------------------------------------


def modadd_transformer(
    p: int = 31,
    *,
    n_layer: int = 2,
    d_model: int = 64,
    n_head: int = 4,
    steps: int = 500,
    lr: float = 5e-3,
    weight_decay: float = 1.0,
    train_fraction: float = 0.7,
    seed: int = 0,
) -> tuple[interp.TransformerModel, torch.Tensor, torch.Tensor, float]:
    """Train ``tiny-gpt2``'s architecture on ``BOS a b =`` -> ``(a + b) mod p`` (full batch).

    Returns the model (eval mode, parameters frozen again), the tokens (p^2, 4) of all pairs,
    their labels and the test accuracy (last position, arg max over the p number tokens).
    """
    model = interp.load_model(
        "tiny-gpt2",
        seed=seed,
        n_layer=n_layer,
        n_embd=d_model,
        n_head=n_head,
        n_positions=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    first, eq = 2, p + 2  # number a is token 2 + a; "=" is token p + 2; BOS is token 0
    if eq >= model.spec.d_vocab:
        raise ValueError(f"p = {p} needs {eq + 1} tokens; the vocabulary has {model.spec.d_vocab}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    tokens = torch.stack([torch.zeros_like(a), first + a, first + b, torch.full_like(a, eq)], 1)
    labels = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(train_fraction * p * p)
    tr, te = order[:n_train], order[n_train:]

    def logits(tok: torch.Tensor) -> torch.Tensor:
        return model(tok)[:, -1, first : first + p]

    params = list(model.bridge.parameters())
    for q in params:
        q.requires_grad_(True)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps)
    )
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(logits(tokens[tr]), labels[tr])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for q in params:
        q.requires_grad_(False)
    model.bridge.eval()
    with torch.no_grad():
        acc = float((logits(tokens[te]).argmax(-1) == labels[te]).float().mean())
    return model, tokens, labels, acc


# -- tables --------------------------------------------------------------------------------------


def fit_all(model, x) -> dict[str, InteractionBasis]:
    return {name: InteractionBasis(name, centre=True).fit(model, x) for name in BASES}


def triple(values: dict[str, object]) -> str:
    return " / ".join(str(values[b]) for b in BASES)


def print_table(title: str, bases: dict[str, InteractionBasis], names: list[str]) -> float:
    """Print one row per node layer (``names``: their names) and Q; return the basis' Q."""
    comp = compare_bases(*bases.values()).set_index(["basis", "edges"])
    ib = bases["interaction"]
    rows = []
    for layer in range(ib.n_layers_):
        width = ib.widths_[layer]
        row = {
            "node layer": f"{names[layer]} ({width}{'' if layer == ib.n_layers_ - 1 else ' + 1'})",
            "kept IB / PCA / neurons": triple({b: bases[b].kept_[layer] for b in BASES}),
        }
        if layer < ib.n_layers_ - 1:
            key = f"L{layer}->L{layer + 1}"
            row["edges out"] = f"{names[layer]}->{names[layer + 1]}"
            row["possible (IB/PCA/n)"] = triple({b: comp.loc[(b, key), "n_edges"] for b in BASES})
            for f in ("90%", "99%"):
                row[f"{f} IB / PCA / neurons"] = triple(
                    {b: comp.loc[(b, key), f"edges_{f}"] for b in BASES}
                )
        rows.append(row)
    print(f"\n{title}")
    print(pd.DataFrame(rows).fillna("").to_string(index=False))
    q = {b: round(float(comp.loc[b, "modularity"].iloc[0]), 3) for b in BASES}
    print(f"modularity Q  IB / PCA / neurons: {triple(q)}")
    return q["interaction"]


def ablations(bases: dict[str, InteractionBasis], x, y) -> None:
    """Fewest directions kept within 0.01 accuracy (node ablation, every count) and the edges
    needed within 0.001 (bisection), per node layer / pair of layers."""
    n_hidden = bases["interaction"].n_layers_ - 1
    for name, est in bases.items():
        nodes = []
        for layer in range(n_hidden):
            curve = est.ablation_curve(
                x, y, layer=layer, kind="node", schedule=range(est.kept_[layer] + 1)
            )
            base = float(curve.score.iloc[-1])
            nodes.append(int(curve.n_kept[curve.score >= base - 0.01].min()))
        edges = [est.edges_required(x, y, layer=k, tolerance=1e-3) for k in range(n_hidden)]
        print(
            f"  {SHORT[name]:<8} node ablation (dirs kept, acc >= base - 0.01) per layer: "
            f"{nodes};  edges needed (acc >= base - 0.001) per pair: {edges}",
            flush=True,
        )


# -- the three models ----------------------------------------------------------------------------


def modadd_mlp(p: int, run_ablations: bool) -> None:
    data = modular_addition(p, train_fraction=0.7, seed=0)
    net = mlp(2 * p, [96, 96], p, seed=0)
    (_, seconds) = timed(
        lambda: train(
            net,
            data,
            epochs=1000,
            lr=1e-2,
            weight_decay=1.0,
            optimizer="adamw",
            log_every=1000,
            progress=False,
        )
    )
    print(
        f"\nmodular-addition MLP mlp({2 * p}, [96, 96], {p}): AdamW lr 1e-2 wd 1.0, full batch, "
        f"1000 epochs ({seconds:.0f} s); test accuracy "
        f"{accuracy(net, data.x_test, data.y_test):.3f}"
    )
    x = torch.cat([data.x_train, data.x_test])  # the bases are fitted on all p^2 pairs
    y = torch.cat([data.y_train, data.y_test])
    bases, seconds = timed(lambda: fit_all(net, x))
    print_table(
        f"mod-add MLP (p = {p}), all {len(x)} pairs; fits {seconds:.0f} s",
        bases,
        ["L0 input", "L1", "L2", "L3 logits"],
    )
    if run_ablations:
        ablations(bases, x, y)


def digits_mlp(run_ablations: bool) -> None:
    data = digits(image=False)
    net = mlp(64, [64, 64], 10, seed=0)
    train(net, data, epochs=60, lr=3e-3, batch_size=128, progress=False)
    print(
        f"\ndigits MLP mlp(64, [64, 64], 10): Adam lr 3e-3, batch 128, 60 epochs; test accuracy "
        f"{accuracy(net, data.x_test, data.y_test):.3f}"
    )
    bases, seconds = timed(lambda: fit_all(net, data.x_train))
    print_table(
        f"digits MLP, {len(data.x_train)} training images; fits {seconds:.0f} s",
        bases,
        ["L0 input", "L1", "L2", "L3 logits"],
    )
    if run_ablations:
        ablations(bases, data.x_test, data.y_test)


def transformer(args: argparse.Namespace) -> None:
    (model, tokens, _, acc), seconds = timed(
        lambda: modadd_transformer(
            args.p,
            n_layer=args.tx_layers,
            d_model=args.tx_d_model,
            n_head=args.tx_heads,
            steps=args.tx_steps,
            lr=args.tx_lr,
        )
    )
    s = model.spec
    print(
        f"\nmod-add transformer (tiny-gpt2 architecture: {s.n_layers} layers, d_model {s.d_model}, "
        f"{s.n_heads} heads, d_mlp {s.d_mlp}; "
        f"p = {args.p}, BOS a b =): AdamW lr {args.tx_lr:g} wd 1.0, {args.tx_steps} full-batch "
        f"steps on 70% of the pairs ({seconds:.0f} s); test accuracy {acc:.3f}"
    )
    for layer in range(s.n_layers):
        for residual in (False, True):
            sections, x, sites = transformer_mlp(model, tokens, layer, residual=residual)
            bases, seconds = timed(lambda sec=sections, xx=x: fit_all(sec, xx))
            print_table(
                f"block {layer}, {'residual=True' if residual else 'MLP sites'}: "
                f"{len(x)} (prompt, position) points; fits {seconds:.0f} s",
                bases,
                sites,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts",
        default="mlp,digits,transformer",
        help="comma-separated: mlp, digits, transformer",
    )
    p.add_argument("--p", type=int, default=31, help="modulus of both modular-addition models")
    p.add_argument("--no-ablations", action="store_true", help="skip the MLPs' ablations")
    p.add_argument("--tx-layers", type=int, default=2)
    p.add_argument("--tx-d-model", type=int, default=64)
    p.add_argument("--tx-heads", type=int, default=4)
    p.add_argument("--tx-steps", type=int, default=500)
    p.add_argument("--tx-lr", type=float, default=5e-3)
    args = p.parse_args()
    torch.manual_seed(0)
    pd.set_option("display.width", 200)
    start = time.perf_counter()
    parts = args.parts.split(",")
    if "mlp" in parts:
        modadd_mlp(args.p, not args.no_ablations)
    if "digits" in parts:
        digits_mlp(not args.no_ablations)
    if "transformer" in parts:
        transformer(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s, torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
