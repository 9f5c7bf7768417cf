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


# -- TransformerLens-native models, computed from their weights ---------------------------------


def pristine_native(config, dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A fresh ``NativeModel`` with the weights ``TransformerBridge.boot_native(config)`` gives
    (the same config and seed), outside any bridge."""
    import copy

    from transformer_lens.model_bridge.sources.native import NativeModel, initialize_native_model

    config = copy.deepcopy(config)
    with torch.random.fork_rng(devices=[]):
        model = NativeModel(config)
        initialize_native_model(model, config)
    return model.to(dtype).eval()


def native_graph_forward(model, tokens, *, source=None, edges=(), probes=None):
    """Logits of a ``NativeModel`` (standard or rotary positions, any norm, any MLP, grouped
    keys and values) with every reader of the residual stream reading its own copy of it.

    Writers are named as graph nodes (``input``, ``a{L}.h{H}``, ``m{L}``), readers as
    ``(node, port)`` (``("a1.h2", "k")``, ``("m0", "")``, ``("logits", "")``). For every edge
    ``(writer, reader)`` in ``edges``, the reader's copy gets ``source[writer] - current``
    added (path patching); ``probes`` maps readers to tensors added to their copies (zeros that
    require grad give the gradient there). Returns the logits and every writer's output."""
    cfg = model.cfg
    n_heads, d_head = cfg.n_heads, cfg.d_head
    group = n_heads // (cfg.n_key_value_heads or n_heads)
    n_pos = tokens.shape[1]
    x = model.tok_embed(tokens)
    if model.pos is not None:
        x = x + model.pos(torch.arange(n_pos))
    writers = {"input": x}
    resid = x

    def read(reader, plain):
        for writer, to in edges:
            if to == reader:
                plain = plain + source[writer] - writers[writer]
        if probes is not None and reader in probes:
            plain = plain + probes[reader]
        return plain

    for layer, block in enumerate(model.layers):
        attn = block.attn
        readers = [(f"a{layer}.h{h}", port) for port in "qkv" for h in range(n_heads)]
        copies = block.ln1(torch.stack([read(r, resid) for r in readers], 2))  # (b, p, 3h, d)
        per_port = {}
        for i, (port, linear) in enumerate((("q", attn.q), ("k", attn.k), ("v", attn.v))):
            # rows of each query head; keys and values: rows of the head's group
            w = linear.weight.unflatten(0, (-1, d_head)).repeat_interleave(
                1 if port == "q" else group, 0
            )
            b = linear.bias.unflatten(0, (-1, d_head)).repeat_interleave(
                1 if port == "q" else group, 0
            )
            x = copies[:, :, i * n_heads : (i + 1) * n_heads]
            per_port[port] = torch.einsum("bphm,hem->bhpe", x, w) + b[:, None]
        q, k, v = per_port["q"], per_port["k"], per_port["v"]
        if model.rotary is not None:
            q, k = model.rotary.apply_rope(q, k)
        scores = q @ k.transpose(-1, -2) / attn.scale
        if attn.causal:
            future = torch.ones(n_pos, n_pos, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        z = scores.softmax(-1) @ v
        w_o = attn.o.weight.unflatten(1, (n_heads, d_head))  # (d_model, head, d_head)
        results = torch.einsum("bhpe,mhe->bphm", z, w_o)
        for h in range(n_heads):
            writers[f"a{layer}.h{h}"] = results[:, :, h]
        resid = resid + results.sum(2) + attn.o.bias
        mlp_out = block.mlp(block.ln2(read((f"m{layer}", ""), resid)))
        writers[f"m{layer}"] = mlp_out
        resid = resid + mlp_out
    logits = model.head(model.ln_out(read(("logits", ""), resid)))
    return logits, writers


def per_cell_patching(model, base, source, metric, module, cells, *, on_input=False):
    """Plain activation patching with torch hooks of our own: for each index in ``cells``, run
    ``base`` with that slice of ``module``'s output (or first input) replaced by the ``source``
    run's; return ``metric(logits)`` of each run."""
    recorded = []

    def record(mod, args, out=None):
        recorded.append((args[0] if on_input else out).detach().clone())

    def patcher(index):
        def patch(mod, args, out=None):
            x = (args[0] if on_input else out).clone()
            x[index] = recorded[0][index]
            return (x, *args[1:]) if on_input else x

        return patch

    values = []
    for fn, tokens in [(record, source), *((patcher(index), base) for index in cells)]:
        if on_input:
            handle = module.register_forward_pre_hook(lambda mod, args, fn=fn: fn(mod, args))
        else:
            handle = module.register_forward_hook(fn)
        try:
            with torch.no_grad():
                logits = model(tokens)
        finally:
            handle.remove()
        values.append(metric(logits))
    return values[1:]
