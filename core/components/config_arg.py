"""The config argument of every component: a :class:`HookedTransformerConfig` or a plain dict.

TransformerLens builds its components as ``Attention(cfg_dict)``; its config's ``unwrap`` turns a
dict into a config. Until telelens's config has ``unwrap`` too, :func:`as_config` does the same.
"""

from __future__ import annotations

from typing import Any

from telelens.core.config import HookedTransformerConfig

ConfigLike = HookedTransformerConfig | dict[str, Any]


def as_config(cfg: ConfigLike) -> HookedTransformerConfig:
    """``cfg`` itself, or the config a dict of its fields describes."""
    if isinstance(cfg, HookedTransformerConfig):
        return cfg
    unwrap = getattr(HookedTransformerConfig, "unwrap", None)
    if unwrap is not None:
        return unwrap(cfg)  # type: ignore[no-any-return]
    return HookedTransformerConfig(**cfg)
