"""A remote weight that is fetched when it is used, not when it is named.

``remote.W_E``, ``remote.W_U`` and ``remote.blocks[3].attn.W_O`` return a :class:`LazyWeight`: a
tensor with the weight's shape, dtype and device (CPU, where results arrive) and no data. Probes
such as ``hasattr(model, "W_E")`` (SAELens's ``ActivationsStore``), ``.shape``, ``.dtype``,
``.device`` or ``len()`` transfer nothing. The first real operation (arithmetic, indexing,
``.numpy()``, ``.tolist()``, printing, ``torch.cat``, ``FactoredMatrix``, ...) fetches the weight
through the model's ``get_weight`` (so it travels once, then comes from the cache) and runs on the
real tensor; every result is a plain ``torch.Tensor``. A code hook that captures a lazy weight
sends only its name: the executor uses its own copy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map

_PROPERTIES = (
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_leaf", "grad", "grad_fn",
    "is_cuda", "is_sparse", "is_quantized", "is_meta", "itemsize", "nbytes",
)  # fmt: skip
_METHODS = (
    "dim", "size", "numel", "nelement", "element_size", "is_floating_point", "is_complex", "__len__",
    "stride", "is_contiguous",
)  # fmt: skip
_METADATA = {getattr(torch.Tensor, n).__get__ for n in _PROPERTIES} | {
    getattr(torch.Tensor, n) for n in _METHODS
}
"""Tensor attributes answered from the shape and dtype alone: they never fetch the weight."""


class LazyWeight(torch.Tensor):
    """A weight of ``model`` named ``name``, fetched by ``model.get_weight(name)`` on first use."""

    _model: Any
    _name: str

    @staticmethod
    def __new__(cls, model: Any, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> LazyWeight:
        t = torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, shape, dtype=dtype, device=torch.device("cpu"), requires_grad=False
        )
        t._model, t._name = model, name
        return t  # type: ignore[no-any-return]

    def __init__(self, model: Any, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()

    @property
    def weight_name(self) -> str:
        """The weight's name on the server (``"W_E"``, ``"blocks.3.attn.W_O"``)."""
        return self._name

    @property
    def __telelens_weight__(self) -> str:  # a code hook payload sends the name (trace.code_payload)
        return self._name

    def materialize(self) -> torch.Tensor:
        """The weight itself (fetched on the first call, from the model's cache afterwards)."""
        return self._model.get_weight(self._name)  # type: ignore[no-any-return]

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        args, kwargs = tree_map(_real, (args, kwargs))
        return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:  # ops that bypass __torch_function__ (C++ internals) still see the real weight
        args, kwargs = tree_map(_real, (args, kwargs or {}))
        return func(*args, **kwargs)


def _real(x: Any) -> Any:
    return x.materialize() if isinstance(x, LazyWeight) else x
