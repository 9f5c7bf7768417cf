"""Activation patching, the ground truth, batched.

For every cell (a layer, and a head and/or a position) the activation of the base run is replaced
by that of the source run and the metric is measured. Two things make it fast:

- the base run's residual entering each block is kept, so a patch at layer L restarts the
  forward pass at block L instead of recomputing the layers below it;
- many cells ride in one forward pass: the batch is stacked once per cell, each copy patched at
  its own cell, and only the last position of each prompt is unembedded.

``direction="denoising"`` (the default) runs the corrupted prompts and patches in clean
activations; ``"noising"`` runs the clean prompts and patches in corrupted ones. Values are the
raw metric of each patched run, as TransformerLens' ``get_act_patch_*`` functions return.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from interp import InterpError, ShapeError, Site, TransformerModel, progress_bar

from ._memory import MemoryBudget, check_count, prompt_chunks
from ._options import Component, Direction, check_option
from ._tasks import Task

__all__ = [
    "COMPONENTS",
    "activation_patching",
    "base_and_source",
    "check_component",
    "lookahead_patching",
    "patching_costs",
]

COMPONENTS: dict[str, str] = {
    "heads": "a{layer}.z",  # per head: [batch, pos, head, d_head]; as TL's hook_z patches
    "attn": "a{layer}",
    "mlp": "m{layer}",
    "resid": "r{layer}.pre",
}
DEFAULT_TOKENS_PER_PASS = 4096


@dataclass(frozen=True)
class _Cell:
    layer: int
    head: int | None
    pos: int | None


def base_and_source(task: Task, direction: str) -> tuple[Tensor, Tensor]:
    """(tokens that are run, tokens whose activations are patched in) for a direction."""
    if check_option("direction", direction, Direction) == "denoising":
        return task.corrupt, task.clean
    return task.clean, task.corrupt


def check_component(component: str) -> None:
    check_option("component", component, Component)


def _cells(model: TransformerModel, component: str, per_position: bool, n_pos: int) -> list[_Cell]:
    spec = model.spec
    heads = range(spec.n_heads) if component == "heads" else [None]
    positions = range(n_pos) if per_position else [None]
    return [
        _Cell(layer, head, pos)
        for layer in range(spec.n_layers)
        for pos in positions
        for head in heads
    ]


MIN_TOKENS_PER_PASS = 128  # a smaller pass costs more in overhead than a group wastes
GROUP_NEED = 0.8  # a cell joins a group if it needs this share of the work the pass does
MIN_CROSS_LAYER_TOKENS = 512  # groups this small take cells of later layers too


@dataclass(frozen=True)
class _Prefix:
    """What a patched pass may skip. Base and source agree before ``same_until``; the metric
    reads no position before ``last_read`` (the shortest prompt's last). ``first``: where a
    patch at every position may start computing (``None``: nothing is skipped)."""

    same_until: int
    last_read: int
    first: int | None

    @classmethod
    def of(cls, task: Task, base: Tensor, source: Tensor, *, causal: bool = True) -> _Prefix:
        """Both shortcuts need causal attention: in a bidirectional model every position sees
        the tokens where base and source differ, and a patch anywhere reaches every position."""
        differs = (base != source).any(0).nonzero()
        last_read = int(task.lengths.min()) - 1
        if not len(differs):  # the same tokens: the same activations everywhere
            return cls(base.shape[1], last_read, last_read)
        if not causal:
            return cls(0, last_read, None)
        same_until = int(differs[0])
        return cls(same_until, last_read, min(same_until, last_read))

    def noop(self, cell: _Cell) -> bool:
        """A patch at a position where base and source agree changes nothing."""
        return cell.pos is not None and cell.pos < self.same_until

    def begin(self, cell: _Cell) -> int:
        """The first position a cell's pass computes: a patch at position p cannot change
        earlier positions of a causal model, one at every position none before ``first``."""
        if self.first is None:
            return 0
        return self.first if cell.pos is None else min(cell.pos, self.last_read)


@dataclass
class _Runs:
    """The base and source runs of one chunk of prompts that patched passes read: the base
    run's logits and block inputs (keys and values too, for a causal model) and both runs'
    activations at the component's sites. Built once and shared by an estimate and the exact
    patching after it (:func:`circuits.refined_patching`).

    ``base_logits`` holds each prompt's last position only, over ``vocab`` (the metric's
    tokens, all of them when ``None``): ``task.measure(base_logits, vocab=vocab)``."""

    base_logits: Tensor
    vocab: Tensor | None
    inputs: Any  # interp.BlockInputs
    base_cache: dict[str, Tensor]
    source_cache: dict[str, Tensor]
    checked: int | None = None
    """A restart position already shown to reproduce the base run (without an attention
    output given), so the check need not run again."""


def _sites(model: TransformerModel, component: str) -> list[str]:
    return [COMPONENTS[component].format(layer=layer) for layer in range(model.spec.n_layers)]


def _runs(model: TransformerModel, task: Task, component: str, direction: str) -> _Runs:
    """Two forward passes: the source run (its activations at the sites) and the base run
    (its block inputs, and its activations at the sites recorded on the way)."""
    base, source = base_and_source(task, direction)
    sites = _sites(model, component)
    with torch.no_grad():
        with model.without_logits():
            _, source_cache = model.run_with_cache(source, sites)
        # the block inputs are the sites of "resid"; the others are recorded on the way
        recorded = sites if component != "resid" else []
        with model.cache(recorded) as cache, task.narrowed(model) as vocab:
            base_logits, inputs = model.block_inputs(base, keep_kv=model.causal)
        if component == "resid":
            base_cache = dict(zip(sites, inputs.resid, strict=True))
        else:
            base_cache = {site: cache[site] for site in sites}
    if base_logits.ndim == 3:  # a metric over the whole vocabulary gets the full logits
        rows = torch.arange(len(task), device=base_logits.device)
        base_logits = base_logits[rows, task.last_positions().to(rows.device)]
    sources = {site: source_cache[site] for site in sites}
    return _Runs(base_logits, vocab, inputs, base_cache, sources)


def _one_chunk(model: TransformerModel, task: Task, max_memory: int | str | None) -> bool:
    """Whether :func:`_patch_cells` keeps every prompt's runs in one chunk."""
    budget = MemoryBudget(model, max_memory)
    return budget.rows(budget.cache_token(), task.clean.shape[1], share=0.5) >= len(task)


