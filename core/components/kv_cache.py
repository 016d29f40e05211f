"""One layer's KV cache entry, TransformerLens's ``past_keys``/``past_values`` with ``frozen``."""

from __future__ import annotations

from typing import Any

import torch

from telelens.core.components.config_arg import ConfigLike, as_config


class HookedTransformerKeyValueCacheEntry:
    """Keys and values one layer has seen so far, [batch, pos_so_far, n_kv_heads, d_head] each.

    As in TransformerLens, :meth:`append` returns the keys and values so far plus the new ones,
    and stores them unless the entry is ``frozen``. Rotary models store keys already rotated
    (TransformerLens stores them unrotated and rotates the whole cache each step).
    """

    def __init__(
        self,
        past_keys: torch.Tensor | None = None,
        past_values: torch.Tensor | None = None,
        frozen: bool = False,
    ) -> None:
        self.past_keys = past_keys
        self.past_values = past_values
        self.frozen = frozen

    @classmethod
    def init_cache_entry(
        cls, cfg: ConfigLike, device: torch.device | str | None = None, batch_size: int = 1
    ) -> HookedTransformerKeyValueCacheEntry:
        """An empty entry: keys and values [batch_size, 0, n_kv_heads, d_head] in ``cfg.dtype``."""
        cfg = as_config(cfg)
        shape = (batch_size, 0, int(cfg.n_key_value_heads or cfg.n_heads), cfg.d_head)
        empty = torch.empty(shape, device=device, dtype=cfg.dtype)
        return cls(empty, empty.clone())

    @property
    def past_length(self) -> int:
        return 0 if self.past_keys is None else int(self.past_keys.shape[1])

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values so far with ``new_keys``/``new_values`` [batch, new_tokens, ...] after them."""
        if self.past_length == 0:  # nothing to join (and an empty entry's batch size may differ)
            keys, values = new_keys, new_values
        else:
            assert self.past_keys is not None and self.past_values is not None
            keys = torch.cat((self.past_keys, new_keys.to(self.past_keys.device)), dim=1)
            values = torch.cat((self.past_values, new_values.to(self.past_values.device)), dim=1)
        if not self.frozen:
            self.past_keys, self.past_values = keys, values
        return keys, values

    # The core's own short names (the sweep engine fills entries directly).
    @property
    def k(self) -> torch.Tensor | None:
        return self.past_keys

    @k.setter
    def k(self, value: torch.Tensor | None) -> None:
        self.past_keys = value

    @property
    def v(self) -> torch.Tensor | None:
        return self.past_values

    @v.setter
    def v(self, value: torch.Tensor | None) -> None:
        self.past_values = value

    def __repr__(self) -> str:
        shape: Any = None if self.past_keys is None else tuple(self.past_keys.shape)
        return f"HookedTransformerKeyValueCacheEntry(past_keys={shape}, frozen={self.frozen})"


LayerKVCache = HookedTransformerKeyValueCacheEntry
TransformerLensKeyValueCacheEntry = HookedTransformerKeyValueCacheEntry
