"""Multi-head / grouped-query attention, written once for every architecture.

Q, K and V come from one fused projection ``qkv_weight`` [(n_heads + 2 * n_kv_heads) * d_head,
d_model]; ``W_Q``/``W_K``/``W_V``/``W_O`` are TransformerLens-shaped views of the stored
weights. The fused kernel (``scaled_dot_product_attention``) runs unless a hook listens
to ``hook_attn_scores`` or ``hook_pattern`` in this layer; then this layer alone computes
scores and pattern explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.components.rotary import apply_rotary
from telelens.core.config import HookedTransformerConfig
from telelens.core.hook_points import HookPoint
from telelens.lens.factored_matrix import FactoredMatrix


@dataclass
class AttentionContext:
    """What every layer needs besides its input, computed once per forward pass.

    ``mask`` is None for a plain causal pass (the fused kernel's ``is_causal``), else a
    bool tensor [batch or 1, 1, query_pos, key_pos] that is True where a query may attend.
    ``rotary`` holds the (cos, sin) tables for this pass's query positions.
    """

    mask: torch.Tensor | None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None

    def to(self, device: torch.device) -> AttentionContext:
        mask = None if self.mask is None else self.mask.to(device)
        rot = None if self.rotary is None else (self.rotary[0].to(device), self.rotary[1].to(device))
        return AttentionContext(mask, rot)


class LayerKVCache:
    """Keys and values seen so far by one layer, [batch, pos, n_kv_heads, d_head] each."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat((self.k, k), dim=1)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=1)
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, layer: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.layer = layer
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

    def _project_per_head(
        self, q_in: torch.Tensor, k_in: torch.Tensor, v_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head inputs [batch, pos, head_index, d_model] (split-qkv / attn_in hooks)."""
        q = torch.einsum("bpnd,ndh->bpnh", q_in, self.W_Q) + self.b_Q
        k = torch.einsum("bpnd,ndh->bpnh", k_in, self._W_K) + self._b_K
        v = torch.einsum("bpnd,ndh->bpnh", v_in, self._W_V) + self._b_V
        return q, k, v

    def forward(
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor | None = None,
        value_input: torch.Tensor | None = None,
        ctx: AttentionContext | None = None,
        kv_cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        """``query_input`` [batch, pos, d_model], or per-head [batch, pos, head_index, d_model]
        together with ``key_input``/``value_input``. Returns [batch, pos, d_model]."""
        ctx = ctx or AttentionContext(mask=None)
        if key_input is None:
            q, k, v = self._project(query_input)
        else:
            assert value_input is not None
            q, k, v = self._project_per_head(query_input, key_input, value_input)
        # Split outputs are views of one tensor; hooks may edit in place under autograd, so
        # a listened-to projection gets its own storage (only then: no cost when silent).
        q = self.hook_q(q.clone() if self.hook_q.active else q)
        k = self.hook_k(k.clone() if self.hook_k.active else k)
        v = self.hook_v(v.clone() if self.hook_v.active else v)
        if ctx.rotary is not None:
            q = self.hook_rot_q(self._rotate(q, ctx.rotary))
            k = self.hook_rot_k(self._rotate(k, ctx.rotary))
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)

        q_, k_, v_ = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [batch, head, pos, d_head]
        if self.hook_attn_scores.active or self.hook_pattern.active:
            z = self._explicit_attention(q_, k_, v_, ctx.mask)
        else:
            is_causal = ctx.mask is None and q_.shape[2] == k_.shape[2] and q_.shape[2] > 1
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
        rep = self.cfg.repeat_kv_heads
        return t.repeat_interleave(rep, dim=dim) if rep > 1 else t

    def _rotate(self, t: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return apply_rotary(t, rotary[0], rotary[1], self.cfg.rotary_adjacent_pairs)

    def _explicit_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Scores and pattern materialized for the hooks: [batch, head_index, query_pos, key_pos]."""
        k, v = self.repeat_kv_heads(k, dim=1), self.repeat_kv_heads(v, dim=1)
        scores = q @ k.transpose(-1, -2) / self.cfg.attn_scale
        if mask is None:
            q_len, k_len = scores.shape[-2:]
            mask = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
        pattern = self.hook_pattern(torch.nan_to_num(pattern, nan=0.0))
        return pattern @ v  # [batch, head_index, query_pos, d_head]
