"""Hooked models: one wrapper API over the TransformerLens 4 bridge and over any ``nn.Module``.

Everything that touches a model goes through context managers that remove what they added in a
``finally``: after a context exits the model has no extra hooks, its bridge switches are as they
were, and it gives bit-identical outputs.

A site is bound to a torch module (a bridge ``HookPoint`` or a module of a plain model) plus a
view: an optional un-flattening of heads and an index that picks one head or one position. User
hook functions see the view; what they return is written back into a copy of the full tensor.

Restarting a pass at a block (``block_inputs``, ``forward_from``...) is an engine of its own in
``_restart``; the :class:`TransformerModel` methods of those names hand it the bridge.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from . import _forks, _restart
from ._errors import InterpError, ShapeError, UnknownSiteError, did_you_mean
from ._restart import BlockInputs
from ._site import Site, SiteLike
from ._spec import ModelSpec, is_causal, spec_from_bridge

__all__ = [
    "ActivationCache",
    "GradientRun",
    "HookFn",
    "HookedModel",
    "ModuleModel",
    "TransformerModel",
    "wrap",
]

HookFn = Callable[[Tensor, Site], "Tensor | None"]
"""A hook: gets the activation at a site (a view: one head or position when the site says so)
and the site; returns ``None`` to leave it or a tensor of the same shape to replace it."""


class ActivationCache(dict):
    """A ``dict`` from :class:`Site` to tensor that also accepts site names as keys."""

    def __getitem__(self, key: SiteLike) -> Tensor:
        site = Site.parse(key)
        try:
            return super().__getitem__(site)
        except KeyError:
            raise UnknownSiteError(
                f"Site {str(site)!r} is not in this cache."
                + did_you_mean(str(site), (str(s) for s in self))
            ) from None

    def __contains__(self, key: object) -> bool:
        try:
            return super().__contains__(Site.parse(key))  # type: ignore[arg-type]
        except UnknownSiteError:
            return False

    def summary(self) -> str:
        """One line per site: name, shape, dtype, mean and standard deviation."""
        lines = []
        for site, x in self.items():
            xf = x.detach().float()
            std = xf.std().item() if xf.numel() > 1 else 0.0
            lines.append(
                f"{str(site):<18} {str(tuple(x.shape)):<22} {str(x.dtype):<14} "
                f"mean {xf.mean().item():+.4f}  std {std:.4f}"
            )
        return "\n".join(lines)


class GradientRun(NamedTuple):
    """What :meth:`HookedModel.run_with_grads` returns."""

    value: Tensor
    """The scalar metric (detached)."""
    activations: ActivationCache
    """Activations at the sites (detached)."""
    gradients: ActivationCache
    """Gradients of the metric with respect to those activations."""


@dataclass(frozen=True)
class _Binding:
    """Where a site lives (a module and whether it is its input) and how to view it."""

    module: nn.Module
    on_input: bool = False
    unflatten: tuple[int, int] | None = None  # split the last dim into (heads, d_head)
    index: tuple[Any, ...] = ()
    axes: tuple[str, ...] = ()
    flags: frozenset[str] = field(default_factory=frozenset)

    def _full4(self, full: Tensor) -> Tensor:
        if self.unflatten is not None and full.ndim == 3:
            return full.unflatten(-1, self.unflatten)
        return full

    def view(self, full: Tensor) -> Tensor:
        return self._full4(full)[self.index] if self.index else self._full4(full)

    def put(self, full: Tensor, new: Tensor) -> Tensor:
        if not self.index:
            return new.reshape(full.shape)
        out = self._full4(full).clone()
        out[self.index] = new
        return out.reshape(full.shape)


def _all_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Every module, including a bridge's wrapped HF model (kept outside the module tree)."""
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield module
        stack.extend(module.children())
        original = module.__dict__.get("original_model")
        if isinstance(original, nn.Module):
            stack.append(original)


def count_hooks(model: nn.Module | HookedModel) -> int:
    """Number of hooks added to a model: torch hooks on it and all its submodules (0 on a clean
    model, before and after any pass, whether or not the pass raised).

    Hooks the libraries underneath install for good are not counted: a TransformerLens
    bridge's capture hooks (``_capture_pre_ln1``, ``_capture_mlp_in``: part of how its blocks
    work, wired when the model is wrapped) and the output-capturing hooks that transformers
    installs the first time a model is asked for its attentions or hidden states (they record
    only inside transformers' own capture context).
    """
    if isinstance(model, HookedModel):
        model = model.model
    own = _bridge_own_hooks(model)
    total = 0
    for m in _all_modules(model):
        for hooks in (m._forward_hooks, m._forward_pre_hooks):
            total += sum(
                1
                for key, fn in hooks.items()
                if (id(hooks), key) not in own and not _transformers_capture(fn)
            )
        total += len(m._backward_hooks) + len(m._backward_pre_hooks)
    return total


