"""LayerNorm and RMSNorm, with their folded ("Pre") variants, in one module.

TransformerLens has a class per kind: :class:`LayerNorm`, :class:`LayerNormPre`, :class:`RMSNorm`,
:class:`RMSNormPre` are :class:`Norm` with the kind fixed. Folding a norm's weights
(``norm.kind = "LNPre"``) also makes it an instance of the folded kind's class, as
TransformerLens's weight processing swaps the module.
"""

from __future__ import annotations

import torch
from torch import nn

from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.hook_points import HookPoint
from telelens.lens.norm import normalize


class Norm(nn.Module):
    """Normalization of kind ``LN``, ``LNPre``, ``RMS`` or ``RMSPre``.

    Hooks match TransformerLens: ``hook_scale`` [batch, pos, 1] and ``hook_normalized``
    (before the affine weights). With no hook listening, the fused torch kernel runs.
    """

    def __init__(self, cfg: ConfigLike, kind: str | None = None, length: int | None = None) -> None:
        super().__init__()
        cfg = as_config(cfg)
        kind = kind or cfg.normalization_type
        if kind is None:
            raise ValueError("Norm needs a kind: pass kind= or set cfg.normalization_type")
        self.cfg = cfg
        self.kind = kind
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
    def kind(self) -> str:
        return self._kind

    @kind.setter
    def kind(self, kind: str) -> None:
        self._kind = kind
        # A norm of one of TransformerLens's classes follows its kind (folding swaps LayerNorm
        # for LayerNormPre); the class adds no state, only the name isinstance sees.
        if type(self) is Norm or type(self) in NORM_CLASSES.values():
            self.__class__ = NORM_CLASSES.get(kind, Norm)

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


class LayerNorm(Norm):
    """TransformerLens's ``LayerNorm(cfg, length=None)``: centre, scale, then ``w`` and ``b``."""

    def __init__(self, cfg: ConfigLike, length: int | None = None) -> None:
        super().__init__(cfg, "LN", length)


class LayerNormPre(Norm):
    """TransformerLens's ``LayerNormPre(cfg)``: LayerNorm with its weights folded into the next layer."""

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__(cfg, "LNPre")


class RMSNorm(Norm):
    """TransformerLens's ``RMSNorm(cfg, length=None)``: scale by the root mean square, then ``w``."""

    def __init__(self, cfg: ConfigLike, length: int | None = None) -> None:
        super().__init__(cfg, "RMS", length)


class RMSNormPre(Norm):
    """TransformerLens's ``RMSNormPre(cfg)``: RMSNorm with its weight folded into the next layer."""

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__(cfg, "RMSPre")


NORM_CLASSES: dict[str, type[Norm]] = {
    "LN": LayerNorm,
    "LNPre": LayerNormPre,
    "RMS": RMSNorm,
    "RMSPre": RMSNormPre,
}


def make_norm(cfg: ConfigLike, kind: str | None = None, length: int | None = None) -> Norm:
    """The norm of ``kind`` (default ``cfg.normalization_type``) as its TransformerLens class."""
    kind = kind or as_config(cfg).normalization_type
    if kind is None or kind not in NORM_CLASSES:
        raise ValueError(f"no norm of kind {kind!r}")
    return Norm(cfg, kind, length)  # the kind's setter gives it its class
