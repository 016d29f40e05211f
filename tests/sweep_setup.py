"""The small models, metric and clean/corrupted inputs shared by the sweep test modules."""

from __future__ import annotations

from typing import Any

import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer

N_LAYERS, N_HEADS, POS, BATCH, VOCAB = 3, 4, 6, 2, 50

GQA_ROTARY_RMS: dict[str, Any] = dict(
    n_key_value_heads=2,
    positional_embedding_type="rotary",
    normalization_type="RMS",
    gated_mlp=True,
    act_fn="silu",
)
PARALLEL: dict[str, Any] = dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=2)


def make_model(**overrides: Any) -> HookedTransformer:
    # A large init so every patch moves the metric (the default 0.02 leaves attention ~uniform).
    kwargs: dict[str, Any] = dict(
        n_layers=N_LAYERS, d_model=16, n_ctx=16, d_head=4, n_heads=N_HEADS, d_mlp=32, d_vocab=VOCAB
    )
    kwargs.update(act_fn="gelu", initializer_range=0.4, seed=0)
    return HookedTransformer(HookedTransformerConfig(**{**kwargs, **overrides})).eval()


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 7] - logits[:, -1, 3]).mean()


def make_setup(overrides: dict[str, Any]) -> tuple[HookedTransformer, torch.Tensor, torch.Tensor, dict]:
    """(model, clean tokens, corrupted tokens, clean cache dict)."""
    model = make_model(**overrides)
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    corrupted = torch.randint(0, VOCAB, (BATCH, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    return model, clean, corrupted, cache