def _transformers_capture(fn: Any) -> bool:
    """Whether a hook is one of transformers' permanent output-capturing hooks."""
    return getattr(fn, "__qualname__", "").endswith(".output_capturing_hook") and getattr(
        fn, "__module__", ""
    ).startswith("transformers.")


def _bridge_own_hooks(model: nn.Module) -> set[tuple[int, int]]:
    """(id of the hook dict, hook id) of every capture hook a bridge's blocks wired."""
    own = set()
    for m in _all_modules(model):
        for handle in m.__dict__.get("_capture_hook_handles", ()):
            hooks = handle.hooks_dict_ref()
            if hooks is not None:
                own.add((id(hooks), handle.id))
    return own


def _wire_bridge_hooks(bridge: nn.Module) -> None:
    """Wire the capture hooks each bridge block otherwise wires on its first pass, so that the
    model's hooks are the same before and after every pass (raising or not)."""
    for block in getattr(bridge, "blocks", ()):
        wire = getattr(block, "_maybe_wire_capture_hooks", None)
        if callable(wire):
            wire()


class HookedModel:
    """The hook API shared by transformer and plain-module wrappers.

    Subclasses provide :meth:`sites` and :meth:`_bind`; everything else is shared.
    """

    model: nn.Module
    _live_sites: tuple[Site, ...] = ()  # sites with a hook of this wrapper on them now

    # -- to be provided -------------------------------------------------------------------------

    def sites(self) -> list[Site]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _bind(self, site: Site) -> _Binding:  # pragma: no cover - abstract
        raise NotImplementedError

    def prepare(self, inputs: Any) -> Any:
        """The inputs as the wrapped model takes them (token ids on the model's device for
        transformers; tensors pass unchanged for plain modules)."""
        return inputs

    @contextlib.contextmanager
    def _switches(self, flags: Iterable[str]) -> Iterator[None]:
        yield

    # -- running ----------------------------------------------------------------------------------

    def __call__(self, inputs: Any, **kwargs: Any) -> Tensor:
        return self.model(self.prepare(inputs), **kwargs)

    @contextlib.contextmanager
    def narrow_logits(self, positions: Tensor | None, vocab: Tensor | None) -> Iterator[bool]:
        """While open, a forward pass computes logits only at row ``i``'s position
        ``positions[i]`` and only for the token ids in ``vocab`` (``None``: every position,
        every token; an empty ``vocab``: no logits, for runs kept for their activations).

        Yields whether the model does so: a transformer does (its forward then returns
        (batch, len(vocab)) logits); other models return their full output (``False``).
        """
        yield False

    def without_logits(self) -> contextlib.AbstractContextManager[bool]:
        """:meth:`narrow_logits` to no logits at all: for runs kept only for their
        activations (a transformer then skips its unembedding)."""
        return self.narrow_logits(None, torch.zeros(0, dtype=torch.long))

    def resolve(self, site: SiteLike) -> Site:
        """Parse a site and check the model has it.

        Raises
        ------
        UnknownSiteError
            With the closest site names of this model.
        """
        parsed = Site.parse(site)
        whole = parsed.replace(pos=None) if parsed.pos is not None else parsed
        if whole not in self._site_set():
            names = [str(s) for s in self.sites()]
            raise UnknownSiteError(
                f"This model has no site {str(parsed)!r}."
                + (
                    did_you_mean(str(whole), names)
                    or f" It has {len(names)} sites, e.g. {names[:6]}."
                )
            )
        return parsed

    def _site_set(self) -> frozenset[Site]:
        cached = getattr(self, "_site_set_cache", None)
        if cached is None:
            cached = frozenset(self.sites())
            self._site_set_cache = cached
        return cached

    def axes(self, site: SiteLike) -> tuple[str, ...]:
        """Axis names of the activation at a site, e.g. ``("batch", "pos", "d_model")``."""
        return self._bind(self.resolve(site)).axes

    # -- hooks ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _full_hooks(
        self, fns: Sequence[tuple[Site, _Binding, Callable[[Tensor], Tensor | None]]]
    ) -> Iterator[None]:
        """Register functions of the *full* hooked tensor; remove them (and switches) on exit."""
        handles: list[torch.utils.hooks.RemovableHandle] = []
        flags = frozenset().union(*(b.flags for _, b, _ in fns)) if fns else frozenset()
        outer = self._live_sites
        with self._switches(flags):
            try:
                for site, binding, fn in fns:
                    handles.append(_register(binding, site, fn))
                self._live_sites = outer + tuple(site for site, _, _ in fns)
                yield
            finally:
                self._live_sites = outer
                for handle in reversed(handles):
                    handle.remove()

    @contextlib.contextmanager
    def hooks(self, fns: Mapping[SiteLike, HookFn]) -> Iterator[HookedModel]:
        """Run hook functions at sites while the context is open.

        Parameters
        ----------
        fns : mapping from site (name or :class:`Site`) to ``fn(activation, site)``
            ``fn`` returns ``None`` to leave the activation or a tensor of the same shape to
            replace it. For head or position sites it sees (and replaces) only that slice.

        Examples
        --------
        >>> model = load_model("tiny-gpt2")
        >>> zero = lambda x, site: torch.zeros_like(x)
        >>> with model.hooks({"a0.h1": zero}):
        ...     logits = model("When Mary and John went to the store")
        """
        bound = []
        for key, fn in fns.items():
            site = self.resolve(key)
            if not callable(fn):
                raise InterpError(f"The hook for site {str(site)!r} must be callable; got {fn!r}.")
            binding = self._bind(site)
            bound.append((site, binding, _view_hook(binding, site, fn)))
        with self._full_hooks(bound):
            yield self

    @contextlib.contextmanager
    def patch(
        self,
        values: Mapping[SiteLike, Tensor] | SiteLike,
        value: Tensor | None = None,
        *,
        head: int | None = None,
        pos: int | None = None,
    ) -> Iterator[HookedModel]:
        """Replace activations with given values while the context is open.

        Either a mapping ``{site: values}`` or one site and its values; ``head`` and ``pos``
        narrow a single site to one head and/or one token position. Values broadcast to the
        activation's shape (so one vector can replace every position).

        Examples
        --------
        >>> model = load_model("tiny-gpt2")
        >>> clean = model.run_with_cache("When Mary and John went", ["a0.h1"])[1]
        >>> with model.patch("a0", clean["a0.h1"][:, 3], head=1, pos=3):
        ...     logits = model("When John and Mary went")
        """
        if not isinstance(values, Mapping):
            if value is None:
                raise InterpError("patch(site, value): the value to patch in is missing.")
            site = Site.parse(values)
            changes = {k: v for k, v in (("head", head), ("pos", pos)) if v is not None}
            values = {site.replace(**changes) if changes else site: value}
        elif value is not None or head is not None or pos is not None:
            raise InterpError("patch(mapping) takes no value, head or pos; put them in the sites.")

        def setter(new: Tensor) -> HookFn:
            return lambda x, site: new

        with self.hooks({k: setter(v) for k, v in values.items()}):
            yield self

    @contextlib.contextmanager
    def cache(self, sites: Iterable[SiteLike], *, detach: bool = True) -> Iterator[ActivationCache]:
        """Record activations at sites during the forward passes run inside the context.

        With ``detach=False`` the recorded tensors stay in the autograd graph. A site that fires
        several times keeps the latest value.
        """
        store = ActivationCache()

        def record(x: Tensor, site: Site) -> None:
            store[site] = x.detach().clone() if detach else x

        with self.hooks({s: record for s in _as_list(sites)}):
            yield store

    def run_with_cache(
        self, inputs: Any, sites: Iterable[SiteLike], **kwargs: Any
    ) -> tuple[Tensor, ActivationCache]:
        """One forward pass (no gradients); returns the output and the activations at ``sites``."""
        with torch.no_grad(), self.cache(sites) as store:
            out = self(inputs, **kwargs)
        return out, store

    @contextlib.contextmanager
    def grad_cache(self, sites: Iterable[SiteLike]) -> Iterator[ActivationCache]:
        """Record gradients at sites during any backward pass run inside the context.

        Uses backward (tensor) hooks, which fire whether the caller runs ``loss.backward()`` or
        ``torch.autograd.grad``; ``retain_grad`` is not used (the bridge ignores it on many hooks).
        Each site's gradient is that of the latest forward pass.
        """
        grads = ActivationCache()
        grads.tensors = {}  # site -> the full tensor the gradient hook sits on
        bound = []
        for key in _as_list(sites):
            site = self.resolve(key)
            binding = self._bind(site)
            bound.append((site, binding, _grad_hook(binding, site, grads)))
        with self._full_hooks(bound):
            yield grads

    def run_with_grads(
        self,
        inputs: Any,
        metric: Callable[[Tensor], Tensor],
        sites: Iterable[SiteLike],
        *,
        activations: Iterable[SiteLike] | None = None,
        **kwargs: Any,
    ) -> GradientRun:
        """Forward, then the gradient of a scalar metric at every site (one backward pass).

        Parameter ``.grad`` fields are left untouched (``torch.autograd.grad`` is used).

        Parameters
        ----------
        inputs : prompts or token tensor
        metric : callable
            Maps the model output to a scalar tensor (reduce over the batch yourself).
        sites : iterable of sites
        activations : iterable of sites, optional
            The sites whose activations are kept (default: every site of ``sites``); a copy
            of each is made, so leaving out those only needed for gradients saves that.

        Returns
        -------
        GradientRun
            ``(value, activations, gradients)``; gradients have the activations' shapes and are
            zero at sites the metric does not depend on.
        """
        sites = [self.resolve(s) for s in _as_list(sites)]
        kept = sites if activations is None else [self.resolve(s) for s in _as_list(activations)]
        with torch.enable_grad(), self.cache(kept) as acts, self.grad_cache(sites) as grads:
            value = metric(self(inputs, **kwargs))
            if not isinstance(value, Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ShapeError(
                    f"The metric must return a scalar tensor; got {shape}. Reduce over the batch "
                    "(e.g. .mean()) inside the metric."
                )
            targets = list(grads.tensors.values())
            if targets:
                torch.autograd.grad(value, targets, allow_unused=True)
        for site in sites:
            if site not in grads:  # the metric does not depend on it
                grads[site] = torch.zeros_like(self._bind(site).view(grads.tensors[site])).detach()
        del grads.tensors
        return GradientRun(value.detach().reshape(()), acts, grads)


def _as_list(sites: Iterable[SiteLike] | SiteLike) -> list[SiteLike]:
    if isinstance(sites, str | Site):
        return [sites]
    return list(sites)


def _register(
    binding: _Binding, site: Site, fn: Callable[[Tensor], Tensor | None]
) -> torch.utils.hooks.RemovableHandle:
    if binding.on_input:

        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            if not args or not isinstance(args[0], Tensor):
                raise InterpError(f"Site {str(site)!r}: the module's first input is not a tensor.")
            new = fn(args[0])
            return None if new is None else (new, *args[1:])

        return binding.module.register_forward_pre_hook(pre_hook)

    def hook(module: nn.Module, args: Any, out: Any) -> Tensor | None:
        if not isinstance(out, Tensor):
            raise InterpError(
                f"Site {str(site)!r}: the module returns {type(out).__name__}, not a tensor; "
                "hook one of its submodules instead."
            )
        return fn(out)

    return binding.module.register_forward_hook(hook)


def _view(binding: _Binding, site: Site, full: Tensor) -> Tensor:
    """The site's view of the full hooked tensor; a clear error when its head or position
    index does not fit (a position beyond the prompt: known only when the pass runs)."""
    try:
        return binding.view(full)
    except IndexError:
        shape = tuple(binding._full4(full).shape)
        what = f"position {site.pos}" if site.pos is not None else f"head {site.head}"
        raise ShapeError(
            f"Site {str(site)!r} selects {what}, which the activation of shape {shape} does not "
            "have; positions run from -length to length - 1 of the prompt as tokenized "
            "(BOS included)."
        ) from None


def _view_hook(binding: _Binding, site: Site, fn: HookFn) -> Callable[[Tensor], Tensor | None]:
    def full_fn(full: Tensor) -> Tensor | None:
        view = _view(binding, site, full)
        new = fn(view, site)
        if new is None:
            return None
        if not isinstance(new, Tensor):
            raise InterpError(
                f"The hook at {str(site)!r} returned {type(new).__name__}; return a tensor or None."
            )
        try:
            new = torch.broadcast_to(new.to(device=view.device, dtype=view.dtype), view.shape)
        except RuntimeError:
            raise ShapeError(
                f"Expected a tensor of shape {tuple(view.shape)} (axes {binding_axes(binding)}) "
                f"for site {str(site)!r}, got {tuple(new.shape)}."
            ) from None
        return binding.put(full, new)

    return full_fn


def check_context(tokens: Tensor, n_ctx: int | None, name: str) -> Tensor:
    """``tokens`` (batch, pos) if they fit in a context of ``n_ctx`` positions; else a clear
    error (a model must never see a prompt cut short without saying so)."""
    if n_ctx is not None and tokens.shape[-1] > n_ctx:
        raise ShapeError(
            f"The prompt is {tokens.shape[-1]} tokens (BOS included); {name}'s context is "
            f"{n_ctx} tokens. Shorten it."
        )
    return tokens


def binding_axes(binding: _Binding) -> str:
    return "(" + ", ".join(binding.axes) + ")"


def _grad_hook(
    binding: _Binding, site: Site, grads: ActivationCache
) -> Callable[[Tensor], Tensor | None]:
    def full_fn(full: Tensor) -> Tensor | None:
        if not torch.is_grad_enabled():
            raise InterpError(
                "Gradients were requested but the forward pass ran without autograd; "
                "do not wrap it in torch.no_grad()."
            )
        if not full.requires_grad:  # e.g. the raw input of a plain model
            full = full.detach().requires_grad_(True)
        else:
            # A fresh autograd node: where the hooked tensor is a fork of the residual stream
            # (the bridge's hook_mlp_in passes ln2 the very tensor the residual add also uses),
            # the gradient seen here must be that of this branch only, not of the shared tensor.
            full = full.view_as(full)

        def store(grad: Tensor) -> None:
            # no copy: autograd adds into a gradient in place only when nothing else holds
            # its storage (InputBuffer's can_accumulate_inplace), and this reference does
            grads[site] = binding.view(grad).detach()

        full.register_hook(store)
        grads.tensors[site] = full
        return full

    return full_fn


# -- transformers -----------------------------------------------------------------------------


class TransformerModel(HookedModel):
    """A TransformerLens 4 ``TransformerBridge`` with site-based hooks.

    Build it with :func:`interp.load_model`. The bridge stays reachable as ``.bridge``; the
    tokenizer as ``.tokenizer``; the sizes as ``.spec``.
    """

    def __init__(self, bridge: nn.Module, spec: ModelSpec) -> None:
        self.model = bridge
        self.bridge = bridge
        self.spec = spec
        bridge.eval()
        _wire_bridge_hooks(bridge)

    def __repr__(self) -> str:
        s = self.spec
        return (
            f"TransformerModel({s.name!r}: {s.architecture}, {s.n_layers} layers, "
            f"{s.n_heads} heads ({s.n_kv_heads} KV), d_model {s.d_model})"
        )

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    @property
    def causal(self) -> bool:
        """Whether each position attends only to itself and earlier ones: the spec says so and
        the bridge, read now, does too (see :func:`interp._spec.is_causal`)."""
        return self.spec.causal and is_causal(self.bridge)

    # -- tokens -----------------------------------------------------------------------------------

    def to_tokens(self, text: str | Sequence[str], *, prepend_bos: bool = True) -> Tensor:
        """Token ids, shape (batch, pos); a BOS token first unless ``prepend_bos=False``.

        Raises
        ------
        ShapeError
            When a prompt is longer than the model's context (it is never cut silently).
        """
        if isinstance(text, str):
            text = [text]
        tokens = self.bridge.to_tokens(list(text), prepend_bos=prepend_bos, truncate=False)
        return check_context(tokens, self.spec.n_ctx, self.spec.name)

    def to_str_tokens(self, tokens: Tensor | str) -> list[str]:
        """The tokens of one prompt as strings."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        return [self.tokenizer.decode([int(t)]) for t in tokens.reshape(-1)]

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (token ids given to it are moved there); for a model
        split over devices, the first's (that of the embedding)."""
        return next(self.bridge.parameters()).device

    @property
    def output_device(self) -> torch.device:
        """Where the logits come out: :attr:`device` unless the model is split over devices
        (``load_model(..., device_map=...)``), then the device of its last module (the
        unembedding). Methods keep their accumulators here."""
        placed = getattr(self.bridge.__dict__.get("original_model"), "hf_device_map", None)
        if not placed:
            return self.device
        last = list(placed.values())[-1]
        return torch.device(f"cuda:{last}" if isinstance(last, int) else last)

    def prepare(self, inputs: Any) -> Any:
        """Token ids of shape (batch, pos) on the model's device, from a prompt, a list of
        prompts or token ids (one prompt's ids get a batch axis)."""
        if isinstance(inputs, str) or (
            isinstance(inputs, Sequence) and inputs and isinstance(inputs[0], str)
        ):
            return self.to_tokens(inputs)
        if isinstance(inputs, Tensor):
            if inputs.dtype not in (torch.int64, torch.int32):
                raise ShapeError(f"Token ids must be an integer tensor; got {inputs.dtype}.")
            if inputs.ndim == 1:
                inputs = inputs[None]
            if inputs.ndim != 2:
                raise ShapeError(
                    f"Expected token ids of shape (batch, pos), got {tuple(inputs.shape)}."
                )
            check_context(inputs, self.spec.n_ctx, self.spec.name)
            vocab = self.spec.d_vocab
            # one check per call (not per token), so that a bad id is named instead of an
            # index error deep inside the embedding
            if (
                vocab is not None
                and inputs.numel()
                and bool(((inputs < 0) | (inputs >= vocab)).any())
            ):
                bad = inputs[(inputs < 0) | (inputs >= vocab)]
                raise ShapeError(
                    f"Token ids must lie in 0..{vocab - 1} ({self.spec.name}'s vocabulary); "
                    f"got {bad[0].item()}" + (f" and {len(bad) - 1} more." if len(bad) > 1 else ".")
                )
            return inputs.to(self.device)
        raise InterpError(
            f"Model inputs must be a prompt, a list of prompts or token ids; got {type(inputs).__name__}."
        )

    @torch.no_grad()
    def top_predictions(self, prompt: str, k: int = 5) -> list[tuple[str, float, float]]:
        """The ``k`` most likely next tokens after ``prompt``: (token, logit, probability)."""
        vocab = self.spec.d_vocab or self.bridge.cfg.d_vocab
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
            raise InterpError(f"k must be an int in 1..{vocab} (the vocabulary); got {k!r}.")
        if not isinstance(prompt, str):
            raise InterpError(
                f"top_predictions takes one prompt (a str); got {type(prompt).__name__}."
            )
        logits = self(prompt)[0, -1].float()
        probs = logits.softmax(-1)
        top = logits.topk(k)
        return [
            (self.tokenizer.decode([int(i)]), float(v), float(probs[i]))
            for v, i in zip(top.values, top.indices, strict=True)
        ]

    # -- restarting a forward pass at a block (the engine is in _restart) -----------------------

    def block_inputs(self, inputs: Any, *, keep_kv: bool = False) -> tuple[Tensor, BlockInputs]:
        """Run the model once and keep what each block received.

        Returns the logits and a :class:`BlockInputs` from which :meth:`forward_from` restarts
        the pass at any block, so work below a patched layer is not redone. With ``keep_kv``
        every layer's attention keys and values are kept too, so that a restarted pass can
        also skip the positions before a given one (``forward_from(..., start=)``).
        """
        return _restart.block_inputs(self.bridge, self.prepare(inputs), keep_kv=keep_kv)

    def forward_from(
        self,
        layer: int,
        resid: Tensor,
        inputs: BlockInputs,
        *,
        positions: Tensor | None = None,
        start: int = 0,
        stop: int | None = None,
        vocab: Tensor | None = None,
        attn_out: Tensor | None = None,
    ) -> Tensor:
        """Run blocks ``layer..`` on a residual, then the final norm and unembedding.

        Parameters
        ----------
        layer : int
            The block to start at.
        resid : Tensor of shape (copies * batch, pos - start, d_model)
            Residual entering that block; any number of copies of the recorded batch, stacked
            copy after copy.
        inputs : BlockInputs
            From :meth:`block_inputs` on the batch.
        positions : Tensor of shape (copies * batch,), optional
            Unembed only these (absolute) positions, one per row: the metric rarely needs the
            rest. Each must be ``>= start``. The last block (when it is not the first one run and
            no hook of this model is on it) then computes its MLP at these positions only.
        start : int
            Compute only positions ``start..``: the earlier ones are those of the recorded run
            (a causal model cannot change them), and their keys and values are read from it.
            Needs ``block_inputs(..., keep_kv=True)``.
        stop : int, optional
            Run blocks ``layer..stop-1`` only and return the residual entering block ``stop``
            (no unembedding; ``positions`` is ignored).
        vocab : Tensor, optional
            Unembed only these token ids: the last axis of the logits holds them, in this order.
        attn_out : Tensor of shape (copies * batch, pos - start, d_model), optional
            What the attention of block ``layer`` outputs, computed by the caller (e.g. with
            :meth:`attention_output` from patched head outputs): that attention is not run, and
            hooks inside it do not fire.

        Returns
        -------
        Tensor of shape (copies * batch, pos - start, d_vocab), or (copies * batch, d_vocab);
        with ``stop``, the residual (copies * batch, pos - start, d_model).
        """
        if start and not self.causal:
            raise InterpError(
                "forward_from(start=...) reuses the positions before `start` from the recorded "
                "run, which only a causal model leaves unchanged; this model's attention is "
                "bidirectional. Restart with start=0."
            )
        return _restart.forward_from(
            self.bridge,
            layer,
            resid,
            inputs,
            positions=positions,
            start=start,
            stop=stop,
            vocab=vocab,
            attn_out=attn_out,
            hooked_layers=frozenset(site.layer for site in self._live_sites),
        )

    def attention_output(self, layer: int, z: Tensor) -> Tensor:
        """The output of block ``layer``'s attention for given head outputs ``z`` (batch, pos,
        head, d_head), as site ``a{layer}.z`` holds them: its output projection."""
        return _restart.attention_output(self.bridge, layer, z)

    @contextlib.contextmanager
    def narrow_logits(self, positions: Tensor | None, vocab: Tensor | None) -> Iterator[bool]:
        """While open, a forward pass computes logits only at row ``i``'s position
        ``positions[i]`` and only for the token ids in ``vocab``, and returns them as
        (batch, len(vocab)) (``None``: every position, or every token; an empty ``vocab``: no
        logits, for runs kept for their activations). The numbers are the full logits' at those
        places; the unembedding of every position (a sixth of SmolLM2's forward, a third of
        GPT-2 small's at 16 tokens) is not computed. Yields ``True``.

        Examples
        --------
        >>> model = load_model("tiny-gpt2")
        >>> tokens = model.to_tokens(["When Mary and John went", "Then Tom and Ann met"])
        >>> with model.narrow_logits(torch.tensor([4, 4]), torch.tensor([7, 11])) as narrowed:
        ...     tuple(model(tokens).shape)
        (2, 2)
        """
        live = lambda: Site("logits") in self._live_sites  # noqa: E731 - read at call time
        with _restart.narrow_logits(self.bridge, positions, vocab, live):
            yield True

    def unembed(self, x: Tensor, vocab: Tensor | None = None) -> Tensor:
        """Logits of a normalised final residual, for every token or only the ids in ``vocab``
        (the same numbers, without computing the others)."""
        return _restart.unembed(self.bridge, x, vocab)

    # -- sites ------------------------------------------------------------------------------------

    def sites(
        self, kind: str | None = None, *, heads: bool = True, ports: bool = True
    ) -> list[Site]:
        """All sites of the model in forward order (optionally one kind, without per-head sites)."""
        out = [Site("input")]
        for layer in range(self.spec.n_layers):
            out += [Site("resid", layer, "pre")]
            out += [
                Site("attn", layer, f)
                for f in ("out", "result", "z", "q", "k", "v", "pattern", "scores")
            ]
            if ports:
                out += [Site("attn", layer, port=p) for p in ("q", "k", "v")]
            if heads:
                for h in range(self.spec.n_heads):
                    out += [
                        Site("attn", layer, f, head=h)
                        for f in ("out", "z", "q", "k", "v", "pattern", "scores")
                    ]
                    if ports:
                        out += [Site("attn", layer, head=h, port=p) for p in ("q", "k", "v")]
            out += [Site("resid", layer, "mid")]
            out += [Site("mlp", layer, f) for f in ("in", "pre", "post", "out")]
            out += [Site("resid", layer, "post")]
        out.append(Site("logits"))
        if kind is not None:
            out = [s for s in out if s.kind == kind]
        return out

    def _hook_point(self, name: str) -> nn.Module:
        hook = self.bridge.hook_dict.get(name)
        if hook is None:
            raise UnknownSiteError(f"The bridge has no hook {name!r} for this architecture.")
        return hook

    def _bind(self, site: Site) -> _Binding:
        s, spec, L = site, self.spec, site.layer
        flags: set[str] = set()
        unflatten = None
        head_axis, pos_axis = 2, 1
        head = s.head
        if s.kind == "input":
            name, axes = "blocks.0.hook_resid_pre", ("batch", "pos", "d_model")
        elif s.kind == "logits":
            name, axes = "hook_unembed", ("batch", "pos", "d_vocab")
        elif s.kind == "resid":
            name, axes = f"blocks.{L}.hook_resid_{s.field}", ("batch", "pos", "d_model")
        elif s.kind == "mlp":
            name = {
                "out": f"blocks.{L}.hook_mlp_out",
                "in": f"blocks.{L}.hook_mlp_in",
                "pre": f"blocks.{L}.mlp.hook_pre",
                "post": f"blocks.{L}.mlp.hook_post",
            }[s.field]
            axes = ("batch", "pos", "d_mlp" if s.field in ("pre", "post") else "d_model")
            if s.field == "in":
                flags.add("use_hook_mlp_in")
        else:  # attention
            kv = s.field in ("k", "v") or s.port in ("k", "v")
            heads_axis = "kv_head" if kv else "head"
            if kv and head is not None:
                head = spec.kv_head(head)
            if s.field == "out" and s.head is None:
                name, axes = f"blocks.{L}.hook_attn_out", ("batch", "pos", "d_model")
            elif s.field in ("out", "result"):
                name, axes = f"blocks.{L}.attn.hook_result", ("batch", "pos", "head", "d_model")
                flags.add("use_attn_result")
            elif s.field == "in":
                name = f"blocks.{L}.hook_{s.port}_input"
                axes = ("batch", "pos", heads_axis, "d_model")
                flags.add("use_split_qkv_input")
            elif s.field in ("pattern", "scores"):
                hook = "hook_pattern" if s.field == "pattern" else "hook_attn_scores"
                name, axes = f"blocks.{L}.attn.{hook}", ("batch", "head", "query_pos", "key_pos")
                head_axis, pos_axis = 1, 2
            else:
                name = f"blocks.{L}.attn.hook_{s.field}"
                axes = ("batch", "pos", heads_axis, "d_head")
                unflatten = (spec.n_kv_heads if kv else spec.n_heads, spec.d_head)
        index: list[Any] = []
        if head is not None or s.pos is not None:
            index = [slice(None)] * (max(head_axis, pos_axis) + 1)
            drop = []
            if head is not None:
                index[head_axis] = head
                drop.append(head_axis)
            if s.pos is not None:
                index[pos_axis] = s.pos
                drop.append(pos_axis)
            axes = tuple(a for i, a in enumerate(axes) if i not in drop)
        return _Binding(
            module=self._hook_point(name),
            unflatten=unflatten,
            index=tuple(index),
            axes=axes,
            flags=frozenset(flags),
        )

    @contextlib.contextmanager
    def _switches(self, flags: Iterable[str]) -> Iterator[None]:
        """Turn on the bridge switches some sites need (per-head results, split q/k/v inputs,
        hook_mlp_in) and restore them afterwards: they change the computation path (and the
        logits by ~1e-7), so leaving them on would break bit-identical outputs."""
        cfg = self.bridge.cfg
        changed: list[str] = []
        try:
            for flag in sorted(flags):
                if not _forks.switch_is_on(self.bridge, flag):
                    if flag == "use_split_qkv_input" and bool(getattr(cfg, "use_attn_in", False)):
                        raise InterpError(
                            "Reader-port sites (<q>, <k>, <v>) need the bridge's split q/k/v inputs, "
                            "which cannot be on together with use_attn_in; call "
                            "model.bridge.set_use_attn_in(False) first."
                        )
                    _forks.set_switch(self.bridge, flag, True)
                    changed.append(flag)
            yield
        finally:
            for flag in reversed(changed):
                _forks.set_switch(self.bridge, flag, False)


# -- plain modules ----------------------------------------------------------------------------


class ModuleModel(HookedModel):
    """Any ``torch.nn.Module`` (an MLP, a CNN...) with sites named after its module paths.

    Examples
    --------
    >>> net = ModuleModel(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    >>> [str(s) for s in net.sites()][:3]
    ['0:in', '0', '1:in']
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InterpError(f"ModuleModel wraps a torch.nn.Module; got {type(model).__name__}.")
        self.model = model
        self._modules = dict(model.named_modules())

    def __repr__(self) -> str:
        return f"ModuleModel({type(self.model).__name__}, {len(self._modules) - 1} submodules)"

    def sites(self) -> list[Site]:
        """Input and output of every submodule, in registration order."""
        out = []
        for path in self._modules:
            if path:
                out += [Site("module", field="in", path=path), Site("module", path=path)]
        return out

    def _bind(self, site: Site) -> _Binding:
        return _Binding(
            module=self._modules[site.path], on_input=site.field == "in", axes=("batch", "...")
        )


def wrap(model: nn.Module, spec: ModelSpec | None = None) -> HookedModel:
    """Wrap a bridge as a :class:`TransformerModel` and any other module as a :class:`ModuleModel`."""
    if isinstance(model, HookedModel):
        return model
    if hasattr(model, "hook_dict") and hasattr(model, "cfg") and hasattr(model, "to_tokens"):
        return TransformerModel(model, spec or spec_from_bridge(model, name="bridge"))
    return ModuleModel(model)
