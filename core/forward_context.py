"""What one forward pass needs besides the residual: the attention mask and positions (left padding,
the KV cache), and the KV cache ``generate`` keeps between steps."""

from __future__ import annotations

from typing import Any

import torch

from telelens.core.components.attention import AttentionContext, LayerKVCache
from telelens.core.config import HookedTransformerConfig


class HookedTransformerKeyValueCache:
    """Per-layer keys/values plus the attention mask of everything seen so far (for ``generate``)."""

    def __init__(self, n_layers: int) -> None:
        self.entries = [LayerKVCache() for _ in range(n_layers)]
        self.previous_attention_mask: torch.Tensor | None = None  # [batch, past_pos]

    @classmethod
    def init_cache(
        cls, cfg: HookedTransformerConfig, device: Any = None, batch_size: int = 1
    ) -> HookedTransformerKeyValueCache:
        return cls(cfg.n_layers)

    @property
    def past_length(self) -> int:
        k = self.entries[0].k
        return 0 if k is None else int(k.shape[1])


def attention_context(
    cfg: HookedTransformerConfig,
    rotary: Any,
    batch: int,
    q_len: int,
    attention_mask: torch.Tensor | None,
    past_kv_cache: HookedTransformerKeyValueCache | None,
    device: torch.device,
) -> tuple[AttentionContext, torch.Tensor]:
    """Mask and positions for this pass, accounting for left padding and the KV cache."""
    past = past_kv_cache.past_length if past_kv_cache is not None else 0
    if past_kv_cache is not None and past_kv_cache.previous_attention_mask is not None:
        new = attention_mask if attention_mask is not None else torch.ones(batch, q_len, dtype=torch.long)
        attention_mask = torch.cat((past_kv_cache.previous_attention_mask, new.to(device)), dim=1)
    if past_kv_cache is not None:
        full = (
            attention_mask
            if attention_mask is not None
            else torch.ones(batch, past + q_len, dtype=torch.long)
        )
        past_kv_cache.previous_attention_mask = full.to(device)

    padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:
        assert attention_mask is not None
        key_mask = attention_mask.to(device).bool()  # [batch, key_pos]
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]  # [batch, pos]
        causal = torch.ones(q_len, past + q_len, dtype=torch.bool, device=device).tril(past)
        mask = causal[None] & key_mask[:, None, :]  # [batch, query_pos, key_pos]
        # A padding query sees no key: let it see all so no NaN appears (its output is unused).
        mask = mask | ~mask.any(-1, keepdim=True)
        mask = mask[:, None]  # [batch, 1, query_pos, key_pos]
    else:
        positions = torch.arange(past, past + q_len, device=device)[None]  # [1, pos]
        mask = None
        if past and q_len > 1:
            mask = torch.ones(q_len, past + q_len, dtype=torch.bool, device=device).tril(past)[None, None]
    tables = None if rotary is None else rotary.tables(positions, cfg.dtype)
    return AttentionContext(mask=mask, rotary=tables), positions
