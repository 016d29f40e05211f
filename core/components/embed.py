"""Token embedding, learned positional embedding, and unembedding (TransformerLens's constructors
and forward signatures; each takes a config or a dict of its fields)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.components.state_dict_names import load_tl_unembed_names


class Embed(nn.Module):
    """Token ids -> residual vectors. ``W_E``: [d_vocab, d_model]."""

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__()
        cfg = as_config(cfg)
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.W_E)  # [batch, pos, d_model]


class PosEmbed(nn.Module):
    """Learned absolute positions. ``W_pos``: [n_ctx, d_model]."""

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__()
        cfg = as_config(cfg)
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(
        self, tokens: torch.Tensor, past_kv_pos_offset: int = 0, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """TransformerLens's ``PosEmbed.forward``: the embeddings of the positions of ``tokens``
        [batch, pos], after ``past_kv_pos_offset`` cached ones -> [batch, pos, d_model].

        With ``attention_mask`` [batch, past + pos], positions count from each row's first real
        token and padding positions get zeros.
        """
        batch, n = tokens.shape[0], tokens.shape[-1]
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + n, device=self.W_pos.device)
            return self.embed_positions(positions[None]).expand(batch, -1, -1).clone()
        mask = attention_mask.to(self.W_pos.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, past_kv_pos_offset:]  # [batch, pos]
        padding = ~mask.bool()[:, past_kv_pos_offset : past_kv_pos_offset + n, None]  # [batch, pos, 1]
        return torch.where(padding, 0, self.embed_positions(positions))

    def embed_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The embeddings of position ids [batch or 1, pos] (the model's forward pass computes
        them once, accounting for left padding and the KV cache) -> [batch or 1, pos, d_model]."""
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
    ``load_state_dict`` also takes TransformerLens's ``W_U``/``b_U``.
    """

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__()
        cfg = as_config(cfg)
        self.cfg = cfg
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

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        return F.linear(residual, self.weight, self.bias)  # [batch, pos, d_vocab_out]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(load_tl_unembed_names(self, state_dict, prefix, *args), prefix, *args)
