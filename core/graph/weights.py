"""``Weight`` nodes: which names are allowed, their shapes (without stacking), and their values."""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

GLOBAL_WEIGHTS = ("W_E", "W_U", "b_U", "W_pos")
ATTN_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
MLP_WEIGHTS = ("W_in", "W_out", "W_gate", "b_in", "b_out")
NORM_WEIGHTS = ("ln_final.w", "ln_final.b")
"""The final norm's scale and bias (LN: both; RMS: ``w``; the folded ``Pre`` kinds: none)."""
BLOCK_NORM_WEIGHTS = ("ln1.w", "ln1.b", "ln2.w", "ln2.b")
"""Each block's norms, as ``blocks.{layer}.ln1.w`` (which exist follows the kind, as for ``ln_final``)."""
_BLOCK_WEIGHT = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.(\w+)$")
_BLOCK_NORM = re.compile(r"^blocks\.(\d+)\.(ln1|ln2)\.(w|b)$")


def _all_names(n_layers: int) -> list[str]:
    names = [*GLOBAL_WEIGHTS, *NORM_WEIGHTS, *ATTN_WEIGHTS, *MLP_WEIGHTS]
    names += [f"blocks.{layer}.attn.{w}" for layer in range(n_layers) for w in ATTN_WEIGHTS]
    names += [f"blocks.{layer}.mlp.{w}" for layer in range(n_layers) for w in MLP_WEIGHTS]
    names += [f"blocks.{layer}.{w}" for layer in range(n_layers) for w in BLOCK_NORM_WEIGHTS]
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
    norm = _norm_of(model, name)
    if norm is not None:
        if isinstance(norm, str):
            return norm
        module, which = norm
        if getattr(module, which, None) is None:
            kind = getattr(module, "kind", None) or "no normalization"
            where = "final norm" if name in NORM_WEIGHTS else name.rsplit(".", 1)[0]
            return f"this model's {where} ({kind}) has no {which}"
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


def _norm_of(model: HookedTransformer, name: str) -> tuple[Any, str] | str | None:
    """For a norm weight's name, its norm module and ``"w"``/``"b"`` (an error text for a bad layer);
    None for names that are not norm weights."""
    if name in NORM_WEIGHTS:
        return getattr(model, "ln_final", None), name.split(".")[1]
    m = _BLOCK_NORM.match(name)
    if m is None:
        return None
    layer = int(m.group(1))
    if layer >= model.cfg.n_layers:
        return f"layer {layer} is out of range: the model has {model.cfg.n_layers} layers"
    return getattr(model.blocks[layer], m.group(2), None), m.group(3)


def _block_attr(model: HookedTransformer, layer: int, part: str, attr: str) -> torch.Tensor:
    return getattr(getattr(model.blocks[layer], part), attr)


def weight_shape(model: HookedTransformer, name: str) -> tuple[tuple[int, ...], torch.dtype]:
    """Shape and dtype of a (valid) weight, without stacking the layers."""
    layer, part, attr = _parse(name)
    if part == "model" or _norm_of(model, name) is not None:
        t = get_weight(model, name)
        return tuple(t.shape), t.dtype
    t = _block_attr(model, 0 if layer is None else layer, part, attr)
    shape = tuple(t.shape) if layer is not None else (model.cfg.n_layers, *t.shape)
    return shape, t.dtype


def _global(model: HookedTransformer, attr: str) -> torch.Tensor:
    if attr == "W_E":
        return model.embed.W_E  # the parameter itself: weight processing edits it in place
    if attr == "W_U":
        return model.unembed.W_U  # a view of the unembed's weight
    if attr == "b_U":
        return model.unembed.b_U
    if attr == "W_pos":
        if not hasattr(model, "pos_embed"):
            raise AttributeError("this model uses rotary positions: it has no W_pos")
        return model.pos_embed.W_pos
    raise AttributeError(f"unknown weight {attr!r}")


def _stacked(model: HookedTransformer, part: str, attr: str) -> torch.Tensor:
    """``W_O`` etc.: every block's weight stacked [n_layers, ...] on the embedding's device."""
    if part == "mlp" and model.cfg.attn_only:
        raise AttributeError("an attention-only model has no MLP weights")
    dev = model._module_device(model.embed)
    return torch.stack([_block_attr(model, layer, part, attr).to(dev) for layer in range(model.cfg.n_layers)])


def get_weight(model: HookedTransformer, name: str) -> torch.Tensor:
    """The weight's value: the stored tensor where the model stores one (``W_E``, ``blocks.3.attn.W_O``,
    ``ln_final.w``; ``W_U`` is a view), stacked over the layers for ``W_O`` etc."""
    norm = _norm_of(model, name)
    if norm is not None:
        param = None if isinstance(norm, str) else getattr(norm[0], norm[1], None)
        assert param is not None, weight_error(model, name)
        return param
    layer, part, attr = _parse(name)
    if part == "model":
        return _global(model, attr)
    if layer is None:
        return _stacked(model, part, attr)
    return _block_attr(model, layer, part, attr)
