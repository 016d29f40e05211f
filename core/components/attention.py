"""Multi-head / grouped-query attention, written once for every architecture.

Q, K and V come from one fused projection ``qkv_weight`` [(n_heads + 2 * n_kv_heads) * d_head,
d_model]; ``W_Q``/``W_K``/``W_V``/``W_O`` are TransformerLens-shaped views of the stored
weights, and ``load_state_dict`` also takes TransformerLens's names (``W_Q``, ``_W_K``, ...). The
fused kernel (``scaled_dot_product_attention``) runs unless a hook listens to ``hook_attn_scores``
or ``hook_pattern`` in this layer; then this layer alone computes scores and pattern explicitly.

Built as TransformerLens builds it (``Attention(cfg_or_dict, attn_type, layer_id)``) it also runs
alone, with TransformerLens's ``forward(query_input, key_input, value_input,
past_kv_cache_entry, additive_attention_mask, attention_mask)``; inside a model it receives the
pass's :class:`AttentionContext` instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.components.attention_context import (
    AttentionContext,
    mask_and_positions,
    with_additive_mask,
)
from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.components.kv_cache import HookedTransformerKeyValueCacheEntry, LayerKVCache
from telelens.core.components.rotary import Rotary, apply_rotary
from telelens.core.components.state_dict_names import load_tl_attention_names
from telelens.core.hook_points import HookPoint
from telelens.lens.factored_matrix import FactoredMatrix

__all__ = ["Attention", "AttentionContext", "GroupedQueryAttention", "LayerKVCache"]


class Attention(nn.Module):
    """Attention, TransformerLens's ``Attention`` (and, subclassed, ``GroupedQueryAttention``).

    Args:
        cfg: the model config, or a dict of its fields.
        attn_type: ``"global"`` (the only kind telelens runs; GPT-Neo's ``"local"`` is refused).
        layer_id: the block's index.
    """

    def __init__(self, cfg: ConfigLike, attn_type: str = "global", layer_id: int | None = None) -> None:
        super().__init__()
        cfg = as_config(cfg)
        if attn_type != "global":
            raise NotImplementedError(f"attn_type={attn_type!r}: telelens runs global attention only")
        self.cfg = cfg
        self.attn_type = attn_type
        self.layer_id = layer_id
        self.layer = 0 if layer_id is None else layer_id
        nh, nkv, dh, dm = cfg.n_heads, int(cfg.n_key_value_heads or cfg.n_heads), cfg.d_head, cfg.d_model
        self.n_heads, self.n_kv_heads, self.d_head = nh, nkv, dh
        self.qkv_weight = nn.Parameter(torch.empty((nh + 2 * nkv) * dh, dm, dtype=cfg.dtype))
        self.qkv_bias = (
            nn.Parameter(torch.zeros((nh + 2 * nkv) * dh, dtype=cfg.dtype)) if cfg.attn_bias else None
        )
        self.o_weight = nn.Parameter(torch.empty(dm, nh * dh, dtype=cfg.dtype))
        self.o_bias = nn.Parameter(torch.zeros(dm, dtype=cfg.dtype)) if cfg.attn_out_bias else None

        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head_index, d_head]
        if cfg.positional_embedding_type == "rotary":
            self.hook_rot_q = HookPoint()  # [batch, pos, head_index, d_head]
            self.hook_rot_k = HookPoint()  # [batch, pos, kv_head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model] (use_attn_result only)

    # ---- TransformerLens-shaped weight views (no copies) ----
    def _split_rows(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nh, nkv, dh = self.n_heads, self.n_kv_heads, self.d_head
        return t[: nh * dh], t[nh * dh : (nh + nkv) * dh], t[(nh + nkv) * dh :]

    def _weight_view(self, w: torch.Tensor, heads: int) -> torch.Tensor:
        return w.view(heads, self.d_head, -1).transpose(1, 2)  # [head_index, d_model, d_head]

    def _bias_view(self, i: int, heads: int) -> torch.Tensor:
        if self.qkv_bias is None:
            return torch.zeros(heads, self.d_head, dtype=self.qkv_weight.dtype, device=self.qkv_weight.device)
        return self._split_rows(self.qkv_bias)[i].view(heads, self.d_head)

    def _repeat_kv(self, t: torch.Tensor) -> torch.Tensor:
        return self.repeat_kv_heads(t, dim=0)

    @property
    def W_Q(self) -> torch.Tensor:
        return self._weight_view(self._split_rows(self.qkv_weight)[0], self.n_heads)

    @property
    def _W_K(self) -> torch.Tensor:
        return self._weight_view(self._split_rows(self.qkv_weight)[1], self.n_kv_heads)

    @property
    def _W_V(self) -> torch.Tensor:
        return self._weight_view(self._split_rows(self.qkv_weight)[2], self.n_kv_heads)

    @property
    def W_K(self) -> torch.Tensor:
        """[head_index, d_model, d_head], key heads repeated to one per query head under GQA."""
        return self._repeat_kv(self._W_K)

    @property
    def W_V(self) -> torch.Tensor:
        return self._repeat_kv(self._W_V)

    @property
    def b_Q(self) -> torch.Tensor:
        return self._bias_view(0, self.n_heads)

    @property
    def _b_K(self) -> torch.Tensor:
        return self._bias_view(1, self.n_kv_heads)

    @property
    def _b_V(self) -> torch.Tensor:
        return self._bias_view(2, self.n_kv_heads)

    @property
    def b_K(self) -> torch.Tensor:
        return self._repeat_kv(self._b_K)

    @property
    def b_V(self) -> torch.Tensor:
        return self._repeat_kv(self._b_V)

    @property
    def W_O(self) -> torch.Tensor:
        return self.o_weight.view(-1, self.n_heads, self.d_head).permute(
            1, 2, 0
        )  # [head_index, d_head, d_model]

    @property
    def b_O(self) -> torch.Tensor:
        if self.o_bias is None:
            return torch.zeros(self.o_weight.shape[0], dtype=self.o_weight.dtype, device=self.o_weight.device)
        return self.o_bias

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    # ---- forward ----
    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared-input path: one matmul for Q, K and V."""
        b, p, _ = x.shape
        qkv = F.linear(x, self.qkv_weight, self.qkv_bias)  # [batch, pos, (nh + 2 nkv) * d_head]
        q, k, v = qkv.split(
            [self.n_heads * self.d_head, self.n_kv_heads * self.d_head, self.n_kv_heads * self.d_head], -1
        )
        return (
            q.view(b, p, self.n_heads, self.d_head),
            k.view(b, p, self.n_kv_heads, self.d_head),
            v.view(b, p, self.n_kv_heads, self.d_head),
        )

    def _project_separate(
        self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Separate inputs, shared [batch, pos, d_model] or per head [batch, pos, head_index, d_model]."""
        q = _head_linear(q_in, self.W_Q, self.b_Q)
        k = _head_linear(k_in, self._W_K, self._b_K)
        v = _head_linear(v_in, self._W_V, self._b_V)
        return q, k, v

    def forward(
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor | None = None,
        value_input: torch.Tensor | None = None,
        past_kv_cache_entry: HookedTransformerKeyValueCacheEntry | None = None,
        additive_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        *,
        ctx: AttentionContext | None = None,
    ) -> torch.Tensor:
        """TransformerLens's attention forward: ``query_input`` [batch, pos, d_model] (or per head
        [batch, pos, head_index, d_model]) and its ``key_input``/``value_input`` (omitted or the
        same tensor: one fused projection). Returns [batch, pos, d_model].

        ``attention_mask`` [batch, past + pos] marks real tokens (1) and padding (0);
        ``additive_attention_mask`` [batch, 1, 1, key_pos] is added to the scores. A model passes
        its pass's ``ctx`` (mask and rotary tables) instead.
        """
        if position_bias is not None:
            raise NotImplementedError("position_bias (T5's relative attention) is not supported")
        shared = (key_input is None or key_input is query_input) and (
            value_input is None or value_input is query_input
        )
        if shared and query_input.dim() == 3:
            q, k, v = self._project(query_input)
        else:
            k_in = query_input if key_input is None else key_input
            v_in = query_input if value_input is None else value_input
            q, k, v = self._project_separate(query_input, k_in, v_in)
        if ctx is None:
            past = 0 if past_kv_cache_entry is None else past_kv_cache_entry.past_length
            ctx = self._standalone_context(q.shape[0], q.shape[1], past, attention_mask, q.device)
        if additive_attention_mask is not None:
            past = 0 if past_kv_cache_entry is None else past_kv_cache_entry.past_length
            ctx = with_additive_mask(ctx, additive_attention_mask, q.shape[1], past + q.shape[1])
        # Split outputs are views of one tensor; hooks may edit in place under autograd, so
        # a listened-to projection gets its own storage (only then: no cost when silent).
        q = self.hook_q(q.clone() if self.hook_q.active else q)
        k = self.hook_k(k.clone() if self.hook_k.active else k)
        v = self.hook_v(v.clone() if self.hook_v.active else v)
        if ctx.rotary is not None:
            q = self.hook_rot_q(self._rotate(q, ctx.rotary))
            k = self.hook_rot_k(self._rotate(k, ctx.rotary))
        if past_kv_cache_entry is not None:
            k, v = past_kv_cache_entry.append(k, v)

        q_, k_, v_ = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        if self.hook_attn_scores.active or self.hook_pattern.active:
            z = self._explicit_attention(q_, k_, v_, ctx)
        else:
            is_causal = ctx.causal and ctx.mask is None and q_.shape[2] == k_.shape[2] and q_.shape[2] > 1
            z = F.scaled_dot_product_attention(
                q_,
                k_,
                v_,
                attn_mask=ctx.mask,
                is_causal=is_causal,
                scale=1.0 / self.cfg.attn_scale,
                enable_gqa=self.n_kv_heads != self.n_heads,
            )
        z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head_index, d_head]
        return self.output(z)

    def _standalone_context(
        self, batch: int, q_len: int, past: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> AttentionContext:
        """The context a model would pass, from TransformerLens's arguments (this layer used alone)."""
        causal = getattr(self.cfg, "attention_dir", "causal") != "bidirectional"
        if attention_mask is not None and attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        mask, positions = mask_and_positions(batch, q_len, past, attention_mask, device, causal)
        rotary = None
        if self.cfg.positional_embedding_type == "rotary":
            rotary = Rotary(self.cfg).to(device).tables(positions, self.cfg.dtype)
        return AttentionContext(mask=mask, rotary=rotary, causal=causal)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # TransformerLens's names (W_Q, _W_K, b_O, ...) load into the fused weights.
        super()._load_from_state_dict(load_tl_attention_names(self, state_dict, prefix, *args), prefix, *args)

    # The pieces below are shared by the forward pass and the sweep engine
    # (telelens.core.sweeps), which resumes patched variants from inside this layer.
    def output(self, z: torch.Tensor) -> torch.Tensor:
        """The attention output [..., d_model] of ``z`` [..., head_index, d_head]."""
        if self.cfg.use_attn_result:
            result = self.hook_result(
                torch.einsum("...nh,nhd->...nd", z, self.W_O)
            )  # [..., head_index, d_model]
            return result.sum(dim=-2) + self.b_O
        return F.linear(z.flatten(-2), self.o_weight, self.o_bias)

    def keys_values(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated) and values of a shared input ``x`` [batch, pos, d_model], without the
        queries: [batch, pos, n_kv_heads, d_head] each."""
        b, p, _ = x.shape
        nq, nkv, dh = self.n_heads * self.d_head, self.n_kv_heads, self.d_head
        bias = None if self.qkv_bias is None else self.qkv_bias[nq:]
        kv = F.linear(x, self.qkv_weight[nq:], bias)  # [batch, pos, 2 * n_kv_heads * d_head]
        k, v = (t.reshape(b, p, nkv, dh) for t in kv.split(nkv * dh, dim=-1))
        if ctx.rotary is not None:
            k = self._rotate(k, ctx.rotary)
        return k, v

    def repeat_kv_heads(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Key/value heads along ``dim`` repeated to one per query head (grouped-query attention)."""
        rep = self.n_heads // self.n_kv_heads
        return t.repeat_interleave(rep, dim=dim) if rep > 1 else t

    def _rotate(self, t: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return apply_rotary(t, rotary[0], rotary[1], self.cfg.rotary_adjacent_pairs)

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """Scores and pattern materialized for the hooks: [batch, head_index, query_pos, key_pos]."""
        k, v = self.repeat_kv_heads(k, dim=1), self.repeat_kv_heads(v, dim=1)
        scores = q @ k.transpose(-1, -2) / self.cfg.attn_scale
        mask = ctx.mask
        if mask is None and ctx.causal:
            q_len, k_len = scores.shape[-2:]
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        if mask is not None and mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        elif mask is not None:
            scores = scores + mask  # an additive (float) mask
        scores = self.hook_attn_scores(scores)
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        pattern = self.hook_pattern(torch.nan_to_num(pattern, nan=0.0))
        return pattern @ v  # [batch, head_index, query_pos, d_head]


class GroupedQueryAttention(Attention):
    """TransformerLens's ``GroupedQueryAttention``: ``cfg.n_key_value_heads`` key/value heads, stored
    unrepeated (``_W_K``/``_W_V``/``_b_K``/``_b_V`` [n_key_value_heads, ...]); ``W_K``/``W_V``/
    ``b_K``/``b_V`` repeat them to one per query head."""

    def __init__(self, cfg: ConfigLike, attn_type: str = "global", layer_id: int | None = None) -> None:
        cfg = as_config(cfg)
        if cfg.n_key_value_heads is None:
            raise ValueError("GroupedQueryAttention needs cfg.n_key_value_heads")
        super().__init__(cfg, attn_type, layer_id)


def attention_class(cfg: ConfigLike) -> type[Attention]:
    """The class TransformerLens builds for ``cfg``: grouped-query when key/value heads are fewer."""
    cfg = as_config(cfg)
    return GroupedQueryAttention if int(cfg.n_key_value_heads or cfg.n_heads) != cfg.n_heads else Attention


def _head_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x`` [batch, pos, d_model] or [batch, pos, head_index, d_model] through per-head weights
    ``w`` [head_index, d_model, d_head] -> [batch, pos, head_index, d_head]."""
    if x.dim() == 3:
        return torch.einsum("bpd,ndh->bpnh", x, w) + b
    return torch.einsum("bpnd,ndh->bpnh", x, w) + b
