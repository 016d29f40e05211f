"""TransformerLens's weight processing, applied in place to a :class:`HookedTransformer`.

Each step rewrites the stored parameters (``qkv_weight``, ``o_weight``, ``in_weight``, ...)
under ``torch.no_grad()`` without building a second copy of the model: arithmetic runs in
fp32 one tensor (or one row chunk of a large embedding) at a time and is written back in
the parameter's own dtype. Semantics follow TransformerLens 3.9's ``ProcessWeights``:

- :func:`fold_layer_norm`: norm weights (and LN biases) move into the weights and biases
  that read the normalized residual; the norms become ``LNPre``/``RMSPre``. For LN the
  reading weights are also centred over ``d_model`` (their input has zero mean).
- :func:`center_writing_weights`: every weight writing to the residual stream gets zero
  mean over ``d_model`` (LN models only: LayerNorm removes that mean anyway).
- :func:`center_unembed`: ``W_U`` gets zero mean over the vocabulary (logits shift by a
  constant per position; log-probs are unchanged).
- :func:`fold_value_biases`: ``b_V`` moves through ``W_O`` into ``b_O`` (patterns sum to 1).
- :func:`refactor_factored_attn_matrices`: balanced SVD factorisations of ``W_QK``/``W_OV``.

Tied embeddings (``unembed.weight is embed.W_E``) are never untied silently: steps that
would change one side through the other skip that part (and log why), or, for
:func:`center_unembed`, raise until :func:`untie_embeddings` is called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from telelens.core.components.attention import Attention
from telelens.core.components.norm import Norm
from telelens.core.config import HookedTransformerConfig
from telelens.lens.factored_matrix import FactoredMatrix

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

logger = logging.getLogger(__name__)

# Row chunks of the (possibly huge) embedding / unembedding hold at most this many elements,
# so fp32 temporaries stay small even for 150k-token vocabularies in bf16.
_CHUNK_ELEMENTS = 1 << 24

_PRE_KIND = {"LN": "LNPre", "RMS": "RMSPre"}


# ---------------------------------------------------------------------------- helpers
def _is_tied(model: HookedTransformer) -> bool:
    return model.unembed.weight is model.embed.W_E


def _norms(model: HookedTransformer) -> list[Norm]:
    """Every block norm (ln1, ln2), in order; the final norm is handled on its own."""
    out: list[Norm] = []
    for block in model.blocks:
        for name in ("ln1", "ln2"):
            norm = getattr(block, name, None)
            if isinstance(norm, Norm):
                out.append(norm)
    return out


def _set_pre(norm: Norm) -> None:
    """Turn a folded norm into its weight-less variant (its hooks stay as they are)."""
    norm.kind = _PRE_KIND.get(norm.kind, norm.kind)
    norm.w = None  # type: ignore[assignment]
    norm.b = None


def _new_bias(like: torch.Tensor, n: int) -> nn.Parameter:
    return nn.Parameter(
        torch.zeros(n, dtype=like.dtype, device=like.device), requires_grad=like.requires_grad
    )


def _ensure_qkv_bias(model: HookedTransformer) -> None:
    """Give every attention a (zero) ``qkv_bias`` so folded LN biases have somewhere to go."""
    for block in model.blocks:
        attn = block.attn
        if attn.qkv_bias is None:
            attn.qkv_bias = _new_bias(attn.qkv_weight, attn.qkv_weight.shape[0])
    model.cfg.attn_bias = True


def _ensure_attn_out_bias(model: HookedTransformer) -> None:
    for block in model.blocks:
        attn = block.attn
        if attn.o_bias is None:
            attn.o_bias = _new_bias(attn.o_weight, attn.o_weight.shape[0])
    model.cfg.attn_out_bias = True


def _ensure_mlp_bias(model: HookedTransformer) -> None:
    # cfg.mlp_bias covers both MLP biases, so both are created to keep cfg and params in step.
    for block in model.blocks:
        mlp = block.mlp
        if mlp.in_bias is None:
            mlp.in_bias = _new_bias(mlp.in_weight, mlp.in_weight.shape[0])
        if mlp.out_bias is None:
            mlp.out_bias = _new_bias(mlp.out_weight, mlp.out_weight.shape[0])
    model.cfg.mlp_bias = True


def _ensure_unembed_bias(model: HookedTransformer) -> None:
    if model.unembed.bias is None:
        model.unembed.bias = _new_bias(model.unembed.weight, model.unembed.weight.shape[0])
    model.cfg.unembed_bias = True


def _update_rows(param: torch.Tensor, fn: Callable[[torch.Tensor, slice], torch.Tensor]) -> None:
    """``param[rows] = fn(param[rows].float(), rows)`` chunk by chunk over dim 0 (in place)."""
    n_rows = param.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, param[0].numel()))
    for start in range(0, n_rows, step):
        rows = slice(start, min(n_rows, start + step))
        param[rows].copy_(fn(param[rows].float(), rows))


def _center_rows_over_last(param: torch.Tensor) -> None:
    """Subtract each row's mean over the last dim (d_model for [*, d_model] layouts)."""
    _update_rows(param, lambda x, _: x - x.mean(-1, keepdim=True))


