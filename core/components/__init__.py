"""Building blocks of the hooked transformer: one idea per module, shared by every architecture.

Importable as TransformerLens users import them (``from telelens.components import Attention``),
each built from a config or a dict of its fields and runnable alone.
"""

from telelens.core.components.attention import Attention, GroupedQueryAttention
from telelens.core.components.attention_context import AttentionContext
from telelens.core.components.block import BlockList, TransformerBlock
from telelens.core.components.config_arg import as_config
from telelens.core.components.embed import Embed, PosEmbed, Unembed
from telelens.core.components.kv_cache import HookedTransformerKeyValueCacheEntry
from telelens.core.components.mlp import MLP, GatedMLP
from telelens.core.components.norm import LayerNorm, LayerNormPre, Norm, RMSNorm, RMSNormPre, make_norm
from telelens.core.components.rotary import Rotary

__all__ = [
    "MLP",
    "Attention",
    "AttentionContext",
    "BlockList",
    "Embed",
    "GatedMLP",
    "GroupedQueryAttention",
    "HookedTransformerKeyValueCacheEntry",
    "LayerNorm",
    "LayerNormPre",
    "Norm",
    "PosEmbed",
    "RMSNorm",
    "RMSNormPre",
    "Rotary",
    "TransformerBlock",
    "Unembed",
    "as_config",
    "make_norm",
]
