"""In-place parameter edits shared by the weight-processing steps (:mod:`telelens.core.weight_processing`).

Tied-embedding checks, the norms of the blocks, zero biases created on demand (with their cfg
flag), and row-chunked fp32 updates of large matrices, so that no step builds a second copy of
the model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from telelens.core.components.norm import Norm

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

# One logger for every step: users (and tests) configure "telelens.core.weight_processing".
logger = logging.getLogger("telelens.core.weight_processing")

# Row chunks of the (possibly huge) embedding / unembedding hold at most this many elements,
# so fp32 temporaries stay small even for 150k-token vocabularies in bf16.
CHUNK_ELEMENTS = 1 << 24

PRE_KIND = {"LN": "LNPre", "RMS": "RMSPre"}


def is_tied(model: HookedTransformer) -> bool:
    return model.unembed.weight is model.embed.W_E


def block_norms(model: HookedTransformer) -> list[Norm]:
    """Every block norm (ln1, ln2), in order; the final norm is handled on its own."""
    out: list[Norm] = []
    for block in model.blocks:
        for name in ("ln1", "ln2"):
            norm = getattr(block, name, None)
            if isinstance(norm, Norm):
                out.append(norm)
    return out


def set_pre(norm: Norm) -> None:
    """Turn a folded norm into its weight-less variant (its hooks stay as they are)."""
    norm.kind = PRE_KIND.get(norm.kind, norm.kind)
    norm.w = None  # type: ignore[assignment]
    norm.b = None


def new_bias(like: torch.Tensor, n: int) -> nn.Parameter:
    return nn.Parameter(
        torch.zeros(n, dtype=like.dtype, device=like.device), requires_grad=like.requires_grad
    )


def _ensure_biases(modules: Iterable[nn.Module], *pairs: tuple[str, str]) -> None:
    """Give each module a zero ``bias`` parameter, shaped by ``weight``'s rows, where it has none."""
    for module in modules:
        for bias, weight in pairs:
            if getattr(module, bias) is None:
                w = getattr(module, weight)
                setattr(module, bias, new_bias(w, w.shape[0]))


def ensure_qkv_bias(model: HookedTransformer) -> None:
    """Give every attention a (zero) ``qkv_bias`` so folded LN biases have somewhere to go."""
    _ensure_biases((block.attn for block in model.blocks), ("qkv_bias", "qkv_weight"))
    model.cfg.attn_bias = True


def ensure_attn_out_bias(model: HookedTransformer) -> None:
    _ensure_biases((block.attn for block in model.blocks), ("o_bias", "o_weight"))
    model.cfg.attn_out_bias = True


def ensure_mlp_bias(model: HookedTransformer) -> None:
    # cfg.mlp_bias covers both MLP biases, so both are created to keep cfg and params in step.
    _ensure_biases(
        (block.mlp for block in model.blocks), ("in_bias", "in_weight"), ("out_bias", "out_weight")
    )
    model.cfg.mlp_bias = True


def ensure_unembed_bias(model: HookedTransformer) -> None:
    _ensure_biases((model.unembed,), ("bias", "weight"))
    model.cfg.unembed_bias = True


def update_rows(param: torch.Tensor, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> None:
    """``param[rows] = fn(param[rows].float(), rows)`` chunk by chunk over dim 0 (in place)."""
    n_rows = param.shape[0]
    step = max(1, CHUNK_ELEMENTS // max(1, param[0].numel()))
    for start in range(0, n_rows, step):
        rows = slice(start, min(n_rows, start + step))
        param[rows].copy_(fn(param[rows].float(), rows))


def center_rows_over_last(param: torch.Tensor) -> None:
    """Subtract each row's mean over the last dim (d_model for [*, d_model] layouts)."""
    update_rows(param, lambda x, _: x - x.mean(-1, keepdim=True))


def column_mean(param: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 in fp32, accumulated chunk by chunk: [d_model]."""
    total = torch.zeros(param.shape[1:], dtype=torch.float32, device=param.device)
    step = max(1, CHUNK_ELEMENTS // max(1, param[0].numel()))
    for start in range(0, param.shape[0], step):
        total += param[start : start + step].float().sum(0)
    return total / param.shape[0]


def tied_error(step: str) -> ValueError:
    return ValueError(
        f"{step}: this model ties its embeddings (unembed.weight is embed.W_E), so changing W_U "
        "would change W_E too. Call telelens.core.weight_processing.untie_embeddings(model) first "
        "(costs one extra d_vocab x d_model matrix), or pass center_unembed=False."
    )