def _column_mean(param: torch.Tensor) -> torch.Tensor:
    """Mean over dim 0 in fp32, accumulated chunk by chunk: [d_model]."""
    total = torch.zeros(param.shape[1:], dtype=torch.float32, device=param.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, param[0].numel()))
    for start in range(0, param.shape[0], step):
        total += param[start : start + step].float().sum(0)
    return total / param.shape[0]


# ---------------------------------------------------------------------------- fold_ln
def _fold_norm_into(
    norm: Norm,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    center_rows: slice | None,
) -> None:
    """Fold ``norm``'s affine map into the linear layer ``(weight, bias)`` that reads it.

    ``weight`` is [out, d_model] (F.linear layout). LN(x) = x_hat * w + b, so
    ``W @ LN(x) + c == (W * w) @ x_hat + (W @ b + c)``. ``center_rows`` selects the rows
    to centre over d_model afterwards (LN only: x_hat has zero mean, so the row mean of W
    never contributes).
    """
    dev = weight.device
    w = norm.w.detach().float().to(dev)  # [d_model]
    W = weight.float()  # [out, d_model]
    if norm.b is not None:
        assert bias is not None, "an LN bias needs a bias parameter to fold into"
        bias.copy_(bias.float() + W @ norm.b.detach().float().to(dev))
    W = W * w[None, :]
    if center_rows is not None:
        W[center_rows] -= W[center_rows].mean(-1, keepdim=True)
    weight.copy_(W)


def _fold_final_norm(model: HookedTransformer, center: bool) -> None:
    norm = model.ln_final
    assert norm is not None and norm.w is not None
    unembed = model.unembed
    dev = unembed.weight.device
    w = norm.w.detach().float().to(dev)  # [d_model]
    b = None if norm.b is None else norm.b.detach().float().to(dev)
    if b is not None:
        _ensure_unembed_bias(model)
    bias = unembed.bias

    def fold(rows_w: torch.Tensor, rows: slice) -> torch.Tensor:  # rows_w: [chunk, d_model]
        if b is not None:
            assert bias is not None
            bias[rows].copy_(bias[rows].float() + rows_w @ b)
        rows_w = rows_w * w[None, :]
        if center:
            rows_w = rows_w - rows_w.mean(-1, keepdim=True)
        return rows_w

    _update_rows(unembed.weight, fold)
    _set_pre(norm)


