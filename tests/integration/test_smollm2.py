"""The embedded SmolLM2-135M-Instruct: loads offline, solves IOI, hooks cleanly."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import interp
from interp import count_hooks, data_path
from interp._loading import embedded_gguf
from tests.conftest import PROMPT

pytestmark = pytest.mark.integration


def test_spec(smollm2: interp.TransformerModel) -> None:
    s = smollm2.spec
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_model, s.d_head) == (30, 9, 3, 576, 64)
    assert s.d_vocab == 49152


def test_smollm2_shaped_has_its_sizes(smollm2: interp.TransformerModel) -> None:
    """The random stand-in (for machines without the embedded weights) is the same model
    shape: every size and the rotary and norm settings the bridge reads."""
    shaped = interp.load_model("smollm2-shaped")
    assert replace(shaped.spec, name="") == replace(smollm2.spec, name="")
    real, fake = smollm2.bridge.cfg, shaped.bridge.cfg
    for key in ("rotary_base", "eps", "normalization_type", "positional_embedding_type"):
        value = getattr(real, key, None)
        expected = pytest.approx(value, rel=1e-6) if isinstance(value, float) else value
        assert getattr(fake, key, None) == expected, key


def test_top_prediction_is_mary(smollm2: interp.TransformerModel) -> None:
    token, logit, prob = smollm2.top_predictions(PROMPT, k=1)[0]
    assert token == " Mary" and prob > 0.5


def test_ioi_logit_difference(smollm2: interp.TransformerModel) -> None:
    data = json.loads(data_path("ioi.json").read_text())
    pairs = [("Mary", "John"), ("Lisa", "Kevin"), ("Sarah", "Michael"), ("Amy", "Daniel")]
    prompts, io_ids, s_ids = [], [], []
    for i, template in enumerate(data["baba_templates"][:8]):
        io, s = pairs[i % len(pairs)]
        text = (
            template.replace("[PLACE]", data["places"][i % 8])
            .replace("[OBJECT]", data["objects"][i % 8])
            .replace("[A]", io)
            .replace("[B]", s)
        )
        prompts.append(text.rsplit(" ", 1)[0])  # drop the final IO name
        io_ids.append(smollm2.tokenizer(" " + io, add_special_tokens=False).input_ids[0])
        s_ids.append(smollm2.tokenizer(" " + s, add_special_tokens=False).input_ids[0])
    diffs = []
    for prompt, io, s in zip(prompts, io_ids, s_ids, strict=True):
        last = smollm2(prompt)[0, -1]
        diffs.append(float(last[io] - last[s]))
    assert sum(d > 0 for d in diffs) >= 7, diffs
    assert sum(diffs) / len(diffs) > 2.0, diffs


def test_gqa_sites(smollm2: interp.TransformerModel) -> None:
    _, c = smollm2.run_with_cache(PROMPT, ["a3.k", "a3.h4.k", "a3.h4<k>", "a3.z", "a3.h8"])
    assert c["a3.k"].shape == (1, 15, 3, 64)
    assert torch.equal(c["a3.h4.k"], c["a3.k"][:, :, 1])  # query head 4 reads KV head 1
    assert c["a3.h4<k>"].shape == (1, 15, 576)
    assert c["a3.z"].shape == (1, 15, 9, 64)


def test_hooks_leave_no_trace_on_real_model(smollm2: interp.TransformerModel) -> None:
    tokens = smollm2.to_tokens(PROMPT)
    before, hooks = smollm2(tokens), count_hooks(smollm2.model)
    io = smollm2.tokenizer(" Mary", add_special_tokens=False).input_ids[0]
    s = smollm2.tokenizer(" John", add_special_tokens=False).input_ids[0]

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (logits[:, -1, io] - logits[:, -1, s]).mean()

    run = smollm2.run_with_grads(tokens, metric, ["logits", "r10.pre", "a20.h3", "a5.h2<v>"])
    expected = torch.zeros_like(run.gradients["logits"])
    expected[:, -1, io], expected[:, -1, s] = 1.0, -1.0  # d(logit diff)/d(logits), exactly
    assert torch.equal(run.gradients["logits"], expected)
    assert run.gradients["r10.pre"].abs().sum() > 0
    with smollm2.hooks({"a20.h3": lambda x, site: 0 * x}):
        ablated = smollm2(tokens)
    assert not torch.equal(ablated, before)
    assert count_hooks(smollm2.model) == hooks
    assert torch.equal(smollm2(tokens), before)


def test_gguf_path_loads_the_same_model(smollm2: interp.TransformerModel) -> None:
    again = interp.load_model(str(embedded_gguf()))
    assert torch.equal(again(PROMPT), smollm2(PROMPT))
    assert again.model is not smollm2.model


def test_relp_rules_conserve_on_the_real_model(smollm2: interp.TransformerModel) -> None:
    from circuits import ioi_task

    task = ioi_task(smollm2, 4, seed=0, template_ids=[0])
    sites = ["r0.pre", "r15.pre", "r29.pre", "a7<q>"]
    with interp.gradient_rules(smollm2, "relp-ah"):
        run = smollm2.run_with_grads(task.corrupt, task.logit_diff, sites)
        logits = smollm2(task.corrupt)
    torch.testing.assert_close(logits, smollm2(task.corrupt), atol=5e-4, rtol=0)
    for site in sites[:3]:
        total = float((run.activations[site] * run.gradients[site]).sum())
        assert abs(total - float(run.value)) < 1e-3 * abs(float(run.value)), (site, total)
