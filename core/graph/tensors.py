"""Wire tensors <-> torch in the executor: dtype groups, decoding constants, byte sizes."""

from __future__ import annotations

import numpy as np
import torch

from telelens.protos import ir
from telelens.protos.torch_tensors import tensor_data_to_torch, torch_dtypes

TORCH_DTYPES: dict[str, torch.dtype] = torch_dtypes()
"""Wire dtype name -> torch dtype: ``protos.torch_tensors``'s one mapping, by its usual name here."""
INDEX_DTYPES = (torch.int64, torch.int32, torch.bool)
"""Dtypes a tensor index (or an attention mask) may have."""
TOKEN_DTYPES = (torch.int64, torch.int32)
"""Dtypes of token ids and of a gather's index."""


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
    if value.dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {value.dtype!r}; expected one of {list(ir.DTYPES)}")
    return tensor_data_to_torch(value)


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
