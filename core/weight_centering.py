"""Centring the weights that write to the residual stream and the unembedding; untying embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from telelens.core.weight_edits import (
    center_rows_over_last,
    column_mean,
    is_tied,
    logger,
    tied_error,
    update_rows,
)

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


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
        if is_tied(model):
            logger.warning(
                "center_writing_weights: embeddings are tied, so W_E is left uncentred (centring it "
                "would change W_U); call untie_embeddings(model) first to centre it"
            )
        else:
            center_rows_over_last(model.embed.W_E)  # [d_vocab, d_model]
        if hasattr(model, "pos_embed"):
            center_rows_over_last(model.pos_embed.W_pos)  # [n_ctx, d_model]
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


def center_unembed(model: HookedTransformer) -> None:
    """Give ``W_U`` (and ``b_U``) zero mean over the vocabulary.

    Logits change by a constant per position; log-probs are unchanged. Raises
    ``ValueError`` for tied embeddings (see :func:`untie_embeddings`).
    """
    if is_tied(model):
        raise tied_error("center_unembed")
    with torch.no_grad():
        weight = model.unembed.weight  # [d_vocab_out, d_model]
        mean = column_mean(weight)  # [d_model]
        update_rows(weight, lambda x, _: x - mean[None, :])
        bias = model.unembed.bias
        if bias is not None:
            bias.copy_(bias.float() - bias.float().mean())


def untie_embeddings(model: HookedTransformer) -> None:
    """Give the unembedding its own copy of ``W_E`` and set ``cfg.tie_word_embeddings=False``.

    Costs one extra [d_vocab, d_model] matrix (logged). A no-op when not tied.
    """
    if not is_tied(model):
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
