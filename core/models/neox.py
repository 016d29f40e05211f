"""GPT-NeoX / Pythia (GPTNeoXForCausalLM): LayerNorm, partial rotary, parallel residual.

``query_key_value`` rows are interleaved per head, [n_heads, 3 (q/k/v), d_head]; ours
are [q heads; k heads; v heads], so rows are regrouped on load. Attention and MLP have
their own LayerNorms (``ln1``/``ln2``), also when they run in parallel.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.models.adapter import ArchitectureAdapter, Target, check_act, unembed_targets
from telelens.core.models.rope import rope_parameters, rotary_dim, scaled_rope


def regroup_qkv(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """[n_heads * 3 * d_head, ...] interleaved per head -> [3 * n_heads * d_head, ...] (all q, all k, all v)."""
    rest = t.shape[1:]
    t = t.reshape(n_heads, 3, -1, *rest)  # [head_index, qkv, d_head, ...]
    return t.transpose(0, 1).reshape(-1, *rest)  # [qkv * head_index * d_head, ...]


_LAYER_MAP = {
    "input_layernorm.weight": "ln1.w",
    "input_layernorm.bias": "ln1.b",
    "post_attention_layernorm.weight": "ln2.w",
    "post_attention_layernorm.bias": "ln2.b",
    "attention.query_key_value.weight": "attn.qkv_weight",
    "attention.query_key_value.bias": "attn.qkv_bias",
    "attention.dense.weight": "attn.o_weight",
    "attention.dense.bias": "attn.o_bias",
    "mlp.dense_h_to_4h.weight": "mlp.in_weight",
    "mlp.dense_h_to_4h.bias": "mlp.in_bias",
    "mlp.dense_4h_to_h.weight": "mlp.out_weight",
    "mlp.dense_4h_to_h.bias": "mlp.out_bias",
}


class NeoXAdapter(ArchitectureAdapter):
    prefixes = ("gpt_neox.",)
    # Old checkpoints carry the causal mask and the rotary frequencies as buffers.
    ignored = (r"(^|\.)attention\.(masked_)?bias$", r"rotary_emb\.inv_freq$")

    def make_config(self, hf: Any) -> HookedTransformerConfig:
        d_head = hf.hidden_size // hf.num_attention_heads
        bias = bool(getattr(hf, "attention_bias", True))
        rope = rope_parameters(hf)
        return HookedTransformerConfig(
            n_layers=hf.num_hidden_layers,
            d_model=hf.hidden_size,
            n_ctx=hf.max_position_embeddings,
            d_head=d_head,
            n_heads=hf.num_attention_heads,
            d_mlp=hf.intermediate_size,
            d_vocab=hf.vocab_size,
            act_fn=check_act(hf.hidden_act, "GPTNeoXForCausalLM"),
            normalization_type="LN",
            eps=hf.layer_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=rotary_dim(d_head, hf),
            rotary_base=rope["rope_theta"],
            rotary_adjacent_pairs=False,
            parallel_attn_mlp=bool(hf.use_parallel_residual),
            attn_bias=bias,
            attn_out_bias=bias,
            mlp_bias=True,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            rope_scaling=rope if rope["rope_type"] != "default" else None,
            initializer_range=getattr(hf, "initializer_range", 0.02),
        )

    def rotary_override(self, hf_config: Any) -> tuple[torch.Tensor, float] | None:
        return scaled_rope(hf_config)

    def layer_targets(self, layer: int, rest: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        if rest not in _LAYER_MAP:
            return None
        transform = partial(regroup_qkv, n_heads=cfg.n_heads) if "query_key_value" in rest else None
        return [Target(f"blocks.{layer}.{_LAYER_MAP[rest]}", transform=transform)]

    def global_targets(self, name: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        if name == "embed_in.weight":
            return [Target("embed.W_E")]
        if name == "final_layer_norm.weight":
            return [Target("ln_final.w")]
        if name == "final_layer_norm.bias":
            return [Target("ln_final.b")]
        if name in (
            "embed_out.weight",
            "lm_head.weight",
        ):  # checkpoints say embed_out; transformers 5 lm_head
            return unembed_targets(cfg)
        return None

    def hf_names(self, cfg: HookedTransformerConfig) -> list[str]:
        names = ["gpt_neox.embed_in.weight", "gpt_neox.final_layer_norm.weight"]
        names += ["gpt_neox.final_layer_norm.bias", "embed_out.weight"]
        for i in range(cfg.n_layers):
            names += [f"gpt_neox.layers.{i}.{rest}" for rest in _LAYER_MAP]
        return names