def fold_layer_norm(model: HookedTransformer, center_weights: bool | None = None) -> None:
    """Fold every norm's weight (and LN bias) into the weights that read its output.

    Block norms fold into the Q/K/V rows of ``qkv_weight`` (``ln1``) and into the MLP's
    ``in_weight`` including the gate rows (``ln2``, also for parallel attention + MLP);
    ``ln_final`` folds into the unembedding. Missing biases are created (and the matching
    cfg flag set) where an LN bias has to go. Folded norms become ``LNPre``/``RMSPre``
    and ``cfg.normalization_type`` follows.

    ``center_weights`` (default: True for LN, False for RMS, as in TransformerLens)
    centres the reading weights over ``d_model``: Q/K/V, ``W_in`` (not ``W_gate``, as in
    TransformerLens) and ``W_U``.

    With tied embeddings ``ln_final`` is left unfolded (folding would rescale ``W_E``):
    the blocks become Pre while ``ln_final`` keeps its weights; ``cfg.extra["ln_final_kind"]``
    records that.
    """
    cfg = model.cfg
    if cfg.normalization_type is None:
        logger.warning("fold_ln: this model has no normalization layers; nothing to fold")
        return
    norms = [n for n in _norms(model) if n.w is not None]
    final = model.ln_final if model.ln_final is not None and model.ln_final.w is not None else None
    if not norms and final is None:
        logger.warning("fold_ln: the norms are already folded (%s); skipping", cfg.normalization_type)
        return
    is_ln = any(n.kind == "LN" for n in [*norms, *([final] if final is not None else [])])
    center = is_ln if center_weights is None else center_weights
    if center and not is_ln:
        raise ValueError("center_weights is only valid for LayerNorm models (RMSNorm keeps the mean)")

    with torch.no_grad():
        if any(n.b is not None for n in norms):
            _ensure_qkv_bias(model)
            if not cfg.attn_only:
                _ensure_mlp_bias(model)
        for block in model.blocks:
            ln1 = block.ln1
            if isinstance(ln1, Norm) and ln1.w is not None:
                attn = block.attn
                rows = slice(None) if center else None
                _fold_norm_into(ln1, attn.qkv_weight, attn.qkv_bias, rows)
                _set_pre(ln1)
            ln2 = getattr(block, "ln2", None)
            if isinstance(ln2, Norm) and ln2.w is not None:
                mlp = block.mlp
                # TransformerLens centres W_in but not W_gate; gate rows come first.
                rows = slice(mlp.d_mlp if mlp.gated else 0, None) if center else None
                _fold_norm_into(ln2, mlp.in_weight, mlp.in_bias, rows)
                _set_pre(ln2)

        if final is not None:
            if _is_tied(model):
                cfg.extra["ln_final_kind"] = final.kind
                logger.warning(
                    "fold_ln: embeddings are tied, so folding ln_final into W_U would also change W_E; "
                    "ln_final stays %s (with its weights) while the block norms become %s. "
                    "Call untie_embeddings(model) first to fold it too.",
                    final.kind,
                    _PRE_KIND[final.kind],
                )
            else:
                _fold_final_norm(model, center)
                cfg.extra.pop("ln_final_kind", None)

    if cfg.normalization_type in _PRE_KIND:
        cfg.normalization_type = _PRE_KIND[cfg.normalization_type]


# ---------------------------------------------------------------------------- centering
def center_writing_weights(model: HookedTransformer) -> None:
    """Give every weight writing to the residual stream zero mean over ``d_model``.

    Applies to ``W_E``, ``W_pos``, ``W_O``/``b_O`` and ``W_out``/``b_out``. Only exact for
    LayerNorm models (every reader removes the mean first); RMSNorm models and models
    without norms are skipped with a log, as in TransformerLens. With tied embeddings
    ``W_E`` is skipped (centring it would change the unembedding too).
    """
    cfg = model.cfg
    if cfg.normalization_type not in ("LN", "LNPre") or cfg.final_rms:
        logger.warning(
            "center_writing_weights: skipped for normalization_type=%s (only LayerNorm removes the "
            "residual mean, so centring would change the model)",
            cfg.normalization_type,
        )
        return
    with torch.no_grad():
        if _is_tied(model):
            logger.warning(
                "center_writing_weights: embeddings are tied, so W_E is left uncentred (centring it "
                "would change W_U); call untie_embeddings(model) first to centre it"
            )
        else:
            _center_rows_over_last(model.embed.W_E)  # [d_vocab, d_model]
        if hasattr(model, "pos_embed"):
            _center_rows_over_last(model.pos_embed.W_pos)  # [n_ctx, d_model]
        for block in model.blocks:
            attn = block.attn
            # o_weight [d_model, n_heads * d_head]: d_model is dim 0.
            attn.o_weight.copy_(attn.o_weight.float() - attn.o_weight.float().mean(0, keepdim=True))
            if attn.o_bias is not None:
                attn.o_bias.copy_(attn.o_bias.float() - attn.o_bias.float().mean())
            if not cfg.attn_only:
                mlp = block.mlp
                mlp.out_weight.copy_(mlp.out_weight.float() - mlp.out_weight.float().mean(0, keepdim=True))
                if mlp.out_bias is not None:
                    mlp.out_bias.copy_(mlp.out_bias.float() - mlp.out_bias.float().mean())


