"""Building blocks of the hooked transformer: one idea per module, shared by every architecture."""

from telelens.core.components.attention import Attention
from telelens.core.components.block import BlockList, TransformerBlock
from telelens.core.components.embed import Embed, PosEmbed, Unembed
from telelens.core.components.mlp import MLP
from telelens.core.components.norm import Norm
from telelens.core.components.rotary import Rotary

__all__ = [
    "MLP",
    "Attention",
    "BlockList",
    "Embed",
    "Norm",
    "PosEmbed",
    "Rotary",
    "TransformerBlock",
    "Unembed",
]
