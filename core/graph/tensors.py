"""Wire tensors <-> torch: dtype names, decoding ``TensorData``, byte sizes."""

from __future__ import annotations

import math

import numpy as np
import torch

from telelens.protos import ir

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
# Little-endian numpy layouts; bfloat16 has no numpy dtype, so it travels as int16 bits.
_WIRE_NUMPY: dict[str, str] = {
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<i2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "bool": "|b1",
}
INDEX_DTYPES = (torch.int64, torch.int32, torch.bool)


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32`` (KeyError for names outside ``ir.DTYPES``)."""
    return TORCH_DTYPES[name]


def itemsize(name: str) -> int:
    return torch.empty((), dtype=TORCH_DTYPES[name]).element_size()


def decode_constant(value: object) -> torch.Tensor:
    """A constant's value as a CPU tensor: ``TensorData`` (wire) or a tensor/array (local mode).

    Raises ValueError with a readable reason when the bytes do not match dtype and shape.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, ir.TensorData):
        raise ValueError(f"a constant must hold TensorData or a tensor, got {type(value).__name__}")
    if value.dtype not in _WIRE_NUMPY:
        raise ValueError(f"unknown dtype {value.dtype!r}; expected one of {list(ir.DTYPES)}")
    shape = tuple(int(s) for s in value.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"negative size in shape {list(shape)}")
    expected = math.prod(shape) * itemsize(value.dtype)
    if len(value.data) != expected:
        raise ValueError(
            f"{len(value.data)} bytes do not hold a {value.dtype} tensor of shape {list(shape)} ({expected} bytes)"
        )
    # bytearray: a writable copy, so torch does not warn about read-only memory.
    arr = np.frombuffer(bytearray(value.data), dtype=np.dtype(_WIRE_NUMPY[value.dtype]))
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    t = torch.from_numpy(arr)
    if value.dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t.reshape(shape)


def constant_nbytes(value: object) -> int:
    """Bytes a constant occupies (what counts against ``Limits.max_constant_bytes``)."""
    if isinstance(value, ir.TensorData):
        return value.nbytes
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    return 0


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A shape-and-dtype-only stand-in for ``t`` (no memory, ops still check shapes)."""
    return torch.empty(t.shape, dtype=t.dtype, device="meta")
