"""Models across devices: ``load_model(name, device_map=...)`` places the Hugging Face model's
modules with accelerate before the TransformerLens bridge boots (the bridge's own device_map
support reads ``hf_device_map``), and every method runs on it with the results of the model
on one device.

On a machine without two CUDA devices a real split is impossible (the bridge refuses maps that
mix a GPU with the CPU), so a dict map over the CPU alone stands in for it: it attaches
accelerate's device-aligning hooks to every module exactly as a real split does."""

from __future__ import annotations

import pytest
import torch

import interp
from circuits import (
    activation_patching,
    edge_attribution,
    edge_patching,
    faithfulness,
    ioi_task,
    prepare_edge_model,
)
from interp import ModelLoadError


def split(devices: tuple[str, str]) -> dict[str, str]:
    """tiny-llama's modules: the embedding and block 0 on the first device, the rest on the
    second."""
    first, second = devices
    return {
        "model.embed_tokens": first,
        "model.rotary_emb": first,
        "model.layers.0": first,
        "model.layers.1": second,
        "model.norm": second,
        "lm_head": second,
    }


def close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(
        a.double().cpu(), b.double().cpu(), atol=atol, rtol=0, equal_nan=True
    )


def same_results(whole: interp.TransformerModel, placed: interp.TransformerModel, atol: float):
    task = ioi_task(whole, 4, seed=1, template_ids=[0])
    close(placed(task.clean), whole(task.clean), atol)
    # gradients (EAP-IG), patched copies (activation, edge patching), circuits (faithfulness),
    # each over prompt chunks of one prompt too
    for options in ({}, {"max_memory": "64KB"}):
        ours = edge_attribution(placed, None, task, ig_steps=3, **options)
        theirs = edge_attribution(whole, None, task, ig_steps=3)
        close(ours.edge_scores, theirs.edge_scores, atol)
        cells = activation_patching(placed, task, "heads", progress=False, **options)
        close(cells, activation_patching(whole, task, "heads", progress=False), atol)
    circuit = theirs.top(30)
    ours, theirs = faithfulness(placed, circuit, task), faithfulness(whole, circuit, task)
    assert ours["metric"] == pytest.approx(theirs["metric"], abs=atol)
    # random edge masks, patched on the prepared (ungrouped) models
    edge_whole, layout = prepare_edge_model(whole)
    edge_placed, _ = prepare_edge_model(placed)
    masks = (
        torch.rand(
            3, layout.n_readers, layout.n_writers, generator=torch.Generator().manual_seed(0)
        )
        < 0.3
    )
    close(edge_patching(edge_placed, task, masks), edge_patching(edge_whole, task, masks), atol)


def test_a_dict_map_places_every_module_with_accelerates_hooks(tiny_llama) -> None:
    from accelerate.hooks import AlignDevicesHook

    placed = interp.load_model("tiny-llama", device_map=split(("cpu", "cpu")))
    hf_model = placed.bridge.original_model
    assert hf_model.hf_device_map == split(("cpu", "cpu"))
    hooked = [
        m for m in hf_model.modules() if isinstance(getattr(m, "_hf_hook", None), AlignDevicesHook)
    ]
    assert len(hooked) > 10
    assert placed.bridge.cfg.n_devices == 1 and placed.loaded_with["device_map"] is not None
    assert placed.output_device == placed.device == torch.device("cpu")
    assert tiny_llama.output_device == tiny_llama.device
    # the ungrouped copy that edge methods run on is split alike
    assert interp.ungrouped(placed).bridge.original_model.hf_device_map == hf_model.hf_device_map
    same_results(tiny_llama, placed, atol=1e-6)


def test_auto_places_the_model_where_it_fits(tiny_gpt2) -> None:
    placed = interp.load_model("tiny-gpt2", device_map="auto")
    assert placed.bridge.original_model.hf_device_map
    task = ioi_task(tiny_gpt2, 2, seed=0)
    close(placed(task.clean), tiny_gpt2(task.clean), 1e-6)


@pytest.mark.skipif(
    torch.cuda.device_count() < 2,
    reason=f"a two-device map needs two CUDA devices; this machine has "
    f"{torch.cuda.device_count()} (the bridge refuses maps that mix a GPU with the CPU, so the "
    "CPU cannot be the second device)",
)
def test_a_model_split_over_two_gpus_gives_the_results_of_one_device(tiny_llama) -> None:
    placed = interp.load_model("tiny-llama", device_map=split(("cuda:0", "cuda:1")))
    assert placed.bridge.cfg.n_devices == 2
    assert placed.device == torch.device("cuda:0") and placed.output_device == torch.device(
        "cuda:1"
    )
    same_results(tiny_llama, placed, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device_map": "auto", "device": "cpu"}, "device and device_map are exclusive"),
        ({"device_map": "everywhere"}, "device_map must be one of 'auto'"),
        ({"device_map": {}}, "a non-empty dict"),
        ({"device_map": {"lm_head": "disk"}}, "no disk or meta offload"),
        ({"device_map": {"lm_head": "gpu0"}}, "got {'lm_head': 'gpu0'}"),
    ],
)
def test_a_bad_device_map_is_refused(options, message) -> None:
    with pytest.raises(ModelLoadError, match=message):
        interp.load_model("tiny-gpt2", **options)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_map_to_a_missing_gpu_is_one_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="Cannot place the model by device_map"):
        interp.load_model("tiny-llama", device_map=split(("cuda:0", "cuda:0")))
