"""Random tiny HookedTransformers shared by the test modules (importable: pytest's pythonpath has tests/)."""

from __future__ import annotations

from typing import Any

import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer

GPT2: dict[str, Any] = dict(act_fn="gelu_new")
"""LayerNorm, learned positions, every bias."""
LLAMA_GQA: dict[str, Any] = dict(
    positional_embedding_type="rotary", normalization_type="RMS", gated_mlp=True, act_fn="silu",
    n_key_value_heads=2, attn_bias=False, attn_out_bias=False, mlp_bias=False,
)  # fmt: skip
"""RMSNorm, rotary, gated SiLU MLP, grouped-query attention, no biases."""
NEOX_PARALLEL: dict[str, Any] = dict(
    positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, act_fn="gelu"
)
"""Parallel attention + MLP, partial rotary, LayerNorm."""

DEFAULTS: dict[str, Any] = dict(n_layers=3, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=97, seed=0)


def tiny_model(
    preset: dict[str, Any], *, norm_noise: float = 0.0, noise_seed: int = 1, **overrides: Any
) -> HookedTransformer:
    """A seeded random model in eval mode.

    ``norm_noise`` perturbs every 1-d parameter (norm weights around 1, biases around 0) so
    folding, biases and norm hooks do real work instead of multiplying by one.
    """
    model = HookedTransformer(HookedTransformerConfig(**{**DEFAULTS, **preset, **overrides}))
    if norm_noise:
        gen = torch.Generator().manual_seed(noise_seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() == 1:
                    noise = norm_noise * torch.randn(p.shape, generator=gen, dtype=torch.float64)
                    p.copy_(noise + (1.0 if name.endswith(".w") else 0.0))
    return model.eval()
