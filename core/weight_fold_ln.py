"""Folding the norms into the weights that read them (TransformerLens's ``fold_ln``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from telelens.core.components.norm import Norm
from telelens.core.weight_centering import untie_embeddings
from telelens.core.weight_edits import (
    PRE_KIND,
    block_norms,
    ensure_mlp_bias,
    ensure_qkv_bias,
    ensure_unembed_bias,
    is_tied,
    logger,
    set_pre,
    update_rows,
)

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


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
        ensure_unembed_bias(model)
    bias = unembed.bias

    def fold(rows_w: torch.Tensor, rows: slice) -> torch.Tensor:  # rows_w: [chunk, d_model]
        if b is not None:
            assert bias is not None
            bias[rows].copy_(bias[rows].float() + rows_w @ b)
        rows_w = rows_w * w[None, :]
        if center:
            rows_w = rows_w - rows_w.mean(-1, keepdim=True)
        return rows_w

    update_rows(unembed.weight, fold)
    set_pre(norm)


def folds_final_norm(model: HookedTransformer) -> bool:
    """Whether :func:`fold_layer_norm` has a final norm weight to fold (and so unties tied embeddings)."""
    return (
        model.cfg.normalization_type is not None
        and model.ln_final is not None
        and model.ln_final.w is not None
    )


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

    With tied embeddings the unembedding first gets its own copy of ``W_E``
    (:func:`~telelens.core.weight_centering.untie_embeddings`, logged with its cost) so that
    ``ln_final`` folds into ``W_U`` alone, as TransformerLens (whose ``W_U`` is always its own
    tensor) folds it: ``W_U = diag(ln_final.w) @ W_E.T`` (LN: centred, and ``ln_final.b``
    folded into ``b_U``), ``ln_final`` becomes Pre, and direct logit attribution through
    ``W_U`` adds up to the logits.
    """
    cfg = model.cfg
    if cfg.normalization_type is None:
        logger.warning("fold_ln: this model has no normalization layers; nothing to fold")
        return
    norms = [n for n in block_norms(model) if n.w is not None]
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
            ensure_qkv_bias(model)
            if not cfg.attn_only:
                ensure_mlp_bias(model)
        for block in model.blocks:
            ln1 = block.ln1
            if isinstance(ln1, Norm) and ln1.w is not None:
                attn = block.attn
                rows = slice(None) if center else None
                _fold_norm_into(ln1, attn.qkv_weight, attn.qkv_bias, rows)
                set_pre(ln1)
            ln2 = getattr(block, "ln2", None)
            if isinstance(ln2, Norm) and ln2.w is not None:
                mlp = block.mlp
                # TransformerLens centres W_in but not W_gate; gate rows come first.
                rows = slice(mlp.d_mlp if mlp.gated else 0, None) if center else None
                _fold_norm_into(ln2, mlp.in_weight, mlp.in_bias, rows)
                set_pre(ln2)

        if final is not None:
            if is_tied(model):  # folding into the shared tensor would rescale W_E too
                logger.warning("fold_ln: embeddings are tied; W_U gets its own copy to fold ln_final into")
                untie_embeddings(model)
            _fold_final_norm(model, center)
            cfg.extra.pop("ln_final_kind", None)  # set by older versions, which kept a tied ln_final

    if cfg.normalization_type in PRE_KIND:
        cfg.normalization_type = PRE_KIND[cfg.normalization_type]
