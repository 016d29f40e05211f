"""LLaMA family: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.

RMSNorm, rotary positions (optionally scaled, e.g. LLaMA 3), grouped-query attention,
gated SiLU MLP. q/k/v projections are stacked into ``qkv_weight`` rows; gate and up
projections into ``in_weight`` rows (gate first).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.models.adapter import ArchitectureAdapter, Target, check_act, unembed_targets
from telelens.core.models.rope import rope_parameters, rotary_dim, scaled_rope

logger = logging.getLogger(__name__)


class LlamaAdapter(ArchitectureAdapter):
    prefixes = ("model.",)
    ignored = (r"rotary_emb\.inv_freq$",)

    @staticmethod
    def _biases(hf: Any) -> tuple[bool, bool, bool]:
        """(q/k/v bias, o bias, mlp bias) for this member of the family."""
        if hf.model_type == "qwen2":
            return True, False, False
        if hf.model_type == "mistral":
            return False, False, False
        bias = bool(getattr(hf, "attention_bias", False))
        return bias, bias, bool(getattr(hf, "mlp_bias", False))

    def make_config(self, hf: Any) -> HookedTransformerConfig:
        n_heads = hf.num_attention_heads
        d_head = getattr(hf, "head_dim", None) or hf.hidden_size // n_heads
        qkv_bias, o_bias, mlp_bias = self._biases(hf)
        window = getattr(hf, "sliding_window", None)
        if hf.model_type == "qwen2" and not getattr(hf, "use_sliding_window", False):
            window = None
        extra: dict[str, Any] = {}
        if window is not None and window < hf.max_position_embeddings:
            extra["sliding_window"] = window
            logger.warning(
                "sliding-window attention (window %d) is not implemented: outputs differ from Hugging "
                "Face's for sequences longer than the window",
                window,
            )
        rope = rope_parameters(hf)
        return HookedTransformerConfig(
            n_layers=hf.num_hidden_layers,
            d_model=hf.hidden_size,
            n_ctx=hf.max_position_embeddings,
            d_head=d_head,
            n_heads=n_heads,
            n_key_value_heads=getattr(hf, "num_key_value_heads", None) or n_heads,
            d_mlp=hf.intermediate_size,
            d_vocab=hf.vocab_size,
            act_fn=check_act(hf.hidden_act, type(self).__name__),
            normalization_type="RMS",
            eps=hf.rms_norm_eps,
            positional_embedding_type="rotary",
            rotary_dim=rotary_dim(d_head, hf),
            rotary_base=rope["rope_theta"],
            rotary_adjacent_pairs=False,
            gated_mlp=True,
            attn_bias=qkv_bias,
            attn_out_bias=o_bias,
            mlp_bias=mlp_bias,
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            rope_scaling=rope if rope["rope_type"] != "default" else None,
            initializer_range=getattr(hf, "initializer_range", 0.02),
            extra=extra,
        )

    def rotary_override(self, hf_config: Any) -> tuple[torch.Tensor, float] | None:
        return scaled_rope(hf_config)

    def layer_targets(self, layer: int, rest: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        p = f"blocks.{layer}."
        q = cfg.n_heads * cfg.d_head
        kv = int(cfg.n_key_value_heads or cfg.n_heads) * cfg.d_head
        d_mlp = int(cfg.d_mlp or 0)
        rows = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
        mlp_rows = {"gate_proj": (0, d_mlp), "up_proj": (d_mlp, 2 * d_mlp)}
        module, _, kind = rest.rpartition(".")  # e.g. ("self_attn.q_proj", "weight")
        if module == "input_layernorm" and kind == "weight":
            return [Target(p + "ln1.w")]
        if module == "post_attention_layernorm" and kind == "weight":
            return [Target(p + "ln2.w")]
        head, _, proj = module.partition(".")
        if head == "self_attn" and proj in rows:
            return [Target(p + ("attn.qkv_weight" if kind == "weight" else "attn.qkv_bias"), rows[proj])]
        if head == "self_attn" and proj == "o_proj":
            return [Target(p + ("attn.o_weight" if kind == "weight" else "attn.o_bias"))]
        if head == "mlp" and proj in mlp_rows:
            return [Target(p + ("mlp.in_weight" if kind == "weight" else "mlp.in_bias"), mlp_rows[proj])]
        if head == "mlp" and proj == "down_proj":
            return [Target(p + ("mlp.out_weight" if kind == "weight" else "mlp.out_bias"))]
        return None

    def global_targets(self, name: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        if name == "embed_tokens.weight":
            return [Target("embed.W_E")]
        if name == "norm.weight":
            return [Target("ln_final.w")]
        if name == "lm_head.weight":
            return unembed_targets(cfg)
        return None

    def hf_names(self, cfg: HookedTransformerConfig) -> list[str]:
        names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                names += [f"{p}self_attn.{proj}.weight", f"{p}self_attn.{proj}.bias"]
            for proj in ("gate_proj", "up_proj", "down_proj"):
                names += [f"{p}mlp.{proj}.weight", f"{p}mlp.{proj}.bias"]
        return names
