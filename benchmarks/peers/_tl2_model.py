"""A TransformerLens 2.x HookedTransformer of the GPT-2 checkpoint in a local folder, offline.

``from_pretrained("gpt2", hf_model=...)`` still asks the Hub for GPT-2's config, so the config
is built here from the checkpoint's own, and the weights go through TransformerLens' GPT-2
conversion with no processing (no LayerNorm folding, no centring): logits equal the HF
model's.
"""

from __future__ import annotations

import torch


def load_tl2(model_dir: str):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32)
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer,
        d_model=c.n_embd,
        n_heads=c.n_head,
        d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd,
        d_vocab=c.vocab_size,
        n_ctx=c.n_positions,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=c.layer_norm_epsilon,
        original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(
        convert_gpt2_weights(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
