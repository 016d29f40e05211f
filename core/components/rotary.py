"""Rotary position embeddings (full or partial, halves or adjacent pairs)."""

from __future__ import annotations

import torch
from torch import nn

from telelens.core.config import HookedTransformerConfig


class Rotary(nn.Module):
    """Holds ``inv_freq`` and turns position ids into (cos, sin) tables.

    One instance per model: the tables are built once per forward pass and handed to
    every layer. Loaders may overwrite ``inv_freq``/``attention_scaling`` with the values
    Hugging Face computes for scaled variants (LLaMA 3, YaRN, ...).
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        dim = int(cfg.rotary_dim or cfg.d_head)
        self.rotary_dim = dim
        self.adjacent_pairs = cfg.rotary_adjacent_pairs
        inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.inv_freq: torch.Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.attention_scaling = 1.0

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` [batch or 1, pos] -> each [batch or 1, pos, 1, rotary_dim]."""
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)  # [b, pos, rotary_dim/2]
        if self.adjacent_pairs:
            emb = freqs.repeat_interleave(2, dim=-1)
        else:
            emb = torch.cat((freqs, freqs), dim=-1)  # [b, pos, rotary_dim]
        cos = (emb.cos() * self.attention_scaling).to(dtype)[:, :, None, :]
        sin = (emb.sin() * self.attention_scaling).to(dtype)[:, :, None, :]
        return cos, sin


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, adjacent_pairs: bool = False
) -> torch.Tensor:
    """Rotate the first ``rotary_dim`` dims of ``x`` [batch, pos, head_index, d_head]."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    if adjacent_pairs:
        x1, x2 = x_rot[..., ::2], x_rot[..., 1::2]
        rotated = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        half = rd // 2
        rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = x_rot * cos + rotated * sin
    if x_pass.shape[-1] == 0:
        return out
    return torch.cat((out, x_pass), dim=-1)
