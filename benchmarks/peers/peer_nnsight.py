"""nnsight peer: head patching at every position, one trace per (layer, position) with one
invoke per head (the invokes of a trace ride in one batched forward pass).

Run by ``bench_peers.py`` with the ``nnsight`` environment's Python: ``peer_nnsight.py SPEC
OUT``. The model is the HF GPT-2 of the shared folder, wrapped by ``LanguageModel``; heads
are patched at the input of each block's ``attn.c_proj`` (the heads' concatenated z, which is
what TransformerLens' ``hook_z`` and ours patch).
"""

from __future__ import annotations

from importlib.metadata import version

from _peer_io import logit_diff, read_spec, timed, tokens, write


def main() -> None:
    import nnsight
    import torch
    from nnsight import LanguageModel
    from transformers import AutoTokenizer, GPT2LMHeadModel

    spec, out = read_spec()
    t = tokens(spec)
    hf = GPT2LMHeadModel.from_pretrained(spec["model_dir"], dtype=torch.float32).eval()
    hf.requires_grad_(False)
    model = LanguageModel(hf, tokenizer=AutoTokenizer.from_pretrained(spec["model_dir"]))
    with torch.no_grad():
        logits = hf(t["clean"]).logits
    rows = {}
    heads = spec["rows"].get("heads")
    if heads is not None:
        n_layers, n_heads = hf.config.n_layer, hf.config.n_head
        d_head = hf.config.n_embd // n_heads
        n_pos = t["clean"].shape[1]
        cells = heads.get("cells") or [
            [layer, p, h] for layer in range(n_layers) for p in range(n_pos) for h in range(n_heads)
        ]
        groups: dict[tuple[int, int], list[int]] = {}
        for layer, p, h in cells:
            groups.setdefault((layer, p), []).append(h)

        def run():
            with model.trace(t["clean"]):
                z = nnsight.save([])  # the container is saved, its items are plain values
                for i in range(n_layers):
                    z.append(model.transformer.h[i].attn.c_proj.input.clone())
            found = {}
            for (layer, p), hs in groups.items():
                with model.trace() as tracer:
                    got = nnsight.save([])
                    for h in hs:
                        with tracer.invoke(t["corrupt"]):
                            cols = slice(h * d_head, (h + 1) * d_head)
                            model.transformer.h[layer].attn.c_proj.input[:, p, cols] = z[layer][
                                :, p, cols
                            ]
                            got.append(logit_diff(model.lm_head.output, t["answer"], t["wrong"]))
                for h, value in zip(hs, got, strict=True):
                    found[(layer, p, h)] = float(value)
            return [found[tuple(c)] for c in cells]

        with torch.no_grad():
            values, seconds = timed(run)
        rows["heads"] = {"seconds": seconds, "values": values, "cells": heads.get("cells")}
    write(out, "nnsight", version("nnsight"), logits, rows)


if __name__ == "__main__":
    main()