def _tied_error(step: str) -> ValueError:
    return ValueError(
        f"{step}: this model ties its embeddings (unembed.weight is embed.W_E), so changing W_U "
        "would change W_E too. Call telelens.core.weight_processing.untie_embeddings(model) first "
        "(costs one extra d_vocab x d_model matrix), or pass center_unembed=False."
    )


def center_unembed(model: HookedTransformer) -> None:
    """Give ``W_U`` (and ``b_U``) zero mean over the vocabulary.

    Logits change by a constant per position; log-probs are unchanged. Raises
    ``ValueError`` for tied embeddings (see :func:`untie_embeddings`).
    """
    if _is_tied(model):
        raise _tied_error("center_unembed")
    with torch.no_grad():
        weight = model.unembed.weight  # [d_vocab_out, d_model]
        mean = _column_mean(weight)  # [d_model]
        _update_rows(weight, lambda x, _: x - mean[None, :])
        bias = model.unembed.bias
        if bias is not None:
            bias.copy_(bias.float() - bias.float().mean())


def untie_embeddings(model: HookedTransformer) -> None:
    """Give the unembedding its own copy of ``W_E`` and set ``cfg.tie_word_embeddings=False``.

    Costs one extra [d_vocab, d_model] matrix (logged). A no-op when not tied.
    """
    if not _is_tied(model):
        return
    W_E = model.embed.W_E
    cost = W_E.numel() * W_E.element_size()
    with torch.no_grad():
        model.unembed.weight = nn.Parameter(W_E.detach().clone(), requires_grad=W_E.requires_grad)
    model.cfg.tie_word_embeddings = False
    logger.warning(
        "untie_embeddings: the unembedding now has its own copy of W_E (%.1f MiB extra, %s on %s)",
        cost / 2**20,
        W_E.dtype,
        W_E.device,
    )


# ---------------------------------------------------------------------------- value biases
def _fold_value_bias_layer(attn: Attention, model: HookedTransformer) -> None:
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
        _ensure_attn_out_bias(model)
    attn.o_bias.copy_(attn.o_bias.float() + contribution)
    attn.qkv_bias[v_rows].zero_()


def fold_value_biases(model: HookedTransformer) -> None:
    """Fold ``b_V`` through ``W_O`` into ``b_O`` and zero ``b_V``.

    Attention patterns sum to 1, so the value bias adds a constant ``b_V @ W_O`` per head
    to the layer output. Under GQA the bias lives per KV head and is counted once per
    query head that reads it. ``o_bias`` is created (``cfg.attn_out_bias=True``) if needed.
    """
    with torch.no_grad():
        for block in model.blocks:
            _fold_value_bias_layer(block.attn, model)


