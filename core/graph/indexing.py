"""Checking an index against a known shape, before any tensor exists.

Meta tensors check most of indexing, but not everything: this walks the items itself so
that every int (and every int inside a Constant index tensor) is range-checked, and a
boolean mask, whose result shape depends on its values, is allowed only as a Constant
(then it is replaced by the int indices of its True entries, exactly as torch does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from telelens.core.graph.tensors import INDEX_DTYPES, meta_like
from telelens.protos import ir


class BadIndex(ValueError):
    """An index that cannot apply; ``field`` names the offending item (``index[2]``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def _consumes(
    it: ir.IndexItem, where: str, meta_of: Callable[[int], Any], constant_of: Callable[[int], Any]
) -> int:
    """How many dims of the indexed tensor one item uses up (raises BadIndex for bad items)."""
    if it is ir.ELLIPSIS or it is ir.NEW_AXIS:
        return 0
    if isinstance(it, ir.SliceItem):
        parts = (it.start, it.stop, it.step)
        if not all(p is None or (isinstance(p, int) and not isinstance(p, bool)) for p in parts):
            raise BadIndex(where, f"slice bounds must be ints or None, got {it}")
        if it.step is not None and it.step <= 0:
            raise BadIndex(where, f"slice step must be positive, got {it.step}")
        return 1
    if isinstance(it, int) and not isinstance(it, bool):
        return 1
    if isinstance(it, ir.Ref):
        m = meta_of(it.node)
        if m.dtype not in INDEX_DTYPES:
            raise BadIndex(where, f"an index tensor must be int or bool, got {m.dtype}")
        if m.dtype == torch.bool:
            if constant_of(it.node) is None:
                raise BadIndex(
                    where, "a boolean index must be a Constant (its result shape depends on its values)"
                )
            return m.dim()
        return 1
    raise BadIndex(where, f"unsupported index item {it!r}")


def check_index(
    shape: tuple[int, ...],
    items: tuple[ir.IndexItem, ...],
    meta_of: Callable[[int], torch.Tensor | None],
    constant_of: Callable[[int], torch.Tensor | None],
    field: str = "index",
) -> tuple[Any, ...]:
    """Check ``items`` against ``shape``; return the equivalent index for meta tensors.

    ``meta_of(id)`` gives a Ref's meta value, ``constant_of(id)`` its real value when it is
    a Constant (else None). Raises :class:`BadIndex`.
    """
    used = [_consumes(it, f"{field}[{i}]", meta_of, constant_of) for i, it in enumerate(items)]
    consumed = sum(used)
    if sum(it is ir.ELLIPSIS for it in items) > 1:
        raise BadIndex(field, "an index can hold at most one ELLIPSIS")
    if consumed > len(shape):
        raise BadIndex(field, f"{consumed} indices for a tensor of shape {list(shape)}")
    out: list[Any] = []
    dim = 0
    for i, (it, n) in enumerate(zip(items, used)):
        where = f"{field}[{i}]"
        if it is ir.ELLIPSIS:
            out.append(Ellipsis)
            dim += len(shape) - consumed
            continue
        if it is ir.NEW_AXIS:
            out.append(None)
            continue
        if isinstance(it, ir.SliceItem):
            out.append(slice(it.start, it.stop, it.step))
        elif isinstance(it, int):
            _check_range(it, it, shape[dim], dim, where)
            out.append(it)
        else:
            assert isinstance(it, ir.Ref)
            m, values = meta_of(it.node), constant_of(it.node)
            assert m is not None
            if m.dtype == torch.bool:
                assert values is not None
                if tuple(values.shape) != shape[dim : dim + n]:
                    raise BadIndex(
                        where,
                        f"a boolean index of shape {list(values.shape)} does not match dims {list(shape[dim : dim + n])}",
                    )
                out.extend(meta_like(t) for t in values.nonzero(as_tuple=True))
            else:
                if values is not None and values.numel():
                    _check_range(int(values.min()), int(values.max()), shape[dim], dim, where)
                out.append(m)
        dim += n
    return tuple(out)


def _check_range(lo: int, hi: int, size: int, dim: int, where: str) -> None:
    """Python/torch index rules: -size <= i < size."""
    if lo < -size or hi >= size:
        raise BadIndex(
            where, f"index {lo if lo < -size else hi} is out of range for dim {dim} of size {size}"
        )
