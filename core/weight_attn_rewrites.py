"""Rewrites of the attention weights: folding ``b_V`` into ``b_O``, and balanced SVD refactoring."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from telelens.core.components.attention import Attention
from telelens.core.config import HookedTransformerConfig
from telelens.core.weight_edits import ensure_attn_out_bias
from telelens.lens.factored_matrix import FactoredMatrix

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


def fold_value_bias_layer(attn: Attention, model: HookedTransformer) -> None:
    if attn.qkv_bias is None:
        return
    nh, nkv, dh = attn.n_heads, attn.n_kv_heads, attn.d_head
    v_rows = slice((nh + nkv) * dh, (nh + 2 * nkv) * dh)
    b_V = attn.qkv_bias[v_rows].float().view(nkv, dh)  # [kv_head_index, d_head]
    if not bool(b_V.any()):
        return
    # Each query head h reads KV head h // repeat, so the bias reaches W_O once per query head.
    b_V = b_V.repeat_interleave(nh // nkv, dim=0)  # [head_index, d_head]
    # o_weight [d_model, n_heads * d_head]: sum_h b_V[h] @ W_O[h] == o_weight @ b_V.flatten().
    contribution = attn.o_weight.float() @ b_V.reshape(-1).to(attn.o_weight.device)  # [d_model]
    if attn.o_bias is None:
        ensure_attn_out_bias(model)
    o_bias, qkv_bias = attn.o_bias, attn.qkv_bias
    assert o_bias is not None and qkv_bias is not None  # made above; b_V came from qkv_bias
    o_bias.copy_(o_bias.float() + contribution)
    qkv_bias[v_rows].zero_()


def fold_value_biases(model: HookedTransformer) -> None:
    """Fold ``b_V`` through ``W_O`` into ``b_O`` and zero ``b_V``.

    Attention patterns sum to 1, so the value bias adds a constant ``b_V @ W_O`` per head
    to the layer output. Under GQA the bias lives per KV head and is counted once per
    query head that reads it. ``o_bias`` is created (``cfg.attn_out_bias=True``) if needed.
    """
    with torch.no_grad():
        for block in model.blocks:
            fold_value_bias_layer(block.attn, model)


def check_refactorable(cfg: HookedTransformerConfig) -> None:
    if cfg.positional_embedding_type == "rotary":
        raise ValueError(
            "refactor_factored_attn_matrices: can't refactor the QK circuit with rotary embeddings "
            "(the QK matrix depends on the query and key positions)"
        )
    if cfg.repeat_kv_heads > 1:
        raise NotImplementedError(
            "refactor_factored_attn_matrices: not supported with grouped-query attention "
            f"(n_heads={cfg.n_heads}, n_key_value_heads={cfg.n_key_value_heads}): each query head "
            "would need its own K and V factors"
        )


def refactor_factored_attn_matrices(model: HookedTransformer) -> None:
    """Re-factor ``W_QK`` and ``W_OV`` into balanced SVD forms, as TransformerLens does.

    ``W_Q = U sqrt(S)``, ``W_K = V sqrt(S)`` for ``W_QK`` (biases ride along as an extra
    input coordinate that is always 1), and ``W_V = U S``, ``W_O = V^T`` for ``W_OV``
    (after folding ``b_V`` into ``b_O``). The model computes the same function.

    Raises ``ValueError`` for rotary models (``W_QK`` depends on the positions) and
    ``NotImplementedError`` under grouped-query attention (shared K/V heads cannot take a
    different factorisation per query head).
    """
    check_refactorable(model.cfg)
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            nh, dh = attn.n_heads, attn.d_head
            q_rows, k_rows = slice(0, nh * dh), slice(nh * dh, 2 * nh * dh)
            W_Q = attn.W_Q.float()  # [head_index, d_model, d_head]
            W_K = attn.W_K.float()
            qkv_bias = attn.qkv_bias
            has_bias = qkv_bias is not None
            if has_bias:  # [head_index, d_model + 1, d_head]: the extra input coordinate is 1
                W_Q = torch.cat([W_Q, attn.b_Q.float()[:, None, :]], dim=1)
                W_K = torch.cat([W_K, attn.b_K.float()[:, None, :]], dim=1)
            W_Q, W_K_T = FactoredMatrix(W_Q, W_K.transpose(-1, -2)).make_even().pair
            W_K = W_K_T.transpose(-1, -2)
            if qkv_bias is not None:
                qkv_bias[q_rows].copy_(W_Q[:, -1, :].reshape(-1))
                qkv_bias[k_rows].copy_(W_K[:, -1, :].reshape(-1))
                W_Q, W_K = W_Q[:, :-1, :], W_K[:, :-1, :]
            # [head_index, d_model, d_head] -> rows [head_index * d_head, d_model]
            attn.qkv_weight[q_rows].copy_(W_Q.transpose(1, 2).reshape(nh * dh, -1))
            attn.qkv_weight[k_rows].copy_(W_K.transpose(1, 2).reshape(nh * dh, -1))

            fold_value_bias_layer(attn, model)
            U, S, V = FactoredMatrix(attn.W_V.float(), attn.W_O.float()).svd()
            W_V = U * S[..., None, :]  # [head_index, d_model, d_head]
            W_O = V.transpose(-1, -2)  # [head_index, d_head, d_model]
            v_rows = slice(2 * nh * dh, 3 * nh * dh)
            attn.qkv_weight[v_rows].copy_(W_V.transpose(1, 2).reshape(nh * dh, -1))
            attn.o_weight.copy_(W_O.permute(2, 0, 1).reshape(-1, nh * dh))