# ---------------------------------------------------------------------------- refactor
def _check_refactorable(cfg: HookedTransformerConfig) -> None:
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
    _check_refactorable(model.cfg)
    with torch.no_grad():
        for block in model.blocks:
            attn = block.attn
            nh, dh = attn.n_heads, attn.d_head
            q_rows, k_rows = slice(0, nh * dh), slice(nh * dh, 2 * nh * dh)
            W_Q = attn.W_Q.float()  # [head_index, d_model, d_head]
            W_K = attn.W_K.float()
            has_bias = attn.qkv_bias is not None
            if has_bias:  # [head_index, d_model + 1, d_head]: the extra input coordinate is 1
                W_Q = torch.cat([W_Q, attn.b_Q.float()[:, None, :]], dim=1)
                W_K = torch.cat([W_K, attn.b_K.float()[:, None, :]], dim=1)
            W_Q, W_K_T = FactoredMatrix(W_Q, W_K.transpose(-1, -2)).make_even().pair
            W_K = W_K_T.transpose(-1, -2)
            if has_bias:
                attn.qkv_bias[q_rows].copy_(W_Q[:, -1, :].reshape(-1))
                attn.qkv_bias[k_rows].copy_(W_K[:, -1, :].reshape(-1))
                W_Q, W_K = W_Q[:, :-1, :], W_K[:, :-1, :]
            # [head_index, d_model, d_head] -> rows [head_index * d_head, d_model]
            attn.qkv_weight[q_rows].copy_(W_Q.transpose(1, 2).reshape(nh * dh, -1))
            attn.qkv_weight[k_rows].copy_(W_K.transpose(1, 2).reshape(nh * dh, -1))

            _fold_value_bias_layer(attn, model)
            U, S, V = FactoredMatrix(attn.W_V.float(), attn.W_O.float()).svd()
            W_V = U * S[..., None, :]  # [head_index, d_model, d_head]
            W_O = V.transpose(-1, -2)  # [head_index, d_head, d_model]
            v_rows = slice(2 * nh * dh, 3 * nh * dh)
            attn.qkv_weight[v_rows].copy_(W_V.transpose(1, 2).reshape(nh * dh, -1))
            attn.o_weight.copy_(W_O.permute(2, 0, 1).reshape(-1, nh * dh))


# ---------------------------------------------------------------------------- pipeline
# process_weights's flags share the steps' names; these aliases reach the functions.
_center_writing_weights = center_writing_weights
_center_unembed = center_unembed
_fold_value_biases = fold_value_biases
_refactor_factored_attn_matrices = refactor_factored_attn_matrices


def process_weights(
    model: HookedTransformer,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
    refactor_factored_attn_matrices: bool = False,
) -> None:
    """Apply TransformerLens's weight processing in place, in TransformerLens's order.

    fold_ln -> center_writing_weights (LN only) -> center_unembed -> fold_value_biases
    (then re-centre ``b_O`` for LN) -> refactor_factored_attn_matrices. Hook points are
    untouched, so ``model.setup()`` is not needed. Raises ``ValueError`` before changing
    anything when ``center_unembed`` is asked of a model with tied embeddings.
    """
    cfg = model.cfg
    # Refuse up front, so a failing request never leaves the model half processed.
    if center_unembed and _is_tied(model):
        raise _tied_error("process_weights(center_unembed=True)")
    if refactor_factored_attn_matrices:
        _check_refactorable(cfg)
    if fold_ln and cfg.dtype not in (torch.float32, torch.float64):
        logger.warning(
            "processing %s weights: folding is computed in fp32 but stored back in %s, so outputs "
            "drift slightly; from_pretrained_no_processing keeps reduced-precision logits exact",
            cfg.dtype,
            cfg.dtype,
        )

    if fold_ln:
        fold_layer_norm(model)
    if center_writing_weights:
        _center_writing_weights(model)
    if center_unembed:
        _center_unembed(model)
    if fold_value_biases:
        _fold_value_biases(model)
        if center_writing_weights and cfg.normalization_type in ("LN", "LNPre") and not cfg.final_rms:
            with torch.no_grad():  # folding b_V gave b_O a mean again
                for block in model.blocks:
                    b_O = block.attn.o_bias
                    if b_O is not None:
                        b_O.copy_(b_O.float() - b_O.float().mean())
    if refactor_factored_attn_matrices:
        _refactor_factored_attn_matrices(model)
