"""TransformerLens 2.x peer: head patching at every position with its patching module.

Run by ``bench_peers.py`` with the ``tl2`` environment's Python: ``peer_tl2.py SPEC OUT``.
"""

from __future__ import annotations

from importlib.metadata import version

from _peer_io import logit_diff, read_spec, timed, tokens, write
from _tl2_model import load_tl2


def main() -> None:
    import pandas as pd
    import torch
    from transformer_lens import patching

    spec, out = read_spec()
    t = tokens(spec)
    model = load_tl2(spec["model_dir"])
    with torch.no_grad():
        logits = model(t["clean"])
    rows = {}

    def metric(lg):
        return logit_diff(lg, t["answer"], t["wrong"])

    heads = spec["rows"].get("heads")
    if heads is not None:
        cells = heads.get("cells")  # None: every (layer, position, head)

        def run():
            _, cache = model.run_with_cache(t["clean"])  # part of the method's cost, as ours
            if cells is None:
                return patching.get_act_patch_attn_head_out_by_pos(
                    model, t["corrupt"], cache, metric
                )
            index = pd.DataFrame(cells, columns=["layer", "pos", "head"])
            return patching.generic_activation_patch(
                model,
                t["corrupt"],
                cache,
                metric,
                patching.layer_pos_head_vector_patch_setter,
                "z",
                index_df=index,
            )

        with torch.no_grad():
            values, seconds = timed(run)
        rows["heads"] = {"seconds": seconds, "values": values.flatten().tolist(), "cells": cells}
    write(out, "TransformerLens", version("transformer-lens"), logits, rows)


if __name__ == "__main__":
    main()
