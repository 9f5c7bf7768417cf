"""Bad inputs to the model layer: model names and keywords, GGUF files, token ids, prompts, site
strings. Each gives a clear InterpError (or a correct result), never a raw PyTorch or struct
error, and leaves the model as it was."""

from __future__ import annotations

import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import interp
from interp import InterpError, ModelLoadError, ShapeError, Site, UnknownSiteError, count_hooks
from interp._loading import ModelTokenizer, check_gguf, load_tokenizer
from tests.conftest import PROMPT

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- load_model keywords ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"n_layer": 0}, "num_hidden_layers must be an int >= 1; got 0"),
        ({"n_head": 5}, r"hidden_size \(64\) must be a multiple of num_attention_heads \(5\)"),
        ({"vocab_size": 10}, "vocab_size must be at least 331"),
        ({"n_layers": 3}, "no config field 'n_layers'.*Did you mean 'n_layer'"),
        ({"bogus": 1}, "no config field 'bogus'"),
        ({"device": "bogus"}, "device must be a torch device"),
        ({"dtype": "float32"}, "dtype must be a floating torch.dtype"),
        ({"dtype": torch.int64}, "dtype must be a floating torch.dtype"),
        ({"seed": "0"}, "seed must be an int"),
    ],
)
def test_bad_load_model_keywords_are_named(keywords: dict, message: str) -> None:
    """n_layer=0 used to fail inside ModelSpec with a bare ValueError; an unknown keyword was
    silently accepted."""
    with pytest.raises(ModelLoadError, match=message):
        interp.load_model("tiny-gpt2", **keywords)


def test_overrides_are_refused_for_the_embedded_model() -> None:
    """The embedded model's loader swallowed every keyword it did not know."""
    with pytest.raises(ModelLoadError, match="unknown keyword arguments \\['n_layer'\\]"):
        interp.load_model("smollm2-135m", n_layer=2)


def test_tiny_models_take_a_vocabulary_override() -> None:
    assert interp.load_model("tiny-gpt2", vocab_size=400).spec.d_vocab == 400


# -- GGUF files ------------------------------------------------------------------------------------


def gguf_bytes(*, tensor_bytes: int = 16, version: int = 3, kv: bool = True) -> bytes:
    """A tiny well-formed GGUF file: one string and one array entry, one F32 tensor of 4 values."""

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    meta = b""
    if kv:
        meta += string("general.architecture") + struct.pack("<I", 8) + string("llama")
        meta += string("llama.context_length") + struct.pack("<I", 4) + struct.pack("<I", 64)
        meta += string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2)
        meta += string("a") + string("b")
    head = b"GGUF" + struct.pack("<IQQ", version, 1, 3 if kv else 0) + meta
    info = string("w") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 0, 0)
    body = head + info
    body += b"\0" * (-len(body) % 32)
    return body + b"\0" * tensor_bytes


def test_a_good_gguf_header_is_read() -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.gguf"
        path.write_bytes(gguf_bytes())
        meta = check_gguf(path)
    assert meta == {"general.architecture": "llama", "llama.context_length": 64}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty"),
        (b"GGU", "magic bytes"),
        (b"PK\x03\x04" + b"\0" * 60, "does not start with the magic bytes 'GGUF'"),
        (b"GGUF" + struct.pack("<I", 7) + b"\0" * 20, "version 7"),
        (b"GGUF\x03\x00\x00\x00", "the tensor count at byte 8 runs past the end"),
        (b"GGUF" + struct.pack("<IQQ", 3, 10**12, 0), "claims 1000000000000 tensors"),
        (gguf_bytes()[:60], "runs past the end of the file"),
        (gguf_bytes(tensor_bytes=8), "tensor 'w' ends at byte"),
        (gguf_bytes().replace(b"general", b"\xffeneral"), "is not UTF-8"),
        (gguf_bytes().replace(struct.pack("<IIQ", 9, 8, 2), struct.pack("<IIQ", 9, 8, 2**40)), "claims 1099511627776 items"),
    ],
)  # fmt: skip
def test_a_broken_gguf_file_is_named_before_any_load(tmp_path, data: bytes, message: str) -> None:
    """An empty, corrupt or truncated .gguf used to end in a traceback from mmap, struct or the
    gguf reader; now load_model and load_tokenizer both refuse it from its header, at once."""
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    for load in (interp.load_model, load_tokenizer):
        start = time.perf_counter()
        with pytest.raises(ModelLoadError, match=message):
            load(str(path))
        assert time.perf_counter() - start < 1


