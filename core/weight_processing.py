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

Tied embeddings (``unembed.weight is embed.W_E``): :func:`fold_layer_norm` unties them (it
logs the extra copy of ``W_E``) so that ``ln_final`` folds into ``W_U`` alone, as in
TransformerLens, whose ``W_U`` is always its own tensor; other steps that would change one
side through the other skip that part (and log why), or, for :func:`center_unembed` without
``fold_ln``, raise until :func:`untie_embeddings` is called.

This module runs the pipeline (:func:`process_weights`); the steps live in
:mod:`~telelens.core.weight_fold_ln`, :mod:`~telelens.core.weight_centering` and
:mod:`~telelens.core.weight_attn_rewrites`, over the helpers of :mod:`~telelens.core.weight_edits`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from telelens.core.weight_attn_rewrites import (
    check_refactorable,
    fold_value_biases,
    refactor_factored_attn_matrices,
)
from telelens.core.weight_centering import center_unembed, center_writing_weights, untie_embeddings
from telelens.core.weight_edits import is_tied, logger, tied_error
from telelens.core.weight_fold_ln import fold_layer_norm, folds_final_norm

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

__all__ = [
    "center_unembed",
    "center_writing_weights",
    "fold_layer_norm",
    "fold_value_biases",
    "process_weights",
    "refactor_factored_attn_matrices",
    "untie_embeddings",
]

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
    untouched, so ``model.setup()`` is not needed. ``fold_ln`` unties tied embeddings (see
    :func:`fold_layer_norm`); without it, ``center_unembed`` on a tied model raises
    ``ValueError`` before changing anything.
    """
    cfg = model.cfg
    # Refuse up front, so a failing request never leaves the model half processed.
    if center_unembed and is_tied(model) and not (fold_ln and folds_final_norm(model)):
        raise tied_error("process_weights(center_unembed=True)")
    if refactor_factored_attn_matrices:
        check_refactorable(cfg)
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
