"""What bench_core.py and bench_sweep.py share: the peer models and the round-robin timer.

The TransformerLens 3.9 peers are built from the same Hugging Face weights as telelens's model
(no weight processing on either side), so every variant computes the same function.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import torch


def _tl_model(hf: torch.nn.Module, convert: str, **cfg: object) -> object:
    """A TransformerLens model of config ``cfg`` holding ``hf``'s weights, unprocessed."""
    from transformer_lens import HookedTransformer as TLModel
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions

    config = HookedTransformerConfig(**cfg)
    model = TLModel(config)
    model.load_and_process_state_dict(
        getattr(weight_conversions, convert)(hf, config), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False,
    )  # fmt: skip
    return model.eval()


def tl_gpt2(hf: torch.nn.Module, n_ctx: int) -> object:
    """TransformerLens's HookedTransformer over a GPT-2-small-shaped HF model's weights."""
    return _tl_model(
        hf, "convert_gpt2_weights",
        n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=n_ctx,
        act_fn="gelu_new", normalization_type="LN", original_architecture="GPT2LMHeadModel",
    )  # fmt: skip


def tl_smollm2(hf: torch.nn.Module, n_ctx: int) -> object:
    """TransformerLens's HookedTransformer over SmolLM2-135M's HF weights."""
    return _tl_model(
        hf, "convert_llama_weights",
        n_layers=30, d_model=576, d_head=64, n_heads=9, n_key_value_heads=3, d_mlp=1536, d_vocab=49152,
        n_ctx=n_ctx, act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary",
        rotary_base=100000, rotary_dim=64, gated_mlp=True, final_rms=True, eps=1e-5,
        original_architecture="LlamaForCausalLM",
    )  # fmt: skip


def time_round_robin(
    variants: dict[str, Callable[[], object]], reps: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each variant, ``reps`` rounds of all variants after ``warmup`` untimed ones."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + reps):
        for name, fn in variants.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times
