"""Memory budgets: one knob, ``max_memory``, sets how much every method holds at once.

Every method streams over prompts (and IG points, patched copies, edges) in chunks. The chunk
sizes come from an estimate of the bytes one prompt-token costs in that method's passes, worked
out from the model's shapes (writers, readers, d_model, layers, heads) with constants measured on
SmolLM2-135M and on the tiny test models (see ``benchmarks/memory.py``). Results do not depend
on the chunking: every method accumulates exactly (sums weighted by each chunk's share of the
mean over prompts).

``max_memory`` bounds the *working* memory of a method (activations, gradients, patch deltas),
not the model's weights. It is an int of bytes or a string such as ``"2GB"`` or ``"512MB"``
(binary units: 1 GB = 2**30 bytes). An explicit chunk parameter (``rows_per_pass``,
``masks_per_pass``, ``tokens_per_pass``, ``edges_per_pass``) wins over it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from interp import GraphLayout, InterpError, TransformerModel

__all__ = ["DEFAULT_MAX_MEMORY", "MemoryBudget", "check_count", "parse_memory", "prompt_chunks"]

DEFAULT_MAX_MEMORY = 1 * 2**30  # ~1 GB of working memory: fits a 24 GB machine many times over
# and keeps SmolLM2-135M's EAP-IG (model included) under 3 GB

_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kb": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mb": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gb": 2**30,
    "gib": 2**30,
    "t": 2**40,
    "tb": 2**40,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")

# Bytes per prompt-token, in units of (itemsize x d_model) per hooked vector, measured as the
# growth of the peak allocation from passes of one row to passes of four
# (tests/unit/circuits/test_memory.py's PeakMemory), once the edge model is built: EAP adds
# 4.3 MB per row-token on a GPT-2-small-shaped model (602 writers and readers, 16 tokens) and
# 6.2 MB on SmolLM2-135M (1142), about half of the estimates (7.9 and 11.5 MB). Attribution
# keeps only the writers' activations and the gradients uncopied; before it kept every
# site's activation and a copy of every gradient, 12.8 MB per row-token on SmolLM2, and this
# constant was 4. Peak RSS of SmolLM2's EAP-IG at the default budget: 1.87 GB at 8 prompts,
# 1.94 GB at 32 (benchmarks/memory.py).
GRADIENT_VECTORS = 2.0  # a gradient pass: each hooked site's activation, its gradient, the
# autograd graph's saved tensors and the accumulator's transient reshapes
PATCH_VECTORS = 3.0  # an edge-patching pass: every writer's delta, the readers' gathered ones
# (tiny-llama: 13-20 kB per row-token measured, 17.7 kB estimated)
MASK_VECTORS = 8.0  # a learned-mask pass: the deltas, their stacked copy, and their gradients
FORWARD_VECTORS = 12.0  # a plain forward pass per block: residual, attention, MLP hidden


def parse_memory(value: int | str | None) -> int:
    """Bytes from an int or a string such as ``"2GB"``, ``"512 MB"``, ``"1.5GiB"``.

    Units are binary (``KB``/``KiB`` = 2**10, ``MB`` = 2**20, ``GB`` = 2**30, ``TB`` =
    2**40), case-insensitive; a bare number is bytes. ``None`` gives the default
    (:data:`DEFAULT_MAX_MEMORY`).

    Examples
    --------
    >>> parse_memory("2GB"), parse_memory("512mb"), parse_memory(4096)
    (2147483648, 536870912, 4096)
    """
    if value is None:
        return DEFAULT_MAX_MEMORY
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InterpError(
            "max_memory must be a number of bytes (an int) or a string such as '2GB' or "
            f"'512MB'; got {type(value).__name__} {value!r}."
        )
    if isinstance(value, int):
        number, unit = float(value), ""
    else:
        match = _PATTERN.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise InterpError(
                f"max_memory must look like '2GB', '512MB' or '1.5GiB' (units B, KB, MB, GB, "
                f"TB); got {value!r}."
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _UNITS[unit])
    if size < 1:
        raise InterpError(f"max_memory must be at least 1 byte; got {value!r}.")
    return size


def check_count(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InterpError(f"{name} must be an int >= 1; got {value!r}.")
    return value


class MemoryBudget:
    """Chunk sizes that keep one method's working memory under ``max_memory`` bytes.

    Each ``*_per_pass`` method returns how many rows (prompt copies) of ``positions`` tokens
    one pass may hold; :meth:`prompts` gives the prompt chunks for data kept per prompt.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> small, large = MemoryBudget(model, "1MB"), MemoryBudget(model, "1GB")
    >>> small.gradient_rows(20) < large.gradient_rows(20)
    True
    """

    def __init__(self, model: TransformerModel, max_memory: int | str | None = None) -> None:
        self.bytes = parse_memory(max_memory)
        spec = model.spec
        itemsize = next(model.bridge.parameters()).element_size()
        self.itemsize = itemsize
        self.vector = itemsize * spec.d_model  # one d_model vector at one token
        self.n_layers, self.n_heads = spec.n_layers, spec.n_heads
        self.d_mlp = spec.d_mlp or 4 * spec.d_model
        self.d_vocab = spec.d_vocab or 0
        if spec.parallel_attn_mlp:
            self.writers = self.readers = spec.n_layers * (spec.n_heads + 1) + 1
        else:
            layout = GraphLayout.of(spec)
            self.writers, self.readers = layout.n_writers, layout.n_readers

    def _forward(self, positions: int) -> float:
        """Bytes per token of one block's forward pass: the residual stream's vectors, the MLP
        hidden layer and the attention scores and pattern (``positions`` wide per head)."""
        hidden = 2 * self.d_mlp / (self.vector // self.itemsize)
        return (
            self.vector * (FORWARD_VECTORS + hidden) + 2 * self.itemsize * self.n_heads * positions
        )

    def gradient_token(self, positions: int, vectors: int | None = None) -> float:
        """Bytes per prompt-token of a gradient pass that hooks ``vectors`` d_model vectors per
        token (by default every writer and reader: the edge methods)."""
        vectors = self.writers + self.readers if vectors is None else vectors
        layers = self.n_layers * (self._forward(positions) + 3 * self.n_heads * self.vector)
        return GRADIENT_VECTORS * vectors * self.vector + 2 * layers

    def patch_token(self, positions: int) -> float:
        """Bytes per prompt-token of an edge-patching pass (one patched copy)."""
        return PATCH_VECTORS * self.writers * self.vector + self.n_layers * self._forward(positions)

    def mask_token(self, positions: int) -> float:
        """Bytes per prompt-token of a learned-mask pass (with its backward)."""
        layers = self.n_layers * (self._forward(positions) + 3 * self.n_heads * self.vector)
        return MASK_VECTORS * self.writers * self.vector + 2 * layers

    def cache_token(self) -> float:
        """Bytes per prompt-token that activation patching keeps for a prompt chunk: both
        runs' activations at every layer, the block inputs and their keys and values."""
        return 6 * self.n_layers * self.vector

    def rows(self, per_token: float, positions: int, share: float = 1.0) -> int:
        """How many rows of ``positions`` tokens fit in ``share`` of the budget (at least 1)."""
        return max(1, int(self.bytes * share // max(1.0, per_token * max(1, positions))))

    def gradient_rows(self, positions: int, vectors: int | None = None) -> int:
        return self.rows(self.gradient_token(positions, vectors), positions)

    def patch_rows(self, positions: int) -> int:
        return self.rows(self.patch_token(positions), positions)

    def mask_rows(self, positions: int) -> int:
        return self.rows(self.mask_token(positions), positions)

    def logit_rows(self, positions: int) -> int:
        """Rows of ``positions`` tokens one no-gradient forward pass may carry with half the
        budget when it returns every position's logits (vocab wide, and their float32 copy)."""
        return self.rows(self._forward(positions) + 2 * 4 * self.d_vocab, positions, 0.5)

    def forward_tokens(self, positions: int) -> int:
        """Tokens one no-gradient forward pass may carry with half the budget."""
        return self.rows(self._forward(positions), 1, 0.5)


def prompt_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` prompts covering ``range(n)``."""
    size = max(1, size)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
