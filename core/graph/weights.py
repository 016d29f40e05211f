"""``Weight`` nodes: which names are allowed, their shapes (without stacking), and their values."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

GLOBAL_WEIGHTS = ("W_E", "W_U", "b_U", "W_pos")
ATTN_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
MLP_WEIGHTS = ("W_in", "W_out", "W_gate", "b_in", "b_out")
NORM_WEIGHTS = ("ln_final.w", "ln_final.b")
"""The final norm's scale and bias (LN: both; RMS: ``w``; the folded ``Pre`` kinds: none)."""
_BLOCK_WEIGHT = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.(\w+)$")


def _all_names(n_layers: int) -> list[str]:
    names = [*GLOBAL_WEIGHTS, *NORM_WEIGHTS, *ATTN_WEIGHTS, *MLP_WEIGHTS]
    names += [f"blocks.{layer}.attn.{w}" for layer in range(n_layers) for w in ATTN_WEIGHTS]
    names += [f"blocks.{layer}.mlp.{w}" for layer in range(n_layers) for w in MLP_WEIGHTS]
    return names


def _parse(name: str) -> tuple[int | None, str, str]:
    """``"blocks.3.attn.W_O"`` -> (3, "attn", "W_O"); ``"W_O"`` -> (None, "attn", "W_O")."""
    m = _BLOCK_WEIGHT.match(name)
    if m:
        return int(m.group(1)), m.group(2), m.group(3)
    part = "attn" if name in ATTN_WEIGHTS else "mlp" if name in MLP_WEIGHTS else "model"
    return None, part, name


def weight_error(model: HookedTransformer, name: object) -> str | None:
    """Why ``name`` is not a weight of this model (None when it is)."""
    if not isinstance(name, str):
        return f"a weight name must be a string, got {type(name).__name__}"
    cfg = model.cfg
    if name in NORM_WEIGHTS:
        if _final_norm_param(model, name) is None:
            kind = getattr(getattr(model, "ln_final", None), "kind", None) or "no normalization"
            return f"this model's final norm ({kind}) has no {name.split('.')[1]}"
        return None
    layer, part, attr = _parse(name)
    known = (part == "attn" and attr in ATTN_WEIGHTS) or (part == "mlp" and attr in MLP_WEIGHTS)
    if layer is None and name in GLOBAL_WEIGHTS:
        known = True
    if not known:
        close = difflib.get_close_matches(name, _all_names(cfg.n_layers), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown weight {name!r}{hint}"
    if layer is not None and layer >= cfg.n_layers:
        return f"layer {layer} is out of range: the model has {cfg.n_layers} layers"
    if attr == "W_pos" and not hasattr(model, "pos_embed"):
        return "this model uses rotary positions: it has no W_pos"
    if part == "mlp" and cfg.attn_only:
        return "an attention-only model has no MLP weights"
    if attr == "W_gate" and not cfg.gated_mlp:
        return "this model's MLP is not gated: it has no W_gate"
    return None


def _final_norm_param(model: HookedTransformer, name: str) -> torch.Tensor | None:
    """``ln_final.w`` / ``ln_final.b`` of the model, None where its final norm has no such weight."""
    return getattr(getattr(model, "ln_final", None), name.split(".")[1], None)


def _block_attr(model: HookedTransformer, layer: int, part: str, attr: str) -> torch.Tensor:
    return getattr(getattr(model.blocks[layer], part), attr)


def weight_shape(model: HookedTransformer, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of a (valid) weight, without stacking the layers."""
    if name in NORM_WEIGHTS:
        t = get_weight(model, name)
        return tuple(t.shape), t.dtype
    layer, part, attr = _parse(name)
    if part == "model":
        t = getattr(model, attr)
        return tuple(t.shape), t.dtype
    t = _block_attr(model, 0 if layer is None else layer, part, attr)
    shape = tuple(t.shape) if layer is not None else (model.cfg.n_layers, *t.shape)
    return shape, t.dtype


def get_weight(model: HookedTransformer, name: str) -> torch.Tensor:
    """The weight's value: a view where the model stores one (``W_U``), stacked for ``W_O`` etc."""
    if name in NORM_WEIGHTS:
        param = _final_norm_param(model, name)
        assert param is not None, weight_error(model, name)
        return param
    layer, part, attr = _parse(name)
    if part == "model" or layer is None:
        return getattr(model, attr)
    return _block_attr(model, layer, part, attr)
