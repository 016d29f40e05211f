"""TransformerLens's ``get_act_patch_*`` helpers: one table, each helper a row of it.

A helper fixes the activation, the axes and the patch setter of
:func:`~telelens.core.sweeps.generic.generic_activation_patch` (as TransformerLens's partials
do); :data:`HELPERS` lists them by name (``get_act_patch_<name>``). Each row's activation and
axes come from the shared :data:`telelens.trace.helper_grids.HELPER_GRIDS` (which the graph
front end's ``Sweep`` helpers read too); this module adds the core's setter and docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

from telelens.core.sweeps.generic import AxisNames, PatchingMetric, generic_activation_patch
from telelens.core.sweeps.setters import (
    PatchSetter,
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
)
from telelens.trace.helper_grids import HELPER_GRIDS

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


@dataclass(frozen=True)
class Helper:
    """One ``get_act_patch_*`` helper: what it patches, over which axes, with which setter."""

    activation: str
    axes: tuple[AxisNames, ...]
    setter: PatchSetter
    doc: str


_SETTERS_AND_DOCS: dict[str, tuple[PatchSetter, str]] = {
    "resid_pre": (
        layer_pos_patch_setter,
        "Patch the residual stream entering each block, by position: [n_layers, pos].",
    ),
    "resid_mid": (
        layer_pos_patch_setter,
        "Patch the residual stream between attention and MLP, by position: [n_layers, pos].",
    ),
    "attn_out": (
        layer_pos_patch_setter,
        "Patch each attention layer's output, by position: [n_layers, pos].",
    ),
    "mlp_out": (
        layer_pos_patch_setter,
        "Patch each MLP layer's output, by position: [n_layers, pos].",
    ),
    "attn_head_out_by_pos": (
        layer_pos_head_vector_patch_setter,
        "Patch each head's output (z), by position: [n_layers, pos, n_heads].",
    ),
    "attn_head_q_by_pos": (
        layer_pos_head_vector_patch_setter,
        "Patch each head's queries, by position: [n_layers, pos, n_heads].",
    ),
    "attn_head_k_by_pos": (
        layer_pos_head_vector_patch_setter,
        "Patch each key head's keys, by position: [n_layers, pos, n_key_value_heads] (= n_heads without GQA).",
    ),
    "attn_head_v_by_pos": (
        layer_pos_head_vector_patch_setter,
        "Patch each value head's values, by position: [n_layers, pos, n_key_value_heads] (= n_heads without GQA).",
    ),
    "attn_head_pattern_by_pos": (
        layer_head_pos_pattern_patch_setter,
        "Patch each head's attention pattern row, by destination position: [n_layers, n_heads, dest_pos].",
    ),
    "attn_head_pattern_dest_src_pos": (
        layer_head_dest_src_pos_pattern_patch_setter,
        "Patch each single attention pattern entry: [n_layers, n_heads, dest_pos, src_pos].",
    ),
    "attn_head_out_all_pos": (
        layer_head_vector_patch_setter,
        "Patch each head's output (z) at every position: [n_layers, n_heads].",
    ),
    "attn_head_q_all_pos": (
        layer_head_vector_patch_setter,
        "Patch each head's queries at every position: [n_layers, n_heads].",
    ),
    "attn_head_k_all_pos": (
        layer_head_vector_patch_setter,
        "Patch each key head's keys at every position: [n_layers, n_key_value_heads] (= n_heads without GQA).",
    ),
    "attn_head_v_all_pos": (
        layer_head_vector_patch_setter,
        "Patch each value head's values at every position: [n_layers, n_key_value_heads] (= n_heads without GQA).",
    ),
    "attn_head_pattern_all_pos": (
        layer_head_pattern_patch_setter,
        "Patch each head's whole attention pattern: [n_layers, n_heads].",
    ),
}
"""The core's part of each helper (its patch setter and docstring); the rest is the shared grid."""

HELPERS: dict[str, Helper] = {
    name: Helper(grid.activation, cast("tuple[AxisNames, ...]", grid.axes), *_SETTERS_AND_DOCS[name])
    for name, grid in HELPER_GRIDS.items()
}
"""Helper name (``get_act_patch_<name>``) -> its activation, axes (from the shared
:data:`~telelens.trace.helper_grids.HELPER_GRIDS`) and setter."""

