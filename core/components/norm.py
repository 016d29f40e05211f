"""LayerNorm and RMSNorm, with their folded ("Pre") variants, in one module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.config import HookedTransformerConfig
from telelens.core.hook_points import HookPoint


class Norm(nn.Module):
    """Normalization of kind ``LN``, ``LNPre``, ``RMS`` or ``RMSPre``.

    Hooks match TransformerLens: ``hook_scale`` [batch, pos, 1] and ``hook_normalized``
    (before the affine weights). With no hook listening, the fused torch kernel runs.
    """

    def __init__(
        self, cfg: HookedTransformerConfig, kind: str | None = None, length: int | None = None
    ) -> None:
        super().__init__()
        self.kind = kind or cfg.normalization_type
        self.eps = cfg.eps
        self.length = length or cfg.d_model
        if self.kind in ("LN", "RMS"):
            self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype))
        else:
            self.w = None  # type: ignore[assignment]
        self.b = nn.Parameter(torch.zeros(self.length, dtype=cfg.dtype)) if self.kind == "LN" else None
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, length]

    @property
    def is_rms(self) -> bool:
        return self.kind in ("RMS", "RMSPre")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.hook_scale.active or self.hook_normalized.active):
            return normalize(x, self.kind, self.w, self.b, self.eps)
        in_dtype = x.dtype
        if in_dtype not in (torch.float32, torch.float64):
            x = x.float()  # reduced-precision activations normalize in fp32, as Hugging Face does
        return self._explicit(x).to(in_dtype)

    def _explicit(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = self.w.dtype if self.w is not None else x.dtype
        if not self.is_rms:
            x = x - x.mean(-1, keepdim=True)  # [batch, pos, length]
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())  # [batch, pos, 1]
        x = self.hook_normalized(x / scale)
        if self.w is None:
            return x
        if self.is_rms:
            return x.to(in_dtype) * self.w
        return x * self.w + self.b


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
