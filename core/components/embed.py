"""Token embedding, learned positional embedding, and unembedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.config import HookedTransformerConfig


class Embed(nn.Module):
    """Token ids -> residual vectors. ``W_E``: [d_vocab, d_model]."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.W_E)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    """Learned absolute positions. ``W_pos``: [n_ctx, d_model]."""

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # positions: [batch or 1, pos] (already offset for left padding and the KV cache)
        if int(positions.max()) >= self.W_pos.shape[0]:
            raise ValueError(
                f"position {int(positions.max())} is past the model's context length n_ctx={self.W_pos.shape[0]}"
            )
        return F.embedding(positions, self.W_pos)  # [batch or 1, pos, d_model]


class Unembed(nn.Module):
    """Residual -> logits.

    The weight is stored as ``weight`` [d_vocab_out, d_model] (the layout ``F.linear`` wants,
    so no copy per call); ``W_U`` [d_model, d_vocab_out] is a view of it. With tied
    embeddings ``weight`` *is* ``embed.W_E``: one tensor, never untied behind your back.
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.d_vocab_out, cfg.d_model, dtype=cfg.dtype))
        self.bias = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype)) if cfg.unembed_bias else None

    @property
    def W_U(self) -> torch.Tensor:
        return self.weight.T  # [d_model, d_vocab_out]

    @property
    def b_U(self) -> torch.Tensor:
        if self.bias is None:
            return torch.zeros(self.weight.shape[0], dtype=self.weight.dtype, device=self.weight.device)
        return self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)  # [batch, pos, d_vocab_out]
