"""GPT-2 (GPT2LMHeadModel): LayerNorm, learned positions, Conv1D weights.

Conv1D stores weights as [in, out]; ours are [out, in] (``F.linear`` layout), so every
matrix is transposed. ``c_attn`` is already q, k, v stacked by rows after the transpose,
which is exactly the ``qkv_weight`` layout.
"""

from __future__ import annotations

from typing import Any

from telelens.core.config import HookedTransformerConfig
from telelens.core.models.adapter import (
    ArchitectureAdapter,
    Target,
    check_act,
    transpose,
    unembed_targets,
)

_LAYER_MAP = {
    # HF name after "h.{i}."      -> (our name after "blocks.{i}.", Conv1D weight?)
    "ln_1.weight": ("ln1.w", False),
    "ln_1.bias": ("ln1.b", False),
    "ln_2.weight": ("ln2.w", False),
    "ln_2.bias": ("ln2.b", False),
    "attn.c_attn.weight": ("attn.qkv_weight", True),
    "attn.c_attn.bias": ("attn.qkv_bias", False),
    "attn.c_proj.weight": ("attn.o_weight", True),
    "attn.c_proj.bias": ("attn.o_bias", False),
    "mlp.c_fc.weight": ("mlp.in_weight", True),
    "mlp.c_fc.bias": ("mlp.in_bias", False),
    "mlp.c_proj.weight": ("mlp.out_weight", True),
    "mlp.c_proj.bias": ("mlp.out_bias", False),
}


class GPT2Adapter(ArchitectureAdapter):
    prefixes = ("transformer.",)
    # Old checkpoints carry the causal-mask buffers.
    ignored = (r"(^|\.)attn\.(masked_)?bias$",)

    def make_config(self, hf: Any) -> HookedTransformerConfig:
        if getattr(hf, "scale_attn_by_inverse_layer_idx", False):
            raise ValueError("GPT-2 with scale_attn_by_inverse_layer_idx=True is not supported")
        if getattr(hf, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention is not supported")
        d_head = hf.n_embd // hf.n_head
        return HookedTransformerConfig(
            n_layers=hf.n_layer,
            d_model=hf.n_embd,
            n_ctx=hf.n_positions,
            d_head=d_head,
            n_heads=hf.n_head,
            d_mlp=hf.n_inner or 4 * hf.n_embd,
            d_vocab=hf.vocab_size,
            act_fn=check_act(hf.activation_function, "GPT2LMHeadModel"),
            normalization_type="LN",
            eps=hf.layer_norm_epsilon,
            positional_embedding_type="standard",
            attn_scale=float(d_head) ** 0.5 if getattr(hf, "scale_attn_weights", True) else 1.0,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
            initializer_range=getattr(hf, "initializer_range", 0.02),
        )

    def layer_targets(self, layer: int, rest: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        if rest not in _LAYER_MAP:
            return None
        ours, conv = _LAYER_MAP[rest]
        return [Target(f"blocks.{layer}.{ours}", transform=transpose if conv else None)]

    def global_targets(self, name: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        table = {
            "wte.weight": "embed.W_E",
            "wpe.weight": "pos_embed.W_pos",
            "ln_f.weight": "ln_final.w",
            "ln_f.bias": "ln_final.b",
        }
        if name in table:
            return [Target(table[name])]
        if name == "lm_head.weight":
            return unembed_targets(cfg)
        return None

    def hf_names(self, cfg: HookedTransformerConfig) -> list[str]:
        names = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"]
        names += ["transformer.ln_f.bias", "lm_head.weight"]
        for i in range(cfg.n_layers):
            names += [f"transformer.h.{i}.{rest}" for rest in _LAYER_MAP]
        return names
