"""Rules, composites and their registry: the machinery shared by every LRP-style rule.

A :class:`Rule` is one backward-pass rewrite that keeps every forward value; it knows where it
attaches in a model and registers its hooks through a :class:`RuleHandles`. A
:class:`Composite` is a named set of rules for one kind of model: ``"transformer"`` (a
:class:`~interp.TransformerModel`, used by :func:`~interp.gradient_rules`) or ``"module"`` (a
plain ``torch.nn.Module``, used by :func:`~interp.lrp_rules`). Both live in one registry
(:func:`register_rule`, :func:`register_composite`) that the public views
:data:`~interp.RULE_SETS` and :data:`~interp.COMPOSITES` read, so adding a rule and a composite
is one decorated class and one call, in one file (zennit's Rule/Composite split).

Every rewrite here is a *detach trick*: ``keep_forward(value, surrogate)`` has ``value``'s
forward value, bit for bit, and ``surrogate``'s derivative, in reverse and forward mode alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from ._errors import InterpError, did_you_mean

__all__ = [
    "COMPOSITES",
    "RULE_SETS",
    "Composite",
    "LayerRule",
    "Rule",
    "RuleHandles",
    "register_composite",
    "register_rule",
]

Kind = Literal["transformer", "module"]
_KIND_NAMES = {"transformer": "transformer models", "module": "plain torch modules"}
STABILIZER = 1e-6


# -- the tensor rewrites ---------------------------------------------------------------------------


def stabilize(x: Tensor, eps: float = STABILIZER) -> Tensor:
    """``x`` pushed away from zero by ``eps`` in its own direction (zeros go to +eps)."""
    return x + ((x == 0).to(x.dtype) + torch.sign(x)) * eps


def keep_forward(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward pass (bit for bit), the derivative of ``surrogate`` backward.

    ``surrogate - surrogate.detach()`` is exactly zero with the surrogate's gradient, so the sum
    neither rounds the forward value nor lets its own graph through.
    """
    return value.detach() + (surrogate - surrogate.detach())


def scaled_gradient(x: Tensor, factor: float) -> Tensor:
    """Forward ``x``; backward multiplies the gradient by ``factor``."""
    return keep_forward(x, x * factor)


def gain(x: Tensor, y: Tensor, eps: float) -> Tensor:
    """``y = f(x)`` whose derivative is the gain ``f(x)/x`` (the Identity rule, frozen gains).

    ``eps`` keeps ``x = 0`` finite (see :func:`stabilize`); its size is the caller's choice.
    """
    return keep_forward(y, x * (y / stabilize(x, eps)).detach())


def epsilon_rule(z: Tensor, eps: float) -> Tensor:
    """The LRP epsilon rule at a linear layer's output ``z``: the backward pass multiplies the
    output gradient by ``z / (z + eps sign z)``, so the layer's inputs receive
    ``R_i = x_i w_ij R_j / (z_j + eps sign z_j)``."""
    return keep_forward(z, z * (z / stabilize(z, eps)).detach())


