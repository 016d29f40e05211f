"""TransformerLens's module paths as small views over ``get_weight``, for a model without modules.

A remote model has no module tree, yet users write ``model.blocks[3].attn.W_O``,
``model.blocks[3].ln1(x)`` and ``model.ln_final(x)``. These views answer them by weight name
(``blocks.3.attn.W_O``, ``blocks.3.ln1.w``, ``ln_final.b``), so each weight is still fetched by the
model's one ``get_weight``; the norms run :func:`~telelens.lens.norm.normalize`, the function the
core's ``Norm`` runs, so they normalize with the same code. Torch only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import torch

from telelens.lens.norm import normalize

if TYPE_CHECKING:
    from telelens.lens.surface import ModelSurface

ATTN_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
MLP_WEIGHTS = ("W_in", "W_gate", "W_out", "b_in", "b_out")


class NormView:
    """A norm (``ln_final``, ``blocks.{l}.ln1``/``ln2``) of kind ``kind`` with weights ``{prefix}.w``
    and ``{prefix}.b`` (those the model has); ``kind`` None is the identity, as the core's
    ``nn.Identity`` for a model without normalization."""

    def __init__(self, model: ModelSurface, prefix: str, kind: str | None) -> None:
        self.model, self.prefix, self.kind = model, prefix, kind
        self.eps: float = float(getattr(model.cfg, "eps", 1e-5))

    def _param(self, which: str) -> torch.Tensor | None:
        name = f"{self.prefix}.{which}"
        return self.model.get_weight(name) if self.kind is not None and self.model.has_weight(name) else None

    @property
    def w(self) -> torch.Tensor | None:
        """The scale [d_model] (None for the folded ``Pre`` kinds)."""
        return self._param("w")

    @property
    def b(self) -> torch.Tensor | None:
        """The bias [d_model] (LayerNorm only)."""
        return self._param("b")

    def parameters(self) -> Iterator[torch.Tensor]:
        return iter(p for p in (self.w, self.b) if p is not None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., d_model] normalized where the weights live, returned on ``x``'s device."""
        if self.kind is None:
            return x
        w, b = self.w, self.b
        where = x.device if w is None else w.device
        return normalize(x.to(where), self.kind, w, b, self.eps).to(x.device)

    def __repr__(self) -> str:
        return f"<{self.prefix} norm ({self.kind or 'none'})>"


class WeightsView:
    """``model.blocks[l].attn`` / ``.mlp``: one layer's weights by attribute, through ``get_weight``."""

    def __init__(self, model: ModelSurface, layer: int, part: str, names: tuple[str, ...]) -> None:
        self._model, self._layer, self._part, self._names = model, layer, part, names

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(
                f"blocks[{self._layer}].{self._part} here has the weights {', '.join(self._names)}; "
                f"no {name!r} (modules and hooks do not exist on this side)"
            )
        if name == "W_gate" and not getattr(self._model.cfg, "gated_mlp", False):
            return None
        return self._model._weight_attr(f"blocks.{self._layer}.{self._part}.{name}")

    def __dir__(self) -> list[str]:
        return list(self._names)


class BlockView:
    """``model.blocks[l]``: ``.attn`` and ``.mlp`` weights, ``.ln1`` and ``.ln2`` norms."""

    def __init__(self, model: ModelSurface, layer: int) -> None:
        self.layer = layer
        kind = getattr(model.cfg, "normalization_type", None)
        self.ln1 = NormView(model, f"blocks.{layer}.ln1", kind)
        self.attn = WeightsView(model, layer, "attn", ATTN_WEIGHTS)
        if not getattr(model.cfg, "attn_only", False):
            self.ln2 = NormView(model, f"blocks.{layer}.ln2", kind)
            self.mlp = WeightsView(model, layer, "mlp", MLP_WEIGHTS)

    def __repr__(self) -> str:
        return f"<block {self.layer}>"


class BlocksView(Sequence[BlockView]):
    """``model.blocks``: one :class:`BlockView` per layer."""

    def __init__(self, model: ModelSurface) -> None:
        self._views = [BlockView(model, layer) for layer in range(model.cfg.n_layers)]

    def __len__(self) -> int:
        return len(self._views)

    @overload
    def __getitem__(self, i: int) -> BlockView: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[BlockView]: ...
    def __getitem__(self, i: int | slice) -> BlockView | Sequence[BlockView]:
        return self._views[i]
