"""The norm function (LayerNorm / RMSNorm and their folded variants), hook-free.

The core's ``Norm`` module runs it when nothing listens to its hooks; a remote model's norms
(``ln_final``, the blocks' ``ln1``/``ln2``) run it with the weights they fetched, so both sides
normalize with the same code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def normalize(
    x: torch.Tensor, kind: str, w: torch.Tensor | None, b: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """A norm of ``kind`` (``LN``, ``LNPre``, ``RMS``, ``RMSPre``) over the last dimension, with
    the fused torch kernels and no hooks: :class:`Norm` when nothing listens, and a remote
    client's ``ln_final`` with the weights it fetched."""
    in_dtype = x.dtype
    if in_dtype not in (torch.float32, torch.float64):
        x = x.float()  # reduced-precision activations normalize in fp32, as Hugging Face does
    length = (x.shape[-1],)
    if kind in ("RMS", "RMSPre"):
        out = F.rms_norm(x, length, None, eps)
        if w is not None:
            out = out.to(in_dtype) * w
    else:
        w = None if w is None else w.to(x.dtype)
        b = None if b is None else b.to(x.dtype)
        out = F.layer_norm(x, length, w, b, eps)
    return out.to(in_dtype)


def final_norm_kind(cfg: Any) -> str | None:
    """The final norm's kind (``cfg.extra["ln_final_kind"]`` is honoured for configs written by older
    versions, which kept a tied model's ``ln_final`` weights when the blocks' norms folded)."""
    extra = getattr(cfg, "extra", None) or {}
    return extra.get("ln_final_kind", getattr(cfg, "normalization_type", None))
