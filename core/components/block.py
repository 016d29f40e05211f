"""One transformer block: sequential (GPT-2, LLaMA) or parallel attention + MLP (GPT-NeoX).

Built as TransformerLens builds it (``TransformerBlock(cfg_or_dict, block_index)``), it runs alone
with TransformerLens's ``forward(resid_pre, shortformer_pos_embed, past_kv_cache_entry,
attention_mask)``; inside a model it receives the pass's :class:`AttentionContext` as ``ctx``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast, overload

import torch
from torch import nn

from telelens.core.components.attention import Attention, AttentionContext, attention_class
from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.components.kv_cache import HookedTransformerKeyValueCacheEntry
from telelens.core.components.mlp import MLP, mlp_class
from telelens.core.components.norm import Norm, make_norm
from telelens.core.hook_points import HookPoint


def _per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, n_heads, -1)  # [batch, pos, head_index, d_model]


class TransformerBlock(nn.Module):
    """TransformerLens's ``TransformerBlock``: ``ln1``, ``attn``, ``ln2``, ``mlp`` and the residual hooks."""

    def __init__(self, cfg: ConfigLike, block_index: int) -> None:
        super().__init__()
        cfg = as_config(cfg)
        self.cfg = cfg
        self.layer = block_index
        norm_kind = cfg.normalization_type
        self.ln1: Norm | nn.Identity = make_norm(cfg) if norm_kind is not None else nn.Identity()
        self.attn: Attention = attention_class(cfg)(cfg, "global", block_index)
        if not cfg.attn_only:
            self.ln2: Norm | nn.Identity = make_norm(cfg) if norm_kind is not None else nn.Identity()
            self.mlp: MLP = mlp_class(cfg)(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_in = HookPoint()  # [batch, pos, head_index, d_model] (use_attn_in)
        self.hook_q_input = HookPoint()  # [batch, pos, head_index, d_model] (use_split_qkv_input)
        self.hook_k_input = HookPoint()  # [batch, pos, kv_head_index, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, kv_head_index, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.hook_mlp_in = HookPoint()  # [batch, pos, d_model] (use_hook_mlp_in)
            self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        if not cfg.parallel_attn_mlp:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid_pre: torch.Tensor,
        shortformer_pos_embed: torch.Tensor | None = None,
        past_kv_cache_entry: HookedTransformerKeyValueCacheEntry | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        ctx: AttentionContext | None = None,
    ) -> torch.Tensor:
        """``resid_pre`` [batch, pos, d_model] -> ``resid_post`` [batch, pos, d_model].

        Alone, ``attention_mask`` [batch, past + pos] marks padding and ``past_kv_cache_entry``
        holds this layer's earlier keys and values (as in TransformerLens); a model passes ``ctx``.
        """
        if shortformer_pos_embed is not None:
            raise NotImplementedError("shortformer positional embeddings are not supported")
        if ctx is None:
            past = 0 if past_kv_cache_entry is None else past_kv_cache_entry.past_length
            ctx = self.attn._standalone_context(
                resid_pre.shape[0], resid_pre.shape[1], past, attention_mask, resid_pre.device
            )
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(
            self._attention(resid_pre, ctx, past_kv_cache_entry)
        )  # [batch, pos, d_model]
        return self.after_attn(resid_pre, attn_out)

    # The block's topology, step by step. The forward pass above runs these methods, and the
    # sweep engine (telelens.core.sweeps) calls them to resume a patched variant mid-block,
    # so the two cannot compute a block differently.
    def _attention(
        self,
        resid_pre: torch.Tensor,
        ctx: AttentionContext | None,
        kv_cache: HookedTransformerKeyValueCacheEntry | None,
    ) -> torch.Tensor:
        """The attention output (before ``hook_attn_out``) of the normalized residual stream."""
        cfg = self.cfg
        if cfg.use_split_qkv_input:
            n_kv = int(cfg.n_key_value_heads or cfg.n_heads)
            q_in = self.ln1(self.hook_q_input(_per_head(resid_pre, cfg.n_heads)))
            k_in = self.ln1(self.hook_k_input(_per_head(resid_pre, n_kv)))
            v_in = self.ln1(self.hook_v_input(_per_head(resid_pre, n_kv)))
            return self.attn(q_in, k_in, v_in, ctx=ctx, past_kv_cache_entry=kv_cache)
        if cfg.use_attn_in:
            attn_in = self.ln1(self.hook_attn_in(_per_head(resid_pre, cfg.n_heads)))
            kv_in = attn_in[:, :, : int(cfg.n_key_value_heads or cfg.n_heads)]
            return self.attn(attn_in, kv_in, kv_in, ctx=ctx, past_kv_cache_entry=kv_cache)
        return self.attn(self.ln1(resid_pre), ctx=ctx, past_kv_cache_entry=kv_cache)

    def keys_values(
        self, resid_pre: torch.Tensor, ctx: AttentionContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of ``resid_pre`` [batch, pos, d_model], rotated, without
        queries or outputs: [batch, pos, n_kv_heads, d_head] each (shared-input attention only)."""
        return self.attn.keys_values(self.ln1(resid_pre), ctx)

    def after_attn(
        self, resid_pre: torch.Tensor, attn_out: torch.Tensor, mlp_out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``resid_post`` from the block's input and its attention output ([..., pos, d_model]).

        ``mlp_out``: the MLP's output if the caller has it and it does not depend on
        ``attn_out``, which holds in a parallel block only; a sequential block computes its
        MLP from ``resid_mid`` and ignores it.
        """
        cfg = self.cfg
        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            if mlp_out is None:
                mlp_in = self.hook_mlp_in(resid_pre) if cfg.use_hook_mlp_in else resid_pre
                mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
            return self.after_mlp(resid_pre, attn_out, mlp_out)
        return self.after_resid_mid(self.hook_resid_mid(resid_pre + attn_out))

    def after_resid_mid(self, resid_mid: torch.Tensor) -> torch.Tensor:
        """``resid_post`` of a sequential block from ``resid_mid`` [..., pos, d_model]."""
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def after_mlp(
        self, resid_pre: torch.Tensor, attn_out: torch.Tensor, mlp_out: torch.Tensor
    ) -> torch.Tensor:
        """``resid_post`` from the block's input, attention output and MLP output (an MLP block)."""
        if self.cfg.parallel_attn_mlp:
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        return self.hook_resid_post(self.hook_resid_mid(resid_pre + attn_out) + mlp_out)


class BlockList(nn.ModuleList):
    """``model.blocks``: an ``nn.ModuleList`` of :class:`TransformerBlock` that says so to a type
    checker (``model.blocks[i].attn`` is an ``Attention``). It adds no state: the state-dict
    names stay ``blocks.{i}....``."""

    @overload
    def __getitem__(self, idx: slice) -> BlockList: ...
    @overload
    def __getitem__(self, idx: int) -> TransformerBlock: ...
    def __getitem__(self, idx: int | slice) -> TransformerBlock | BlockList:
        return cast("TransformerBlock | BlockList", super().__getitem__(idx))

    def __iter__(self) -> Iterator[TransformerBlock]:
        return cast(Iterator[TransformerBlock], super().__iter__())
