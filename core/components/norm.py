"""LayerNorm and RMSNorm, with their folded ("Pre") variants, in one module."""

from __future__ import annotations

import torch
from torch import nn

from telelens.core.config import HookedTransformerConfig
from telelens.core.hook_points import HookPoint
from telelens.lens.norm import normalize


class Norm(nn.Module):
    """Normalization of kind ``LN``, ``LNPre``, ``RMS`` or ``RMSPre``.

    Hooks match TransformerLens: ``hook_scale`` [batch, pos, 1] and ``hook_normalized``
    (before the affine weights). With no hook listening, the fused torch kernel runs.
    """

    def __init__(
        self, cfg: HookedTransformerConfig, kind: str | None = None, length: int | None = None
    ) -> None:
        super().__init__()
        kind = kind or cfg.normalization_type
        if kind is None:
            raise ValueError("Norm needs a kind: pass kind= or set cfg.normalization_type")
        self.kind: str = kind
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
        assert self.b is not None  # LN, the only affine kind with a bias
        return x * self.w + self.b