@FAST
@given(cut=st.integers(min_value=0), flips=st.lists(st.integers(min_value=0), max_size=3))
def test_any_cut_or_garbled_gguf_header_is_read_or_refused(tmp_path_factory, cut, flips) -> None:
    data = bytearray(gguf_bytes())
    for flip in flips:
        data[flip % len(data)] ^= 0xFF
    data = bytes(data[: len(data) - cut % 8] if cut % 3 else data[: cut % len(data)])
    path = tmp_path_factory.mktemp("g") / "m.gguf"
    path.write_bytes(data)
    try:
        assert isinstance(check_gguf(path), dict)
    except ModelLoadError as err:
        assert str(path) in str(err)


# -- the tokenizer alone ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
def test_the_tokenizer_alone_tokenizes_as_the_model(name: str, request) -> None:
    model = request.getfixturevalue(name.replace("-", "_"))
    alone = load_tokenizer(name)
    assert isinstance(alone, ModelTokenizer)
    assert (alone.n_ctx, alone.n_layers, alone.n_heads) == (
        model.spec.n_ctx,
        model.spec.n_layers,
        model.spec.n_heads,
    )
    for bos in (True, False):
        assert torch.equal(
            alone.to_tokens(PROMPT, prepend_bos=bos), model.to_tokens(PROMPT, prepend_bos=bos)
        )


def test_load_tokenizer_refuses_what_load_model_refuses() -> None:
    with pytest.raises(ModelLoadError, match="no config field 'n_layers'"):
        load_tokenizer("tiny-gpt2", n_layers=3)
    with pytest.raises(ModelLoadError, match="No model file"):
        load_tokenizer("missing.gguf")
    assert load_tokenizer("tiny-gpt2", n_positions=16).n_ctx == 16


# -- prompts and token ids -------------------------------------------------------------------------


def test_a_prompt_longer_than_the_context_is_refused(tiny_gpt2) -> None:
    """The bridge cut such prompts to the context without a word."""
    long = " Mary" * 200
    with pytest.raises(ShapeError, match="201 tokens.*context is 128"):
        tiny_gpt2.to_tokens(long)
    with pytest.raises(ShapeError, match="201 tokens.*context is 128"):
        tiny_gpt2(long)
    with pytest.raises(ShapeError, match="context is 128"):
        tiny_gpt2(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ShapeError, match="context is 128"):
        load_tokenizer("tiny-gpt2").to_tokens(long)


@pytest.mark.parametrize("bad", [10**6, 331, -1])
def test_a_token_id_outside_the_vocabulary_is_named(tiny_gpt2, bad: int) -> None:
    """Token id 10**6 used to end in 'IndexError: index out of range in self'."""
    tokens = tiny_gpt2.to_tokens(PROMPT)
    tokens[0, 3] = bad
    with pytest.raises(ShapeError, match=f"Token ids must lie in 0..330.*got {bad}"):
        tiny_gpt2(tokens)
    assert count_hooks(tiny_gpt2) == 0


@pytest.mark.parametrize("k", [-1, 0, 332, 2.5, True])
def test_top_predictions_checks_k(tiny_gpt2, k) -> None:
    """k=-1 used to end in 'RuntimeError: selected index k out of range'."""
    with pytest.raises(InterpError, match="k must be an int in 1..331"):
        tiny_gpt2.top_predictions(PROMPT, k=k)
    assert len(tiny_gpt2.top_predictions(PROMPT, k=331)) == 331


# -- site strings ----------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=24) | st.from_regex(r"[aimr]?[0-9]{0,3}(\.h[0-9]{1,3})?[.<@a-z0-9>-]{0,8}"))
def test_any_site_string_parses_exactly_or_is_refused_by_name(name: str) -> None:
    try:
        site = Site.parse(name)
    except UnknownSiteError as err:
        assert str(err)
        return
    assert Site.parse(str(site)) == site


@FAST
@given(layer=st.integers(-3, 5), head=st.integers(-2, 6), pos=st.integers(-40, 40))
def test_any_head_site_on_a_model_works_or_is_refused_by_name(tiny_gpt2, layer, head, pos) -> None:
    name = f"a{layer}.h{head}@{pos}"
    try:
        _, cache = tiny_gpt2.run_with_cache(PROMPT, [name])
    except (UnknownSiteError, ShapeError) as err:
        assert str(err)
    else:
        full = tiny_gpt2.run_with_cache(PROMPT, [f"a{layer}.h{head}"])[1][f"a{layer}.h{head}"]
        assert torch.equal(cache[name], full[:, pos])
    assert count_hooks(tiny_gpt2) == 0