_ARGS_DOC = """

    Args:
        model: The model.
        corrupted_tokens: Tokens of the corrupted run, [batch, pos].
        clean_cache: Activations of the clean run (ActivationCache or dict, with batch dim).
        patching_metric: Logits [batch, pos, d_vocab_out] -> scalar.

    See :func:`generic_activation_patch`.
    """


def _helper(name: str) -> Any:
    """The ``generic_activation_patch`` partial of ``HELPERS[name]`` (as in TransformerLens), documented."""
    spec = HELPERS[name]
    fn = partial(
        generic_activation_patch,
        patch_setter=spec.setter,
        activation_name=spec.activation,
        index_axis_names=spec.axes,
    )
    fn.__doc__ = spec.doc + _ARGS_DOC
    return fn


get_act_patch_resid_pre = _helper("resid_pre")
get_act_patch_resid_mid = _helper("resid_mid")
get_act_patch_attn_out = _helper("attn_out")
get_act_patch_mlp_out = _helper("mlp_out")
get_act_patch_attn_head_out_by_pos = _helper("attn_head_out_by_pos")
get_act_patch_attn_head_q_by_pos = _helper("attn_head_q_by_pos")
get_act_patch_attn_head_k_by_pos = _helper("attn_head_k_by_pos")
get_act_patch_attn_head_v_by_pos = _helper("attn_head_v_by_pos")
get_act_patch_attn_head_pattern_by_pos = _helper("attn_head_pattern_by_pos")
get_act_patch_attn_head_pattern_dest_src_pos = _helper("attn_head_pattern_dest_src_pos")
get_act_patch_attn_head_out_all_pos = _helper("attn_head_out_all_pos")
get_act_patch_attn_head_q_all_pos = _helper("attn_head_q_all_pos")
get_act_patch_attn_head_k_all_pos = _helper("attn_head_k_all_pos")
get_act_patch_attn_head_v_all_pos = _helper("attn_head_v_all_pos")
get_act_patch_attn_head_pattern_all_pos = _helper("attn_head_pattern_all_pos")


def _pad_heads(result: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Zero-pad a key/value-head axis (last) to n_heads so GQA results stack with the others."""
    return F.pad(result, (0, n_heads - result.shape[-1]))


def get_act_patch_block_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """resid_pre, attn_out and mlp_out patching stacked: [3, n_layers, pos].

    Keyword arguments (``method``, ``logit_positions``, ...) go to each helper.
    """
    return torch.stack(
        [
            get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_out(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_mlp_out(model, corrupted_tokens, clean_cache, metric, **kwargs),
        ]
    )


def get_act_patch_attn_head_all_pos_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-head patching at every position of output, q, k, v and pattern, stacked: [5, n_layers, n_heads].

    Under GQA the k and v rows hold n_key_value_heads values, zero-padded to n_heads. Keyword
    arguments (``method``, ``logit_positions``, ...) go to each helper.
    """
    n_heads = model.cfg.n_heads
    return torch.stack(
        [
            get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_head_q_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            _pad_heads(
                get_act_patch_attn_head_k_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            _pad_heads(
                get_act_patch_attn_head_v_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            get_act_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
        ]
    )


def get_act_patch_attn_head_by_pos_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-head, per-position patching of output, q, k, v and pattern, stacked: [5, n_layers, pos, n_heads].

    The pattern row is patched per destination position. Under GQA the k and v rows hold
    n_key_value_heads values, zero-padded to n_heads. Keyword arguments (``method``, ...) go to
    each helper.
    """
    n_heads = model.cfg.n_heads
    return torch.stack(
        [
            get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_head_q_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            _pad_heads(
                get_act_patch_attn_head_k_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            _pad_heads(
                get_act_patch_attn_head_v_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            # [n_layers, n_heads, dest_pos] -> [n_layers, pos, n_heads]
            get_act_patch_attn_head_pattern_by_pos(
                model, corrupted_tokens, clean_cache, metric, **kwargs
            ).permute(0, 2, 1),
        ]
    )
