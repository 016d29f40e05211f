"""One transformer block: sequential (GPT-2, LLaMA) or parallel attention + MLP (GPT-NeoX)."""

from __future__ import annotations

import torch
from torch import nn

from telelens.core.components.attention import Attention, AttentionContext, LayerKVCache
from telelens.core.components.mlp import MLP
from telelens.core.components.norm import Norm
from telelens.core.config import HookedTransformerConfig
from telelens.core.hook_points import HookPoint


def _per_head(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    return x.unsqueeze(2).expand(-1, -1, n_heads, -1)  # [batch, pos, head_index, d_model]


class TransformerBlock(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, layer: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        norm_kind = cfg.normalization_type
        self.ln1 = Norm(cfg) if norm_kind is not None else nn.Identity()
        self.attn = Attention(cfg, layer)
        if not cfg.attn_only:
            self.ln2 = Norm(cfg) if norm_kind is not None else nn.Identity()
            self.mlp = MLP(cfg)
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
        ctx: AttentionContext | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(resid_pre)
        if cfg.use_split_qkv_input:
            n_kv = int(cfg.n_key_value_heads or cfg.n_heads)
            q_in = self.ln1(self.hook_q_input(_per_head(resid_pre, cfg.n_heads)))
            k_in = self.ln1(self.hook_k_input(_per_head(resid_pre, n_kv)))
            v_in = self.ln1(self.hook_v_input(_per_head(resid_pre, n_kv)))
            attn_out = self.attn(q_in, k_in, v_in, ctx=ctx, kv_cache=kv_cache)
        elif cfg.use_attn_in:
            attn_in = self.ln1(self.hook_attn_in(_per_head(resid_pre, cfg.n_heads)))
            kv_in = attn_in[:, :, : int(cfg.n_key_value_heads or cfg.n_heads)]
            attn_out = self.attn(attn_in, kv_in, kv_in, ctx=ctx, kv_cache=kv_cache)
        else:
            attn_out = self.attn(self.ln1(resid_pre), ctx=ctx, kv_cache=kv_cache)
        attn_out = self.hook_attn_out(attn_out)  # [batch, pos, d_model]

        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_in = self.hook_mlp_in(resid_pre) if cfg.use_hook_mlp_in else resid_pre
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)
