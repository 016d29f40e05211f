"""Checks on a tensor's bytes against its dtype and shape, before anything of that size is built.

Shared by the decoder (``ir.TensorData`` from the wire) and the structural checker. Imports
neither torch nor protobuf.
"""

from __future__ import annotations

from . import ir

MAX_NDIM = 64
"""Most dimensions a tensor or a reshape target may have (torch's own ceiling)."""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def is_int(x: object) -> bool:
    """A Python int (not bool) that fits an int64."""
    return isinstance(x, int) and not isinstance(x, bool) and INT64_MIN <= x <= INT64_MAX


class TensorProblem(ValueError):
    """A malformed tensor: which part (``dtype``, ``shape``, ``data``) and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def expected_nbytes(dtype: str, shape: tuple[int, ...], max_bytes: int) -> int:
    """``prod(shape) * itemsize``; raises ``TensorProblem`` past ``max_bytes`` without building a huge number."""
    if dtype not in ir.ITEMSIZE:
        raise TensorProblem("dtype", f"unknown dtype {dtype!r}; expected one of {', '.join(ir.DTYPES)}")
    if not isinstance(shape, tuple) or not all(is_int(d) for d in shape):
        raise TensorProblem("shape", "must be a tuple of int64")
    if len(shape) > MAX_NDIM:
        raise TensorProblem("shape", f"{len(shape)} dimensions; at most {MAX_NDIM}")
    if any(d < 0 for d in shape):
        raise TensorProblem("shape", f"negative dimension in {list(shape)}")
    if 0 in shape:
        return 0
    n = ir.ITEMSIZE[dtype]
    for d in shape:
        n *= d
        if n > max_bytes:
            raise TensorProblem("shape", f"{list(shape)} x {dtype} exceeds the limit of {max_bytes} bytes")
    return n


def check_tensor_data(dtype: str, shape: tuple[int, ...], data: object, expected: int) -> None:
    """Raises ``TensorProblem`` unless ``data`` is ``expected`` bytes (and 0/1 bytes for bool)."""
    if not isinstance(data, bytes):
        raise TensorProblem("data", "must be bytes")
    if len(data) != expected:
        raise TensorProblem("data", f"{len(data)} bytes; shape {list(shape)} x {dtype} needs {expected}")
    if dtype == "bool" and data.translate(None, b"\x00\x01"):
        raise TensorProblem("data", "bool elements must be the bytes 0 or 1")


def tensor_problems(td: ir.TensorData, max_bytes: int) -> list[tuple[str, str]]:
    """``(field, reason)`` for the first way ``td`` is malformed (shape is checked before data)."""
    try:
        check_tensor_data(td.dtype, td.shape, td.data, expected_nbytes(td.dtype, td.shape, max_bytes))
    except TensorProblem as e:
        return [(e.field, e.reason)]
    return []
