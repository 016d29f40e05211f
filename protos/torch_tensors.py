"""``ir.TensorData`` <-> torch tensors (imports torch when called, never on import).

The wire format is raw little-endian C-contiguous bytes; numpy does the byte work
(``tobytes`` / ``frombuffer``), and bfloat16, which numpy lacks, travels as int16 bits.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from . import ir

if TYPE_CHECKING:
    import torch

# Wire dtype -> little-endian numpy dtype of the same bytes (bfloat16: its raw bits).
LITTLE_ENDIAN_NUMPY: dict[str, str] = {
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<i2",
    "float64": "<f8",
    "int64": "<i8",
    "int32": "<i4",
    "bool": "|b1",
}


@cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """The one torch mapping: wire dtype name (``ir.DTYPES``) -> torch dtype of the same name."""
    import torch

    return {name: getattr(torch, name) for name in ir.DTYPES}


@cache
def torch_dtype_names() -> dict[torch.dtype, str]:
    """torch dtype -> wire dtype name, for every dtype that can travel (``torch_dtypes`` inverted)."""
    return {dtype: name for name, dtype in torch_dtypes().items()}


def tensor_data_from_torch(t: torch.Tensor) -> ir.TensorData:
    """A copy of ``t`` (any device, any strides, no grad) as wire bytes."""
    import torch

    name = torch_dtype_names().get(t.dtype)
    if name is None:
        raise ValueError(f"dtype {t.dtype} cannot travel; use one of {', '.join(ir.DTYPES)}")
    t = t.detach().cpu().contiguous()
    if name == "bfloat16":
        t = t.view(torch.int16)  # numpy has no bfloat16: ship the bits
    array = t.numpy()
    data = array.astype(
        np.dtype(LITTLE_ENDIAN_NUMPY[name]), copy=False
    ).tobytes()  # little-endian even on BE hosts
    return ir.TensorData(name, tuple(t.shape), data)


def tensor_data_to_torch(td: ir.TensorData, device: str | torch.device | None = None) -> torch.Tensor:
    """A new, writable tensor holding ``td``'s values (on ``device`` if given)."""
    import torch

    if td.dtype not in LITTLE_ENDIAN_NUMPY:
        raise ValueError(f"unknown dtype {td.dtype!r}")
    numel = 1
    for d in td.shape:
        numel *= d
    if any(d < 0 for d in td.shape) or len(td.data) != numel * ir.ITEMSIZE[td.dtype]:
        raise ValueError(f"{len(td.data)} bytes do not fit shape {list(td.shape)} x {td.dtype}")
    # frombuffer over a bytearray copy: writable memory, so torch.from_numpy does not warn.
    array = np.frombuffer(bytearray(td.data), dtype=np.dtype(LITTLE_ENDIAN_NUMPY[td.dtype])).reshape(td.shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    t = torch.from_numpy(array)
    if td.dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t if device is None else t.to(device)