def norm_rule(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """A LayerNorm / RMSNorm output ``y`` whose scale is a constant (the LN rule).

    RMSNorm (Hugging Face's, with ``variance_epsilon``, or ``nn.RMSNorm``) only rescales;
    LayerNorm centres first. The normalised axes are ``normalized_shape``'s, else the last.
    """
    shape = getattr(module, "normalized_shape", None)
    dims = tuple(range(-len(shape), 0)) if shape else (-1,)
    if hasattr(module, "variance_epsilon") or isinstance(module, nn.RMSNorm):
        centred = x
        eps = getattr(module, "variance_epsilon", None) or module.eps
        eps = torch.finfo(x.dtype).eps if eps is None else eps  # nn.RMSNorm's default
    else:
        centred = x - x.mean(dims, keepdim=True)
        eps = module.eps
    out = centred * torch.rsqrt(centred.pow(2).mean(dims, keepdim=True) + eps).detach()
    if getattr(module, "weight", None) is not None:
        out = out * module.weight
    if getattr(module, "bias", None) is not None:
        out = out + module.bias
    return keep_forward(y, out)


def norm_hook(module: nn.Module, args: tuple[Any, ...], y: Tensor) -> Tensor:
    """:func:`norm_rule` as a torch forward hook."""
    return norm_rule(module, args[0], y)


# -- the handle that undoes everything -------------------------------------------------------------


def _remove_lens_hook(point: nn.Module, handle: Any) -> None:
    handle.hook.remove()
    # TransformerLens keeps its own list of a hook point's forward hooks next to torch's
    if handle in point.fwd_hooks:
        point.fwd_hooks.remove(handle)


class RuleHandles(contextlib.ExitStack):
    """Every hook (and temporary state) that rules registered, undone together.

    An :class:`contextlib.ExitStack`: leaving it, or :meth:`remove`, removes everything in
    reverse order, also when an exception is raised halfway through registration or inside the
    block. Rules call :meth:`module_hook` and :meth:`hook_point`; anything else that must be
    undone goes through the stack's own ``callback`` / ``enter_context``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(3, 3))
    >>> with RuleHandles() as handles:
    ...     handles.module_hook(net[0], lambda module, args, out: out * 1)
    ...     count_hooks(net)
    1
    >>> count_hooks(net)
    0
    """

    def module_hook(
        self,
        module: nn.Module,
        hook: Callable[..., Any],
        *,
        pre: bool = False,
        prepend: bool = False,
        always_call: bool = False,
    ) -> None:
        """Register a torch forward hook (``pre=True``: a forward pre-hook) on ``module``."""
        if pre:
            handle = module.register_forward_pre_hook(hook, prepend=prepend)
        else:
            handle = module.register_forward_hook(hook, prepend=prepend, always_call=always_call)
        self.callback(handle.remove)

    def hook_point(
        self, model: Any, name: str, fn: Callable[[Tensor], Tensor | None], *, prepend: bool = False
    ) -> None:
        """Rewrite the tensor at a bridge hook point (``fn(x) -> new x or None``).

        Registered the TransformerLens way (``add_hook``): the bridge's norm components only
        keep the graph of an edited scale for hooks listed in the hook point's ``fwd_hooks``.
        """
        point = model.bridge.hook_dict.get(name)
        if point is None:
            raise InterpError(
                f"This architecture ({model.spec.architecture}) has no hook {name!r} for the "
                "rule; the rule does not apply to it."
            )
        handle = point.add_hook(lambda x, hook: fn(x), dir="fwd", prepend=prepend)
        self.callback(_remove_lens_hook, point, handle)

    def remove(self) -> None:
        """Remove everything registered so far (the same as leaving the ``with`` block)."""
        self.close()


def blocks(model: Any, *names: str) -> list[str]:
    """The hook names ``blocks.{layer}.{name}`` of every block, for each of ``names``."""
    return [f"blocks.{layer}.{name}" for layer in range(model.spec.n_layers) for name in names]


# -- rules and composites --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    """One backward-pass rewrite that keeps every forward value (base class).

    A rule is a frozen dataclass: its fields are its options (``epsilon``, ...), which
    :meth:`Composite.with_options` can change. Subclasses set the class attributes and
    implement :meth:`register`; decorate them with :func:`register_rule` so that composites and
    :func:`~interp.gradient_rules` can name them.

    Attributes
    ----------
    name : str
        The registry key, e.g. ``"ln"``.
    kind : {"transformer", "module"}
        The models it attaches to: a :class:`~interp.TransformerModel` or a plain module.
    claims : frozenset of str
        The parts of the model whose backward pass it defines; two rules of one composite
        may not claim the same part (the AH rule and AttnLRP both claim ``"attention"``).

    Examples
    --------
    CP-LRP by another route: attention scores as constants.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class ConstantScores(Rule):
    ...     name = "constant-scores"
    ...     kind = "transformer"
    ...     claims = frozenset({"attention"})
    ...
    ...     def register(self, model, handles):
    ...         for layer in range(model.spec.n_layers):
    ...             name = f"blocks.{layer}.attn.hook_attn_scores"
    ...             handles.hook_point(model, name, torch.Tensor.detach)
    >>> model = load_model("tiny-gpt2")
    >>> with gradient_rules(model, ("ln", "identity", ConstantScores())):
    ...     run = model.run_with_grads(PROMPT, lambda lg: lg[0, -1, 5], ["a1.q", "a1.v"])
    >>> bool(run.gradients["a1.q"].abs().max() == 0)  # relevance flows through the values
    True
    """

    name: ClassVar[str] = ""
    kind: ClassVar[Kind] = "transformer"
    claims: ClassVar[frozenset[str]] = frozenset()

    def register(self, model: Any, handles: RuleHandles) -> None:
        """Add this rule's hooks to ``model``, each through ``handles``."""
        raise NotImplementedError(f"{type(self).__name__} must implement register().")


WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass(frozen=True)
class LayerRule(Rule):
    """A rule for plain modules: the same forward hook on each layer it selects.

    Parameters
    ----------
    layers : tuple of module types
        The layer types it rewrites.
    where : {"all", "first", "rest"}
        Among those, all, only the model's first Linear/Conv layer (in module order), or all but
        that one (LRP composites treat the input layer apart).
    """

    kind = "module"
    layers: tuple[type[nn.Module], ...] = WEIGHTED
    where: Literal["all", "first", "rest"] = "all"

    def selected(self, model: nn.Module) -> Iterator[nn.Module]:
        """The layers of ``model`` this rule rewrites."""
        first = next((m for m in model.modules() if isinstance(m, WEIGHTED)), None)
        for module in model.modules():
            if isinstance(module, self.layers) and (
                self.where == "all" or (module is first) == (self.where == "first")
            ):
                yield module

    def register(self, model: nn.Module, handles: RuleHandles) -> None:
        for module in self.selected(model):
            handles.module_hook(module, self.hook)

    def hook(self, module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        """The rewrite of one selected layer's output (a torch forward hook)."""
        raise NotImplementedError(f"{type(self).__name__} must implement hook().")


_RULES: dict[tuple[str, str], type[Rule]] = {}
_COMPOSITES: dict[str, Composite] = {}


def register_rule(cls: type[Rule] | None = None, *, replace: bool = False) -> Any:
    """Class decorator: make a :class:`Rule` known by its ``name`` (per model kind).

    Parameters
    ----------
    cls : type
        A subclass of :class:`Rule` with ``name`` and ``kind`` set.
    replace : bool
        Allow replacing a rule of the same name and kind (e.g. when a notebook cell reruns).

    Raises
    ------
    InterpError
        If the class is no Rule, has no name or kind, or the name is taken.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> @register_rule(replace=True)
    ... @dataclass(frozen=True)
    ... class Nothing(Rule):
    ...     '''Leaves the backward pass alone.'''
    ...     name = "nothing"
    ...     kind = "module"
    ...
    ...     def register(self, model, handles):
    ...         pass
    """

    def decorate(rule: type[Rule]) -> type[Rule]:
        if not (isinstance(rule, type) and issubclass(rule, Rule)):
            raise InterpError(f"register_rule takes a subclass of Rule; got {rule!r}.")
        if not rule.name or rule.kind not in _KIND_NAMES:
            raise InterpError(
                f"Rule {rule.__name__} needs a class attribute name (a non-empty string) and "
                f"kind (one of {', '.join(map(repr, _KIND_NAMES))}); got name={rule.name!r}, "
                f"kind={rule.kind!r}."
            )
        key = (rule.kind, rule.name)
        if key in _RULES and not replace:
            raise InterpError(
                f"A rule {rule.name!r} for {_KIND_NAMES[rule.kind]} is already registered "
                f"({_RULES[key].__name__}); choose another name or pass replace=True."
            )
        _RULES[key] = rule
        return rule

    return decorate if cls is None else decorate(cls)


def rule_names(kind: Kind) -> list[str]:
    """Names of the registered rules for one kind of model."""
    return [name for k, name in _RULES if k == kind]


def _rule(spec: str | Rule, kind: Kind) -> Rule:
    if isinstance(spec, Rule):
        if spec.kind != kind:
            raise InterpError(
                f"Rule {spec.name!r} is for {_KIND_NAMES[spec.kind]}, not {_KIND_NAMES[kind]}."
            )
        return spec
    if not isinstance(spec, str):
        raise InterpError(f"A rule is a name or a Rule; got {type(spec).__name__}.")
    cls = _RULES.get((kind, spec))
    if cls is None:
        raise InterpError(
            f"Unknown rule {spec!r} for {_KIND_NAMES[kind]}; known: "
            f"{', '.join(rule_names(kind))}." + did_you_mean(spec, rule_names(kind))
        )
    return cls()


@dataclasses.dataclass(frozen=True)
class Composite:
    """A named set of rules for one kind of model, registered together.

    Parameters
    ----------
    name : str
    rules : sequence of Rule or str
        Rule objects, or names of registered rules of ``kind`` (built with their defaults).
        They register in this order.
    description : str
        One line: what the set does and where it comes from.
    kind : {"transformer", "module"}

    Raises
    ------
    InterpError
        On an unknown rule, a rule of the other kind, or two rules claiming one part.

    Examples
    --------
    >>> relp = Composite("my-relp", ("ln", "identity", "half"), description="RelP's default")
    >>> model = load_model("tiny-gpt2")
    >>> with relp.context(model):
    ...     run = model.run_with_grads(PROMPT, lambda lg: lg[0, -1, 5], ["r1.pre"])
    """

    name: str
    rules: tuple[Rule, ...]
    description: str = ""
    kind: Kind = "transformer"

    def __post_init__(self) -> None:
        if self.kind not in _KIND_NAMES:
            raise InterpError(
                f"A composite's kind is one of {', '.join(map(repr, _KIND_NAMES))}; "
                f"got {self.kind!r}."
            )
        specs = [self.rules] if isinstance(self.rules, str | Rule) else list(self.rules)
        rules = tuple(_rule(spec, self.kind) for spec in specs)
        object.__setattr__(self, "rules", rules)
        owner: dict[str, Rule] = {}
        for rule in rules:
            for part in sorted(rule.claims):
                if part in owner:
                    raise InterpError(
                        f"The rules {owner[part].name!r} and {rule.name!r} both define "
                        f"{part}; choose one."
                    )
                owner[part] = rule

    def __repr__(self) -> str:
        names = ", ".join(rule.name for rule in self.rules)
        return f"Composite({self.name!r}: {names}; {self.description})"

    def with_options(self, **options: Any) -> Composite:
        """The same composite with rule options changed (each rule that has the field).

        Examples
        --------
        >>> RULE_SETS["relp-eps"].with_options(epsilon=0.1).rules[-1].epsilon
        0.1
        """
        if not options:
            return self
        fields = {
            f.name
            for rule in self.rules
            if dataclasses.is_dataclass(rule)
            for f in dataclasses.fields(rule)
        }
        unknown = sorted(set(options) - fields)
        if unknown:
            raise InterpError(
                f"The rules of {self.name!r} have no option {', '.join(map(repr, unknown))}; "
                f"their options: {', '.join(sorted(fields)) or 'none'}."
                + did_you_mean(unknown[0], fields)
            )
        rules = tuple(
            dataclasses.replace(rule, **{k: v for k, v in options.items() if hasattr(rule, k)})
            if dataclasses.is_dataclass(rule)
            else rule
            for rule in self.rules
        )
        return dataclasses.replace(self, rules=rules)

    def register(self, model: Any) -> RuleHandles:
        """Register every rule on ``model`` now; the returned handles undo it all.

        If a rule fails halfway, what was registered is removed before the error propagates.
        """
        with RuleHandles() as handles:
            for rule in self.rules:
                rule.register(model, handles)
            return handles.pop_all()

    @contextlib.contextmanager
    def context(self, model: Any) -> Iterator[Any]:
        """The rules installed on ``model`` while the context is open; yields ``model``."""
        with self.register(model):
            yield model


def register_composite(
    name: str,
    rules: Sequence[str | Rule],
    *,
    description: str,
    kind: Kind = "transformer",
    replace: bool = False,
) -> Composite:
    """Register a named set of rules; :data:`~interp.RULE_SETS` (transformers) or
    :data:`~interp.COMPOSITES` (plain modules) lists it from then on.

    Parameters
    ----------
    name : str
    rules : sequence of str or Rule
        Registered rule names of ``kind`` or Rule objects, in registration order.
    description : str
        One line, shown wherever the set is listed.
    kind : {"transformer", "module"}
    replace : bool
        Allow replacing a composite of the same name.

    Returns
    -------
    Composite

    Examples
    --------
    z+ on every layer, the first too (for non-negative inputs such as pixel intensities):

    >>> _ = register_composite(
    ...     "zplus-all", ("zplus", "pass-through"), kind="module", replace=True,
    ...     description="z+ on every Linear/Conv layer, the first too (inputs >= 0)")
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> relevance = lrp(net, torch.rand(2, 4), target=0, composite="zplus-all")
    """
    if not isinstance(name, str) or not name:
        raise InterpError(f"A composite's name is a non-empty string; got {name!r}.")
    if name in _COMPOSITES and not replace:
        raise InterpError(
            f"A composite {name!r} is already registered ({_COMPOSITES[name]!r}); choose "
            "another name or pass replace=True."
        )
    composite = Composite(name, tuple(rules), description=description, kind=kind)
    _COMPOSITES[name] = composite
    return composite


class CompositeRegistry(Mapping[str, Composite]):
    """The registered composites for one kind of model, by name (a live, read-only view).

    Iterating gives the names in registration order; values are :class:`Composite` objects
    with a one-line ``description``.

    Examples
    --------
    >>> "relp" in RULE_SETS
    True
    >>> RULE_SETS["relp"].description
    'LN, Identity and Half rules: the official RelP default'
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def _names(self) -> list[str]:
        return [name for name, c in _COMPOSITES.items() if c.kind == self.kind]

    def __getitem__(self, name: str) -> Composite:
        composite = _COMPOSITES.get(name)
        if composite is None or composite.kind != self.kind:
            raise KeyError(name)
        return composite

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"CompositeRegistry({self.kind!r}: {', '.join(self._names())})"

    def descriptions(self) -> dict[str, str]:
        """``{name: one-line description}`` of every composite, in registration order.

        Examples
        --------
        >>> list(RULE_SETS.descriptions())[:3]
        ['relp', 'relp-ah', 'attnlrp']
        """
        return {name: _COMPOSITES[name].description for name in self._names()}

    def resolve(self, rules: str | Composite | Iterable[str | Rule], **options: Any) -> Composite:
        """A composite from a registered name, a :class:`Composite`, or a sequence of rules
        (names or objects), with ``options`` applied.

        Raises
        ------
        InterpError
            Naming the registered sets (and close matches) for an unknown name, or saying
            which entry point takes a composite of the other kind.
        """
        if isinstance(rules, str):
            composite = _COMPOSITES.get(rules)
            if composite is None or composite.kind != self.kind:
                other = (
                    f" {rules!r} is a composite for {_KIND_NAMES[composite.kind]}."
                    if composite is not None
                    else did_you_mean(rules, self._names())
                )
                noun = "rule set" if self.kind == "transformer" else "LRP composite"
                raise InterpError(
                    f"Unknown {noun} {rules!r} for {_KIND_NAMES[self.kind]}; named sets: "
                    f"{', '.join(self._names())}." + other
                )
        elif isinstance(rules, Composite):
            composite = rules
            if composite.kind != self.kind:
                raise InterpError(
                    f"Composite {composite.name!r} is for {_KIND_NAMES[composite.kind]}, "
                    f"not {_KIND_NAMES[self.kind]}."
                )
        else:
            specs = [rules] if isinstance(rules, Rule) else list(rules)
            label = "+".join(s if isinstance(s, str) else getattr(s, "name", "?") for s in specs)
            composite = Composite(label, tuple(specs), kind=self.kind)
        return composite.with_options(**options)


RULE_SETS = CompositeRegistry("transformer")
COMPOSITES = CompositeRegistry("module")