def _start_layer(cell: _Cell, component: str, n_layers: int) -> int:
    """The block a cell's pass starts at: an MLP output only adds to the residual leaving its
    block, so that pass starts one block later (but for the last block)."""
    return cell.layer + 1 if component == "mlp" and cell.layer + 1 < n_layers else cell.layer


def _chunks(
    cells: list[_Cell],
    tokens_per_pass: int,
    n: int,
    n_pos: int,
    prefix: _Prefix,
    component: str,
    n_layers: int,
    across_layers: bool,
) -> Iterator[tuple[list[_Cell], int]]:
    """Groups of cells that ride in one pass, each with the first position it computes (that of
    its first cell, which also sets the block it starts at).

    A cell joins a group if the pass computes at most 1/``GROUP_NEED`` times the work it needs
    (blocks x positions), or, for a cell of the group's layer, if the pass is still small.
    With ``across_layers``, a small group also takes cells of later layers (patched by hooks
    there): few, scattered cells then share passes instead of each running alone."""
    remaining = list(cells)
    while remaining:
        head = remaining[0]
        begin = prefix.begin(head)
        positions = n_pos - begin
        blocks = n_layers - _start_layer(head, component, n_layers)
        per_pass = max(1, tokens_per_pass // (n * positions))
        group, rest = [head], []
        for i, cell in enumerate(remaining[1:], 1):  # layer-major order
            tokens = len(group) * n * positions
            if (
                len(group) >= per_pass
                or cell.layer != head.layer
                and not (
                    across_layers
                    and tokens < MIN_CROSS_LAYER_TOKENS
                    and n_layers - _start_layer(cell, component, n_layers) >= GROUP_NEED * blocks
                )
            ):
                rest += remaining[i:]
                break
            need = n_pos - prefix.begin(cell)
            if cell.layer == head.layer:
                fits = need >= GROUP_NEED * positions or tokens < MIN_TOKENS_PER_PASS
            else:
                work = (n_layers - _start_layer(cell, component, n_layers)) * need
                fits = prefix.begin(cell) >= begin and work >= GROUP_NEED * blocks * positions
            (group if fits else rest).append(cell)
        yield group, begin
        remaining = rest


def patching_costs(
    model: TransformerModel,
    task: Task,
    component: Component = "heads",
    *,
    per_position: bool = False,
    direction: Direction = "denoising",
) -> Tensor:
    """The work of patching each cell exactly as :func:`activation_patching` does it: blocks
    run times positions computed (0 for cells that need no pass), in its result's shape.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> costs = patching_costs(model, task, "resid", per_position=True)
    >>> bool(costs[0].sum() > costs[1].sum())  # layer 0's passes run both blocks
    True
    """
    check_component(component)
    base, source = base_and_source(task, direction)
    n_pos, n_layers = base.shape[1], model.spec.n_layers
    prefix = _Prefix.of(task, base, source, causal=model.causal)
    costs = [
        0
        if prefix.noop(c)
        else (n_layers - _start_layer(c, component, n_layers)) * (n_pos - prefix.begin(c))
        for c in _cells(model, component, per_position, n_pos)
    ]
    return _shaped(torch.tensor(costs, dtype=torch.float64), model, component, per_position, n_pos)


def _slice(activation: Tensor, cell: _Cell) -> Tensor:
    """A cell's part of an activation (batch, pos, [head,] ...)."""
    return activation[:, cell.pos] if cell.head is None else activation[:, cell.pos, cell.head]


def _patcher(
    cells: list[_Cell | None], source: Tensor, n: int, begin: int = 0
) -> Callable[[Tensor, Site], Tensor]:
    """A hook putting, in stacked copy k, cell k's slice of the source activation (copies whose
    cell is ``None`` are left alone).

    Activations are (copies * n, pos - begin, ...) with the head axis third when there is one."""

    def patch(x: Tensor, site: Site) -> Tensor:
        out = x.clone()
        copies = out.view(len(cells), n, *out.shape[1:])
        for k, cell in enumerate(cells):
            if cell is None:
                continue
            index: tuple = (k, slice(None), slice(None) if cell.pos is None else cell.pos - begin)
            src_index: tuple = (slice(None), slice(begin, None) if cell.pos is None else cell.pos)
            if cell.head is not None:
                index += (cell.head,)
                src_index += (cell.head,)
            copies[index] = source[src_index]
        return out

    return patch


def activation_patching(
    model: TransformerModel,
    task: Task,
    component: Component = "heads",
    *,
    per_position: bool = False,
    direction: Direction = "denoising",
    cells: Tensor | None = None,
    tokens_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Patch every layer (and head and/or position) of a component; the metric of each run.

    Parameters
    ----------
    model : TransformerModel
    task : Task
    component : {"heads", "attn", "mlp", "resid"}
        Attention heads (their z, as TransformerLens patches them), attention block outputs,
        MLP outputs, or the residual stream entering each block.
    per_position : bool
        One cell per token position too (else all positions are patched at once).
    direction : {"denoising", "noising"}
    cells : Tensor of bool, optional
        Patch only these cells (a mask in the result's shape); the others are NaN.
    tokens_per_pass : int, optional
        How many tokens (copies x prompts x positions) one forward pass may carry (by default
        as many as half of ``max_memory`` holds, at most 4096).
    max_memory : int or str, optional
        Working memory (bytes, or ``"2GB"``; :class:`~circuits.MemoryBudget`). The base and
        source runs of a chunk of prompts are kept in the other half; chunks add up exactly,
        the metric being a mean over prompts.
    progress : bool, optional
        Show a progress bar (default: when attached to a terminal).

    Returns
    -------
    Tensor
        ``heads``: (layer, head) or (layer, pos, head); others: (layer,) or (layer, pos). The
        task metric (mean logit difference) of each patched run.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> activation_patching(model, task, "heads").shape
    torch.Size([2, 4])
    """
    shape = _result_shape(model, component, per_position, task.clean.shape[1])
    if cells is not None and tuple(cells.shape) != shape:
        raise ShapeError(f"cells must be a mask of shape {shape}; got {tuple(cells.shape)}.")
    values = _patch_cells(
        model,
        task,
        component,
        per_position,
        direction,
        tokens_per_pass,
        progress,
        only=cells,
        max_memory=max_memory,
    )
    return values.view(shape)


def lookahead_patching(
    model: TransformerModel,
    task: Task,
    component: Component = "resid",
    *,
    blocks: int = 1,
    per_position: bool = True,
    direction: Direction = "denoising",
    gradient_rules: Callable[[TransformerModel], Any] | None = None,
    tokens_per_pass: int | None = None,
    max_memory: int | str | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Estimates of :func:`activation_patching` that run ``blocks`` blocks exactly after each
    patch, then extrapolate to the metric with the gradient of the base run there.

    A patch at layer L changes the residual entering block ``L + blocks`` by some ``delta``
    (computed exactly, with only the positions from the patch on); the estimate is
    ``m(base) + grad . delta``, the gradient taken once for all cells at that residual (with
    ``gradient_rules``, e.g. RelP's, if given). ``blocks=0`` would be AtP at the residual;
    ``blocks >= n_layers`` is activation patching. The attention saturation that AtP misses
    at the patched layer (AtP*'s QK fix) is inside the exact part. Prompts and passes are
    chunked as in :func:`activation_patching` (``tokens_per_pass``, ``max_memory``).

    Returns
    -------
    Tensor
        Same shape and meaning as :func:`activation_patching`'s result.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> task = ioi_task(model, 4, template_ids=[0])
    >>> exact = activation_patching(model, task, "resid", per_position=True)
    >>> estimate = lookahead_patching(model, task, "resid", blocks=2)
    >>> bool(torch.allclose(estimate, exact, atol=1e-4))  # 2 blocks: the whole tiny model
    True
    """
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise InterpError(f"blocks must be an integer >= 1 (0 is plain AtP); got {blocks!r}.")
    values = _patch_cells(
        model,
        task,
        component,
        per_position,
        direction,
        tokens_per_pass,
        progress,
        blocks=blocks,
        gradient_rules=gradient_rules,
        max_memory=max_memory,
    )
    return _shaped(values, model, component, per_position, task.clean.shape[1])


def _shortcuts(
    model: TransformerModel,
    inputs: Any,
    prefix: _Prefix,
    task: Task,
    base_logits: Tensor,
    attn_out: Tensor | None,
    checked: int | None = None,
) -> tuple[_Prefix, bool]:
    """The shortcuts a patched pass may take, as ``(prefix, skip_attention)``: restarting at a
    later position (``prefix.first``) and handing block 0 its attention output (``attn_out``;
    ``None`` when the component does not use it), kept only if the base run comes back with
    them, else dropped with a warning. ``checked``: a restart position an earlier pass already
    showed to reproduce the base run (without an attention output given), not checked again.

    Restarting at a later position needs every layer's keys and values from the recorded run;
    attentions that take no KV cache (TransformerLens-native models) record none, so it is not
    tried for them."""
    if prefix.first is not None and (inputs.kv is None or len(inputs.kv) < len(inputs.resid)):
        prefix = replace(prefix, first=None)
    if attn_out is None and (not prefix.first or prefix.first == checked):
        return prefix, False
    if _shortcuts_exact(model, inputs, prefix.first or 0, task, base_logits, attn_out):
        return prefix, attn_out is not None
    warnings.warn(
        f"Restarting {model.spec.name} at a later position, or with a given "
        "attention output, did not reproduce its logits (an attention or "
        "position-embedding layout this toolkit does not know); every position "
        "is recomputed and every attention run instead.",
        stacklevel=4,
    )
    return replace(prefix, first=None), False


def _shortcuts_exact(
    model: TransformerModel,
    inputs: Any,
    first: int,
    task: Task,
    base_logits: Tensor,
    attn_out: Tensor | None,
) -> bool:
    """Whether restarting the base run at position ``first`` (earlier keys and values read from
    the recorded run), with block 0's attention output given as ``attn_out`` instead of
    computed, gives back its logits: one forward pass, against silent mis-slicing."""
    vocab = task.metric_tokens
    try:
        with torch.no_grad():
            again = model.forward_from(
                0,
                inputs.resid[0][:, first:],
                inputs,
                start=first,
                vocab=vocab,
                positions=task.last_positions(),
                attn_out=None if attn_out is None else attn_out[:, first:],
            )
    except (RuntimeError, ValueError, IndexError, TypeError):  # shapes that do not fit
        return False
    # base_logits: the last positions, over the metric's tokens, as `again`
    scale = 1e-4 * float(base_logits.abs().max())
    return bool(torch.allclose(again, base_logits, atol=scale, rtol=0))


def _stacked(x: Tensor, copies: int) -> Tensor:
    """``copies`` copies of a batch, stacked copy after copy on the first axis."""
    return x.repeat(copies, *[1] * (x.ndim - 1))


def _result_shape(
    model: TransformerModel, component: str, per_position: bool, n_pos: int
) -> tuple[int, ...]:
    """(layer, [pos,] [head]): one value per cell."""
    shape: tuple[int, ...] = (model.spec.n_layers,)
    if per_position:
        shape += (n_pos,)
    if component == "heads":
        shape += (model.spec.n_heads,)
    return shape


def _shaped(
    values: Tensor, model: TransformerModel, component: str, per_position: bool, n_pos: int
) -> Tensor:
    return values.view(_result_shape(model, component, per_position, n_pos))


def _patch_cells(
    model: TransformerModel,
    task: Task,
    component: str,
    per_position: bool,
    direction: str,
    tokens_per_pass: int | None,
    progress: bool | None,
    *,
    blocks: int | None = None,
    gradient_rules: Callable[[TransformerModel], Any] | None = None,
    only: Tensor | None = None,
    max_memory: int | str | None = None,
    runs: _Runs | None = None,
) -> Tensor:
    """The metric of every cell's patched run: exact, or with ``blocks`` exact blocks and the
    base run's gradient after them. ``only``: a mask of the cells to compute (in the result's
    shape); the others are NaN. ``runs``: the runs of every prompt, already made (the caller
    checked with :func:`_one_chunk` that they fit).

    Prompts go in chunks whose runs fit in half of ``max_memory``; every value is a mean over
    prompts, so the chunks' values, weighted by their share of the prompts, add up to it."""
    check_component(component)
    check_count("tokens_per_pass", tokens_per_pass)
    budget = MemoryBudget(model, max_memory)
    n_pos = task.clean.shape[1]
    if tokens_per_pass is None:
        tokens_per_pass = min(DEFAULT_TOKENS_PER_PASS, budget.forward_tokens(n_pos))
    n, shares = len(task), []
    size = n if runs is not None else budget.rows(budget.cache_token(), n_pos, share=0.5)
    for chunk in prompt_chunks(n, size):
        part = task.subset(chunk)
        values = _patch_chunk(
            model,
            part,
            component,
            per_position,
            direction,
            tokens_per_pass,
            progress,
            blocks=blocks,
            gradient_rules=gradient_rules,
            only=only,
            runs=runs,
        )
        shares.append(values.detach().cpu().double() * (len(part) / n))  # (cells,): small
        device = values.device
        del values
    dtype = torch.promote_types(next(model.bridge.parameters()).dtype, torch.float32)
    return torch.stack(shares).sum(0).to(device=device, dtype=dtype)


def _patch_chunk(
    model: TransformerModel,
    task: Task,
    component: str,
    per_position: bool,
    direction: str,
    tokens_per_pass: int,
    progress: bool | None,
    *,
    blocks: int | None = None,
    gradient_rules: Callable[[TransformerModel], Any] | None = None,
    only: Tensor | None = None,
    runs: _Runs | None = None,
) -> Tensor:
    """:func:`_patch_cells` for one chunk of prompts, kept whole in memory."""
    base, source = base_and_source(task, direction)
    n, n_pos = base.shape
    n_layers = model.spec.n_layers
    sites = _sites(model, component)
    causal = model.causal
    if runs is None:
        runs = _runs(model, task, component, direction)
    base_logits, inputs = runs.base_logits, runs.inputs
    base_cache, source_cache = runs.base_cache, runs.source_cache
    m_base = task.measure(base_logits, vocab=runs.vocab)
    grads: dict[int, Tensor] = {}
    if blocks is not None and blocks < n_layers:
        readouts = [f"r{layer}.pre" for layer in range(blocks, n_layers)]
        rules = gradient_rules(model) if gradient_rules else contextlib.nullcontext()
        with rules, task.narrowed(model) as vocab:
            measure = partial(task.measure, vocab=vocab)
            run = model.run_with_grads(base, measure, readouts, activations=[])
        grads = {Site.parse(r).layer: run.gradients[r] for r in readouts}
    # In a causal model, before the first token where base and source differ, both runs hold
    # the same activations: patching there changes nothing, and a patch anywhere leaves those
    # positions alone. No metric is read before the shortest prompt's last position.
    prefix = _Prefix.of(task, base, source, causal=causal)
    # heads and attention outputs: the patched attention's output is computed from the cache
    # and handed to the block, instead of running that attention
    attn_out = base_cache[sites[0]] if component in ("heads", "attn") else None
    if component == "heads":
        with torch.no_grad():
            attn_out = model.attention_output(0, attn_out)
    prefix, skip_attention = _shortcuts(
        model, inputs, prefix, task, base_logits, attn_out, runs.checked
    )
    cells = _cells(model, component, per_position, n_pos)
    vocab = task.metric_tokens  # the metric reads these logits only
    device = model.output_device  # where the metric comes out, under a device map too
    values = torch.empty(len(cells), dtype=inputs.resid[0].dtype, device=device)
    # a cell whose source slice equals the base slice bit for bit patches nothing
    noop = torch.tensor(
        [
            c.pos is not None
            and (
                prefix.noop(c)
                or torch.equal(
                    _slice(source_cache[sites[c.layer]], c), _slice(base_cache[sites[c.layer]], c)
                )
            )
            for c in cells
        ],
        device=device,
    )
    values[noop] = m_base
    wanted = ~noop
    if only is not None:
        wanted &= only.flatten().to(device=device, dtype=torch.bool)
        values[~noop & ~wanted] = float("nan")
    todo = [c for c, want in zip(cells, wanted.tolist(), strict=True) if want]
    computed = torch.empty(len(todo), dtype=values.dtype, device=device)
    slot = {cell: i for i, cell in enumerate(todo)}
    bar = progress_bar(total=len(todo), desc=f"patching {component}", progress=progress)
    with torch.no_grad(), bar:
        for chunk, begin in _chunks(
            todo,
            tokens_per_pass,
            n,
            n_pos,
            prefix,
            component,
            n_layers,
            across_layers=blocks is None,
        ):
            layer, copies = chunk[0].layer, len(chunk)
            site = Site.parse(sites[layer])
            patch = _patcher(
                [c if c.layer == layer else None for c in chunk],
                source_cache[sites[layer]],
                n,
                begin,
            )
            # cells of later layers (small groups only) are patched by hooks at their sites
            hooks = {
                sites[later]: _patcher(
                    [c if c.layer == later else None for c in chunk],
                    source_cache[sites[later]],
                    n,
                    begin,
                )
                for later in sorted({c.layer for c in chunk} - {layer})
            }
            base_here = _stacked(base_cache[sites[layer]][:, begin:], copies)
            resid, attn_out = base_here, None
            if component != "resid":
                resid = _stacked(inputs.resid[layer][:, begin:], copies)
            if component == "resid":
                resid = patch(base_here, site)
            elif _start_layer(chunk[0], component, n_layers) > layer:
                # the MLP output's difference is added to the residual leaving its block
                layer += 1
                resid = (
                    _stacked(inputs.resid[layer][:, begin:], copies)
                    + patch(base_here, site)
                    - base_here
                )
            elif component == "mlp" or not skip_attention:
                hooks[sites[layer]] = patch
            else:  # the patched attention's output, given: that attention is not run
                attn_out = patch(base_here, site)
                if component == "heads":
                    attn_out = model.attention_output(layer, attn_out)
            stop = None if blocks is None or layer + blocks >= n_layers else layer + blocks
            with model.hooks(hooks):
                out = model.forward_from(
                    layer,
                    resid,
                    inputs,
                    start=begin,
                    stop=stop,
                    positions=task.last_positions(copies),
                    vocab=vocab,
                    attn_out=attn_out,
                )
            if stop is None:
                metric = task.measure(out, per_copy=True, vocab=vocab)
            else:  # grad . delta at the residual entering block `stop`, per copy
                delta = out.view(copies, n, *out.shape[1:]) - inputs.resid[stop][:, begin:]
                metric = m_base + (delta * grads[stop][:, begin:]).flatten(1).sum(-1)
            computed[torch.tensor([slot[c] for c in chunk], device=device)] = metric.to(device)
            bar.update(copies)
    values[wanted] = computed
    return values
