"""Reading rotary-embedding settings from a Hugging Face config (transformers 4.x and 5.x layouts)."""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Scaling types whose frequencies depend on the sequence length at run time: we can only
# apply their values for the base context.
_DYNAMIC = ("dynamic", "longrope")


def rope_parameters(hf_config: Any) -> dict[str, Any]:
    """One flat dict with at least ``rope_type``, ``rope_theta`` and ``partial_rotary_factor``.

    transformers 5 keeps everything in ``config.rope_parameters``; 4.x has ``rope_theta``
    (``rotary_emb_base`` for old GPT-NeoX), ``rope_scaling`` and ``partial_rotary_factor``
    (``rotary_pct`` for GPT-NeoX) as separate attributes.
    """
    params = getattr(hf_config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        params = getattr(hf_config, "rope_scaling", None) or {}
    d = dict(params)
    if any(isinstance(v, dict) for v in d.values()):
        raise ValueError(f"per-layer-type RoPE parameters are not supported: {d}")
    theta = (
        d.get("rope_theta")
        or getattr(hf_config, "rope_theta", None)
        or getattr(hf_config, "rotary_emb_base", None)
    )
    partial = (
        d.get("partial_rotary_factor")
        or getattr(hf_config, "partial_rotary_factor", None)
        or getattr(hf_config, "rotary_pct", None)
    )
    d["rope_theta"] = float(theta if theta is not None else 10000.0)
    d["partial_rotary_factor"] = float(partial if partial is not None else 1.0)
    d["rope_type"] = d.get("rope_type", d.get("type", "default")) or "default"
    return d


def scaled_rope(hf_config: Any) -> tuple[torch.Tensor, float] | None:
    """``(inv_freq, attention_scaling)`` as transformers computes them for a scaled RoPE, else None."""
    params = rope_parameters(hf_config)
    rope_type = params["rope_type"]
    if rope_type == "default":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"RoPE type {rope_type!r} is not supported (known: {sorted(ROPE_INIT_FUNCTIONS)})")
    if rope_type in _DYNAMIC:
        logger.warning(
            "RoPE type %r changes with the sequence length in Hugging Face; telelens applies its "
            "values for the original context length only",
            rope_type,
        )
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv_freq.float(), float(scaling)


def rotary_dim(d_head: int, hf_config: Any) -> int:
    """Rotated dims per head: ``int(d_head * partial_rotary_factor)``, as transformers computes it."""
    return int(d_head * rope_parameters(hf_config)["partial_rotary_factor"])
