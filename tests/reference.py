"""Independent references: pristine Hugging Face models with the tiny models' weights.

The bridge replaces the submodules of the HF model it wraps, so references are built as new
HF models from the same config and seed (and checked to give the same logits)."""

from __future__ import annotations

import torch
import transformers

from interp._loading import _tiny_gpt2_config, _tiny_llama_config

BUILDERS = {
    "tiny-gpt2": (_tiny_gpt2_config, transformers.GPT2LMHeadModel),
    "tiny-llama": (_tiny_llama_config, transformers.LlamaForCausalLM),
}


def pristine_hf(name: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.nn.Module:
    make_config, cls = BUILDERS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(make_config())
    model = model.to(dtype).eval()
    for module in model.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            # HF computes RMSNorm in float32 whatever the dtype; keep the reference in float64
            module.forward = _rms_norm_in_dtype(module)
    return model


def _rms_norm_in_dtype(norm: torch.nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (
            norm.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        )

    return forward


def blocks(hf: torch.nn.Module) -> torch.nn.ModuleList:
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def module_for(hf: torch.nn.Module, site: str) -> tuple[torch.nn.Module, bool]:
    """(module, is_input) holding a site in a plain HF GPT-2 / Llama model."""
    kind, layer = site[0], int(site[1:].split(".")[0])
    block = blocks(hf)[layer]
    if site.endswith(".pre") and kind == "r":
        return block, True
    if kind == "a":
        return (block.attn if hasattr(block, "attn") else block.self_attn), False
    if kind == "m":
        return block.mlp, False
    raise ValueError(site)


def grad_at(hf: torch.nn.Module, tokens: torch.Tensor, site: str, metric) -> torch.Tensor:
    """d metric / d activation at one site, by autograd on the pristine model."""
    module, is_input = module_for(hf, site)
    captured = {}

    def leaf(x: torch.Tensor) -> torch.Tensor:
        captured["x"] = x.detach().requires_grad_(True)
        return captured["x"]

    if is_input:

        def pre(mod, args, kwargs):
            if args:
                return (leaf(args[0]), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = leaf(kwargs["hidden_states"])
            return args, kwargs

        handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(mod, args, out):
            if isinstance(out, tuple):
                return (leaf(out[0]), *out[1:])
            return leaf(out)

        handle = module.register_forward_hook(post)
    try:
        value = metric(hf(tokens).logits)
        (grad,) = torch.autograd.grad(value, [captured["x"]])
    finally:
        handle.remove()
    return grad
