"""What the executor needs to know about a model's hook points: firing order, layer, dtype, shape.

The order is found once per model (and per set of hook switches) by a tiny forward pass with
a recording hook on every point, then cached on the model in a WeakKeyDictionary: the module
tree says which points exist, only a forward pass says in which order they fire.
"""

from __future__ import annotations

import difflib
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from telelens.lens.hook_shapes import hook_shape_pattern
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

LOGITS = ir.LOGITS
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
# Config switches that add or remove hook points from a forward pass.
_SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_attn_in", "use_hook_mlp_in", "use_hook_tokens")


@dataclass(frozen=True)
class HookTable:
    """Hook points of one model as they fire: order, dtype; ``logits`` comes last."""

    order: dict[str, int]
    dtypes: dict[str, torch.dtype]
    n_layers: int

    def fires(self, name: str) -> bool:
        return name in self.order

    def layer(self, name: str) -> int:
        """Block of a hook: ``blocks.3.*`` -> 3; embeddings -> -1; ``ln_final.*`` and logits -> n_layers."""
        m = _BLOCK.match(name)
        if m:
            return int(m.group(1))
        if name == LOGITS or name.startswith("ln_final."):
            return self.n_layers
        return -1


_CACHE: weakref.WeakKeyDictionary[HookedTransformer, dict[tuple, HookTable]] = weakref.WeakKeyDictionary()


def hook_table(model: HookedTransformer) -> HookTable:
    """The model's hook firing order (cached per model and per hook switches)."""
    key = (*(getattr(model.cfg, s, None) for s in _SWITCHES), str(model.cfg.dtype), len(model.hook_dict))
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _record(model)
    return per_model[key]


def _record(model: HookedTransformer) -> HookTable:
    order: dict[str, int] = {}
    dtypes: dict[str, torch.dtype] = {}

    def record(t: torch.Tensor, hook) -> None:
        if hook.name not in order:
            order[hook.name] = len(order)
            dtypes[hook.name] = t.dtype

    tokens = torch.zeros((1, min(2, model.cfg.n_ctx)), dtype=torch.long)
    with torch.inference_mode(), model.hooks(fwd_hooks=[(lambda name: True, record)]):
        logits = model(tokens)
    order[LOGITS] = len(order)
    dtypes[LOGITS] = logits.dtype
    return HookTable(order=order, dtypes=dtypes, n_layers=model.cfg.n_layers)


def hook_error(model: HookedTransformer, table: HookTable, name: object) -> str | None:
    """Why ``name`` cannot be read or written (None when it can)."""
    if not isinstance(name, str):
        return f"a hook name must be a string, got {type(name).__name__}"
    if table.fires(name):
        return None
    if name in model.hook_dict:
        reason = model.disabled_hook_reason(name)
        if reason:
            return f"hook {name!r} is switched off in this model: {reason}"
        return f"hook {name!r} never fires in this model's forward pass"
    close = difflib.get_close_matches(name, [*model.hook_dict, LOGITS], n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown hook {name!r}{hint}"


def hook_shape(model: HookedTransformer, name: str, batch: int, pos: int) -> tuple[int, ...]:
    """The activation shape at ``name`` for a run of ``batch`` x ``pos`` tokens."""
    cfg = model.cfg
    if name == LOGITS:
        return (batch, pos, cfg.d_vocab_out)
    dims = {
        "batch": batch,
        "pos": pos,
        "query_pos": pos,
        "key_pos": pos,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "head_index": cfg.n_heads,
        "kv_head_index": int(cfg.n_key_value_heads or cfg.n_heads),
        "d_mlp": int(cfg.d_mlp or 0),
        "1": 1,
    }
    return tuple(dims[d] for d in hook_shape_pattern(name))


def hook_dims(name: str) -> tuple[str, ...]:
    """Dimension names of a hook's activation."""
    return ("batch", "pos", "d_vocab_out") if name == LOGITS else hook_shape_pattern(name)
