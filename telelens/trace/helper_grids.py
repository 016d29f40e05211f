"""TransformerLens's ``get_act_patch_*`` helpers as grids: helper name -> (activation, axes).

The one table of what each helper patches and over which axes (TransformerLens's axis names,
``"head_index"`` for the pattern helpers' head axis). The core's helpers
(:mod:`telelens.core.sweeps.helpers`) add a patch setter and a docstring to each row; the graph
front end (:mod:`telelens.trace.patching`) sweeps the rows its ``Sweep`` node can run.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HELPER_AXES", "HELPER_GRIDS", "HelperGrid"]


class HelperGrid(NamedTuple):
    """What one ``get_act_patch_*`` helper patches (activation short name) and over which axes."""

    activation: str
    axes: tuple[str, ...]


_LP = ("layer", "pos")
_LH = ("layer", "head")
_LPH = ("layer", "pos", "head")

HELPER_GRIDS: dict[str, HelperGrid] = {
    "resid_pre": HelperGrid("resid_pre", _LP),
    "resid_mid": HelperGrid("resid_mid", _LP),
    "attn_out": HelperGrid("attn_out", _LP),
    "mlp_out": HelperGrid("mlp_out", _LP),
    "attn_head_out_by_pos": HelperGrid("z", _LPH),
    "attn_head_q_by_pos": HelperGrid("q", _LPH),
    "attn_head_k_by_pos": HelperGrid("k", _LPH),
    "attn_head_v_by_pos": HelperGrid("v", _LPH),
    "attn_head_pattern_by_pos": HelperGrid("pattern", ("layer", "head_index", "dest_pos")),
    "attn_head_pattern_dest_src_pos": HelperGrid("pattern", ("layer", "head_index", "dest_pos", "src_pos")),
    "attn_head_out_all_pos": HelperGrid("z", _LH),
    "attn_head_q_all_pos": HelperGrid("q", _LH),
    "attn_head_k_all_pos": HelperGrid("k", _LH),
    "attn_head_v_all_pos": HelperGrid("v", _LH),
    "attn_head_pattern_all_pos": HelperGrid("pattern", ("layer", "head_index")),
}
"""Helper name (``get_act_patch_<name>``) -> its activation and axes, in the helper's grid order."""

_ON_THE_GRAPH = (
    "resid_pre",
    "resid_mid",
    "attn_out",
    "mlp_out",
    "attn_head_out_all_pos",
    "attn_head_out_by_pos",
    "attn_head_pattern_all_pos",
)
"""The helpers a ``Sweep`` node runs by name (its axes are layer, pos, head in that order; the
by-position pattern helper is [layer, head, dest_pos] and has no Sweep form)."""

HELPER_AXES: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (
        HELPER_GRIDS[name].activation,
        tuple("head" if axis == "head_index" else axis for axis in HELPER_GRIDS[name].axes),
    )
    for name in _ON_THE_GRAPH
}
"""Helper name -> (activation, axes) of the same grid as a ``Sweep`` node (the head axis named ``"head"``)."""
