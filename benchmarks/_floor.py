"""Floors: the least arithmetic each benchmark row must do, from the model's shapes alone.

A floor counts the multiply-adds (as 2 FLOPs each) of the matmuls a method cannot avoid, and
turns them into seconds with this machine's measured float32 GEMM rate (one thread unless the
caller set more). ``time / floor`` then says how far a row is from what the hardware allows.

What is counted
---------------
- A *forward* is every block over every prompt position (QKV, attention scores and values over
  the causal prefix, output projection, MLP) plus the unembedding of the last position for the
  two metric columns (the logit difference reads nothing else).
- A *backward* costs ``backward`` forwards (2 by default, the usual rule of thumb; with frozen
  weights only the activation gradients are needed, which is closer to 1).
- EAP: a clean forward, a corrupted forward and one forward/backward. EAP-IG with ``s`` steps:
  the clean and corrupted forwards and ``s`` forward/backwards.
- Exact patching restarts at the patched layer and reuses the prefix: a patch at layer ``l``
  and position ``p`` reruns only what comes after the patched activation in layer ``l`` and the
  layers above it, for positions ``p`` onwards (earlier keys and values are cached), on top of
  one clean and one corrupted forward.
- Faithfulness of a circuit of ``k`` of ``E`` edges: the two baseline forwards once, then per
  circuit one forward plus mixing ``min(k, E - k)`` edge outputs into their readers (one add
  per element of a ``(tokens, d_model)`` slice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

GATED = ("llama", "mistral", "qwen", "gemma")  # architectures whose MLP has three matrices


@dataclass(frozen=True)
class Shapes:
    """The sizes a floor depends on."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    n_kv_heads: int
    vocab: int
    tokens: int
    prompts: int
    gated_mlp: bool = False

    @classmethod
    def of(cls, model, task) -> Shapes:
        spec = model.spec
        return cls(
            n_layers=spec.n_layers,
            d_model=spec.d_model,
            d_mlp=spec.d_mlp or 4 * spec.d_model,
            n_heads=spec.n_heads,
            d_head=spec.d_head,
            n_kv_heads=spec.n_kv_heads,
            vocab=spec.d_vocab or 0,
            tokens=int(task.clean.shape[1]),
            prompts=len(task),
            gated_mlp=any(k in spec.architecture.lower() for k in GATED),
        )


def _attn_proj(s: Shapes) -> tuple[int, int]:
    """FLOPs per token of the QKV projection and of the output projection."""
    qkv = 2 * s.d_model * (s.n_heads + 2 * s.n_kv_heads) * s.d_head
    out = 2 * s.n_heads * s.d_head * s.d_model
    return qkv, out


def _mlp(s: Shapes) -> int:
    return 2 * s.d_model * s.d_mlp * (3 if s.gated_mlp else 2)


def _scores(s: Shapes, position: int) -> int:
    """QK^T and AV of one query at ``position`` (0-based) over its causal prefix."""
    return 2 * 2 * (position + 1) * s.n_heads * s.d_head


def _unembed(s: Shapes) -> int:
    return 2 * s.d_model * 2  # the answer and the wrong column at the last position


def block_flops(s: Shapes, first: int = 0, start: str = "block") -> int:
    """One block for one prompt, positions ``first`` onwards; ``start`` says where in the
    block the computation begins: ``block`` (QKV on), ``head`` (one head's output projection
    on), ``mlp`` (the MLP alone)."""
    qkv, out = _attn_proj(s)
    n = s.tokens - first
    if start == "mlp":
        return n * _mlp(s)
    if start == "head":
        return n * (2 * s.d_head * s.d_model + _mlp(s))
    return n * (qkv + out + _mlp(s)) + sum(_scores(s, t) for t in range(first, s.tokens))


def forward_flops(s: Shapes) -> int:
    """A forward of every prompt."""
    return s.prompts * (s.n_layers * block_flops(s) + _unembed(s))


def gradient_flops(s: Shapes, ig_steps: int = 1, backward: float = 2.0) -> float:
    """EAP (``ig_steps=1``) or EAP-IG: clean and corrupted forwards, ``ig_steps`` forward and
    backward passes."""
    f = forward_flops(s)
    return 2 * f + ig_steps * (1 + backward) * f


def restart_flops(s: Shapes, layer: int, position: int, component: str) -> int:
    """Rerun after patching ``component`` at ``layer`` from ``position`` on (one prompt).

    ``component``: ``resid`` (entering the block), ``heads`` (one head's output), ``attn``
    (the attention block's output), ``mlp`` (the MLP's output)."""
    own = {
        "resid": block_flops(s, position, "block"),
        "heads": block_flops(s, position, "head"),
        "attn": block_flops(s, position, "mlp"),
        "mlp": 0,
    }[component]
    above = sum(block_flops(s, position) for _ in range(layer + 1, s.n_layers))
    return own + above + _unembed(s)


def patching_flops(
    s: Shapes,
    component: str = "heads",
    per_position: bool = False,
    cells: list[tuple[int, int]] | None = None,
) -> int:
    """Exact activation patching of every cell (or of ``cells``, given as (layer, position)
    pairs, one per patched head or component), restart-at-layer and prefix reuse."""
    if cells is None:
        positions = range(s.tokens) if per_position else range(1)
        per_layer = s.n_heads if component == "heads" else 1
        cells = [(layer, p) for layer in range(s.n_layers) for p in positions] * per_layer
    rerun = sum(restart_flops(s, layer, p, component) for layer, p in cells)
    return 2 * forward_flops(s) + s.prompts * rerun


def faithfulness_flops(s: Shapes, n_edges: int, sizes: list[int]) -> int:
    """Baselines once, then one patched forward per circuit size plus its edge mixing."""
    mix = sum(min(k, n_edges - k) for k in sizes) * s.prompts * s.tokens * s.d_model
    return 2 * forward_flops(s) + len(sizes) * forward_flops(s) + mix


def matmul_rate(s: Shapes, seconds: float = 1.0) -> float:
    """This machine's float32 GEMM rate (FLOP/s) on a block-sized product: the prompts' tokens
    times the MLP's input matrix, best of a few timed runs."""
    m = s.prompts * s.tokens
    a = torch.randn(m, s.d_model)
    b = torch.randn(s.d_model, s.d_mlp)
    flops = 2 * m * s.d_model * s.d_mlp
    a @ b  # warm-up
    reps = 1
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
        reps = min(reps * 2, 16)
    return flops / best


def floor_seconds(flops: float, rate: float) -> float:
    return flops / rate


def describe(s: Shapes, rate: float) -> str:
    return (
        f"floor: {s.n_layers} layers, d_model {s.d_model}, d_mlp {s.d_mlp}, {s.n_heads} heads "
        f"x {s.d_head}, vocab {s.vocab}, {s.prompts} prompts x {s.tokens} tokens; one forward "
        f"{forward_flops(s) / 1e9:.2f} GFLOP; measured matmul rate {rate / 1e9:.1f} GFLOP/s "
        f"({torch.get_num_threads()} thread(s))"
    )
