"""Which of TransformerLens's config values the core computes with, and the refusal of the rest.

TransformerLens 3.9's ``HookedTransformerConfig`` has fields for architectures the core
does not build (local attention, MoE, soft caps, YaRN, ...). The config accepts every
field so TransformerLens code constructs it unchanged, but a value that would change the
computation is refused here with an error naming the field and the value: a model must
never silently compute something else than the config says.
"""

from __future__ import annotations

from typing import Any

NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDING_TYPES = ("standard", "rotary")
ACT_FNS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish", "quick_gelu")
INIT_MODES = ("gpt2",)

UNSUPPORTED: dict[str, tuple[Any, str]] = {
    # field: (the only value the core builds, what a different value would ask for)
    "use_local_attn": (False, "local (sliding-window) attention"),
    "attention_dir": ("causal", "bidirectional attention"),
    "ungroup_grouped_query_attention": (False, "ungrouped key/value hooks for grouped-query attention"),
    "scale_attn_by_inverse_layer_idx": (False, "scaling attention by 1/(layer+1)"),
    "use_qk_norm": (False, "query/key normalisation"),
    "clip_qkv": (None, "clamping of Q/K/V"),
    "use_logn_attn": (False, "log-n attention scaling"),
    "use_dynamic_ntk_rope": (False, "dynamic NTK rotary scaling"),
    "post_embedding_ln": (False, "a norm after the embedding"),
    "rotary_scaling_factor": (1.0, "linear rotary scaling"),
    "use_NTK_by_parts_rope": (False, "NTK-by-parts rotary scaling (load the weights with from_pretrained)"),
    "use_yarn_rope": (False, "YaRN rotary scaling (load the weights with from_pretrained)"),
    "use_attention_sinks": (False, "attention sinks"),
    "use_normalization_before_and_after": (False, "norms after attention and MLP (Gemma 2)"),
    "attn_scores_soft_cap": (-1.0, "soft-capped attention scores"),
    "output_logits_soft_cap": (-1.0, "soft-capped logits"),
    "num_experts": (None, "mixture-of-experts MLPs"),
    "experts_per_token": (None, "mixture-of-experts MLPs"),
    "load_in_4bit": (False, "4-bit quantised weights"),
}


def _refuse(field: str, value: Any, why: str) -> None:
    raise ValueError(f"HookedTransformerConfig: {field}={value!r} is not supported by telelens ({why})")


def refuse_unsupported(cfg: Any) -> None:
    """Raise ValueError naming the first field of ``cfg`` whose value the core cannot build."""
    for name, (supported, what) in UNSUPPORTED.items():
        value = getattr(cfg, name)
        if value != supported:
            _refuse(name, value, f"{what}; only {supported!r} is built")
    if cfg.normalization_type not in NORMALIZATION_TYPES:
        _refuse("normalization_type", cfg.normalization_type, f"one of {NORMALIZATION_TYPES}")
    if cfg.positional_embedding_type not in POSITIONAL_EMBEDDING_TYPES:
        _refuse(
            "positional_embedding_type", cfg.positional_embedding_type, f"one of {POSITIONAL_EMBEDDING_TYPES}"
        )
    if not cfg.attn_only and cfg.act_fn not in ACT_FNS:
        _refuse("act_fn", cfg.act_fn, f"one of {ACT_FNS}")
    if cfg.init_mode not in INIT_MODES:
        _refuse("init_mode", cfg.init_mode, f"random init builds only {INIT_MODES}; load weights instead")
    if cfg.final_rms and cfg.normalization_type not in ("RMS", "RMSPre"):
        _refuse(
            "final_rms",
            cfg.final_rms,
            f"an RMS final norm with normalization_type={cfg.normalization_type!r}",
        )
