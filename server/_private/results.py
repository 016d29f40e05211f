"""What a worker's run yields, and its results as bytes ready to travel.

A run yields :class:`Progress` (while the forward passes run), then for each saved value a
:class:`Header` and its :class:`ResultPiece` s (raw little-endian bytes, numpy views of the
result, never one joined copy), then :class:`Done`; or a
:class:`~telelens.server._private.failures.Failure` as the last item.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from telelens.protos import ir
from telelens.server._private.failures import Failure

if TYPE_CHECKING:
    import torch

PIECE_BYTES = 1 << 20
"""Largest ResultPiece: Ray copies a larger buffer into its object store with 6 threads of its own
(a compile-time constant), which on a small machine fight the front door and the client."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str = "forward"


@dataclass(frozen=True)
class Header:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class ResultPiece:
    """``data`` is the piece of result ``name`` starting at byte ``offset``."""

    name: str
    offset: int
    data: np.ndarray  # uint8 [n], a view into the result's own buffer


@dataclass(frozen=True)
class Done:
    result_bytes: int
    compute_seconds: float
    worker: str


Item: TypeAlias = "Progress | Header | ResultPiece | Done | Failure"

WireResult: TypeAlias = "tuple[np.ndarray, str, tuple[int, ...]]"
"""A result ready to travel: its bytes (uint8 view), dtype name and shape."""


def wire_result(t: torch.Tensor) -> WireResult:
    data, dtype = wire_bytes(t)
    return data, dtype, tuple(t.shape)


def wire_bytes(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A uint8 view of ``t``'s little-endian bytes (no copy for a contiguous CPU tensor) and its dtype."""
    import torch

    from telelens.core.graph.tensors import TORCH_DTYPES

    names = {v: k for k, v in TORCH_DTYPES.items()}
    dtype = names.get(t.dtype)
    if dtype is None:
        raise Failure(
            "INVALID_ARGUMENT", f"a result of dtype {t.dtype} cannot travel; save it as one of {ir.DTYPES}"
        )
    t = t.detach().cpu().contiguous()
    if dtype == "bfloat16":
        t = t.view(torch.int16)  # numpy has no bfloat16: ship the bits
    array = t.numpy()
    if sys.byteorder != "little" and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8), dtype
