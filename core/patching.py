"""Activation patching (TransformerLens's ``patching`` module: same names, signatures and shapes).

Run the model on corrupted tokens, replace one slice of one activation (a "cell": a
layer, maybe a position, a head, ...) with its value from a clean run, and record
``patching_metric(logits)``. :func:`generic_activation_patch` does this for every cell
of the axes it is given; the ``get_act_patch_*`` helpers fix the activation, the patch
setter and the axes for the common cases.

One runner (:mod:`telelens.core.sweeps.runner`, shared with the graph's ``Sweep`` node) has
two implementations that give the same grids (fp32: within ~1e-6):

- the engine of :mod:`telelens.core.sweeps` (``method="fast"``) runs many patched variants
  per forward pass, each resumed from the corrupted run at the patched layer and position,
  and unembeds only the positions the metric reads;
- ``method="naive"``: one full forward pass per cell, as TransformerLens does.

The default ``method="auto"`` uses the engine and falls back to the loop where the engine
cannot run (hook functions attached to the model, an activation outside the blocks).
See docs/patching.md.

Besides the TransformerLens helpers: :func:`attribution_patch` (the gradient approximation,
one forward and one backward) and :func:`ablation_sweep` (zero/mean ablation of every head or
neuron, batched).

This module gathers the names; the code lives in :mod:`telelens.core.sweeps`:
``generic`` (:func:`generic_activation_patch`), ``setters`` (the patch setters),
``helpers`` (the ``get_act_patch_*`` table), ``attribution`` and ``ablation``.
"""

from __future__ import annotations

from telelens.core.sweeps.ablation import AblationKind, AblationOver, ablation_sweep
from telelens.core.sweeps.attribution import AttributionResult, attribution_patch
from telelens.core.sweeps.generic import (
    AXIS_NAMES,
    AxisNames,
    IndexTable,
    PatchingMetric,
    generic_activation_patch,
)
from telelens.core.sweeps.helpers import (
    HELPERS,
    get_act_patch_attn_head_all_pos_every,
    get_act_patch_attn_head_by_pos_every,
    get_act_patch_attn_head_k_all_pos,
    get_act_patch_attn_head_k_by_pos,
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_pattern_all_pos,
    get_act_patch_attn_head_pattern_by_pos,
    get_act_patch_attn_head_pattern_dest_src_pos,
    get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_q_by_pos,
    get_act_patch_attn_head_v_all_pos,
    get_act_patch_attn_head_v_by_pos,
    get_act_patch_attn_out,
    get_act_patch_block_every,
    get_act_patch_mlp_out,
    get_act_patch_resid_mid,
    get_act_patch_resid_pre,
)
from telelens.core.sweeps.runner import Method
from telelens.core.sweeps.setters import (
    PatchSetter,
    layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_pos_patch_setter,
)

__all__ = [
    "AXIS_NAMES",
    "HELPERS",
    "AblationKind",
    "AblationOver",
    "AttributionResult",
    "AxisNames",
    "IndexTable",
    "Method",
    "PatchSetter",
    "PatchingMetric",
    "ablation_sweep",
    "attribution_patch",
    "generic_activation_patch",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_out",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
]
