"""What one forward pass needs besides the residual: the attention mask and positions (left padding,
the KV cache), and the KV cache ``generate`` keeps between steps."""

from __future__ import annotations

from typing import Any

import torch

from telelens.core.components.attention_context import AttentionContext, mask_and_positions
from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.components.kv_cache import (
    HookedTransformerKeyValueCacheEntry,
    TransformerLensKeyValueCacheEntry,
)
from telelens.core.config import HookedTransformerConfig

__all__ = [
    "HookedTransformerKeyValueCache",
    "HookedTransformerKeyValueCacheEntry",
    "TransformerLensKeyValueCache",
    "TransformerLensKeyValueCacheEntry",
    "attention_context",
]


class HookedTransformerKeyValueCache:
    """Per-layer keys/values plus the attention mask of everything seen so far (TransformerLens's
    ``TransformerLensKeyValueCache``, formerly ``HookedTransformerKeyValueCache``).

    ``HookedTransformerKeyValueCache.init_cache(cfg, device, batch_size)`` makes an empty one;
    pass it as ``model(tokens, past_kv_cache=cache)`` and each call appends its tokens. A frozen
    cache (:meth:`freeze`) is read but not extended, to run many inputs after one prefix.
    """

    def __init__(
        self,
        entries: list[HookedTransformerKeyValueCacheEntry] | int,
        previous_attention_mask: torch.Tensor | None = None,
        frozen: bool = False,
    ) -> None:
        if isinstance(entries, int):  # the core's own shorthand: that many empty entries
            entries = [HookedTransformerKeyValueCacheEntry() for _ in range(entries)]
        self.entries = entries
        self.previous_attention_mask = previous_attention_mask  # [batch, pos_so_far]
        self.frozen = frozen

    @classmethod
    def init_cache(
        cls, cfg: ConfigLike, device: torch.device | str | None = None, batch_size: int = 1
    ) -> HookedTransformerKeyValueCache:
        """An empty cache for ``cfg``'s layers (keys and values [batch_size, 0, n_kv_heads, d_head])."""
        cfg = as_config(cfg)
        device = device if device is not None else cfg.device
        entries = [
            HookedTransformerKeyValueCacheEntry.init_cache_entry(cfg, device, batch_size)
            for _ in range(cfg.n_layers)
        ]
        return cls(entries, torch.empty((batch_size, 0), device=device, dtype=torch.int))

    def freeze(self) -> None:
        """Stop extending the cache: later passes read it but leave it as it is."""
        self.frozen = True
        for entry in self.entries:
            entry.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False
        for entry in self.entries:
            entry.frozen = False

    def append_attention_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mask so far with ``attention_mask`` [batch, new_tokens] after it (kept unless frozen)."""
        previous = self.previous_attention_mask
        if previous is None or previous.shape[1] == 0:
            updated = attention_mask
        else:
            updated = torch.cat((previous, attention_mask.to(previous.device)), dim=-1)
        if not self.frozen:
            self.previous_attention_mask = updated
        return updated

    def __getitem__(self, idx: int) -> HookedTransformerKeyValueCacheEntry:
        return self.entries[idx]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def past_length(self) -> int:
        return self.entries[0].past_length if self.entries else 0


TransformerLensKeyValueCache = HookedTransformerKeyValueCache


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
    if past_kv_cache is not None:
        previous = past_kv_cache.previous_attention_mask
        if previous is not None and previous.shape[1] == 0:
            previous = None  # an empty cache's mask, from init_cache
        if previous is not None:
            new = attention_mask if attention_mask is not None else torch.ones(batch, q_len, dtype=torch.long)
            attention_mask = torch.cat((previous.to(device), new.to(device)), dim=1)
        full = (
            attention_mask
            if attention_mask is not None
            else torch.ones(batch, past + q_len, dtype=torch.long)
        )
        if not getattr(past_kv_cache, "frozen", False):
            past_kv_cache.previous_attention_mask = full.to(device)
    mask, positions = mask_and_positions(batch, q_len, past, attention_mask, device)
    tables = None if rotary is None else rotary.tables(positions, cfg.dtype)
    return AttentionContext(mask=mask, rotary=tables), positions
