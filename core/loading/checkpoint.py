"""Reading checkpoint tensors one at a time, and writing safetensors one tensor at a time.

A checkpoint is an iterable of :class:`TensorRef`; the loader asks each ref either to
read straight into a parameter (:meth:`TensorRef.load_into`, no intermediate copy) or to
hand over a tensor (:meth:`TensorRef.load`) that it transforms and copies, then drops.
So at most one checkpoint tensor is alive at a time, on top of the model itself.

safetensors files are read with plain ``readinto`` (their format is an 8-byte header
length, a JSON header, then raw little-endian data) rather than memory-mapped: pages of
a mapping count in the process's RSS for as long as the mapping lives, which would hold
a second copy of the weights while loading.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

logger = logging.getLogger(__name__)

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, writable, without a copy."""
    return t.reshape(-1).view(torch.uint8).numpy().data


def _read_exact(f: BinaryIO, offset: int, out: memoryview) -> None:
    f.seek(offset)
    done = 0
    while done < len(out):
        n = f.readinto(out[done:])  # type: ignore[attr-defined]
        if not n:
            raise OSError(f"{getattr(f, 'name', 'file')}: unexpected end of file at byte {offset + done}")
        done += n


class TensorRef:
    """One checkpoint tensor, not read yet."""

    name: str

    def load(self) -> torch.Tensor:
        """The tensor, on CPU (a fresh tensor or a view the loader only reads)."""
        raise NotImplementedError

    def load_into(self, out: torch.Tensor) -> bool:
        """Read straight into ``out`` when possible (same dtype and shape, contiguous, CPU)."""
        return False

    def size_bytes(self) -> int:
        """Bytes this tensor accounts for in :attr:`Checkpoint.total_bytes`."""
        return 0


class Checkpoint(AbstractContextManager["Checkpoint"]):
    """An iterable of :class:`TensorRef`, closed when done."""

    total_bytes: int = 0
    """Size of all tensors (for progress bars)."""
    description: str = "checkpoint"

    def __iter__(self) -> Iterator[TensorRef]:
        raise NotImplementedError

    def close(self) -> None:
        """Release open files."""

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------- safetensors
@dataclass
class _SafetensorsEntry(TensorRef):
    name: str
    file: BinaryIO
    offset: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    def load(self) -> torch.Tensor:
        t = torch.empty(self.shape, dtype=self.dtype)
        if self.nbytes:
            _read_exact(self.file, self.offset, _bytes_of(t))
        return t

    def load_into(self, out: torch.Tensor) -> bool:
        if out.device.type != "cpu" or out.dtype != self.dtype or tuple(out.shape) != self.shape:
            return False
        if not out.is_contiguous():
            return False
        if self.nbytes:
            _read_exact(self.file, self.offset, _bytes_of(out))
        return True

    def size_bytes(self) -> int:
        return self.nbytes


def read_safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header dict) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path} is not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    return 8 + n, header


class SafetensorsCheckpoint(Checkpoint):
    """One or more ``.safetensors`` files (shards), read in file order."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self._handles: list[BinaryIO] = []
        self.entries: list[_SafetensorsEntry] = []
        for path in files:
            start, header = read_safetensors_header(path)
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed in close())
            self._handles.append(f)
            items = [(k, v) for k, v in header.items() if k != "__metadata__"]
            for name, info in sorted(items, key=lambda kv: kv[1]["data_offsets"][0]):
                if info["dtype"] not in SAFETENSORS_DTYPES:
                    raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
                begin, end = info["data_offsets"]
                self.entries.append(
                    _SafetensorsEntry(
                        name,
                        f,
                        start + begin,
                        end - begin,
                        SAFETENSORS_DTYPES[info["dtype"]],
                        tuple(info["shape"]),
                    )
                )
        self.total_bytes = sum(e.nbytes for e in self.entries)
        self.description = files[0].parent.name if files else "safetensors"

    def __iter__(self) -> Iterator[TensorRef]:
        return iter(self.entries)

    def close(self) -> None:
        for f in self._handles:
            f.close()
        self._handles = []


# ---------------------------------------------------------------------------------------- pytorch .bin
@dataclass
class _ValueRef(TensorRef):
    name: str
    value: torch.Tensor

    def load(self) -> torch.Tensor:
        return self.value

    def size_bytes(self) -> int:
        return self.value.numel() * self.value.element_size()


class TorchBinCheckpoint(Checkpoint):
    """``pytorch_model.bin`` files (shards), memory-mapped one shard at a time."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.total_bytes = sum(p.stat().st_size for p in files)
        self.description = files[0].parent.name if files else "bin"

    def __iter__(self) -> Iterator[TensorRef]:
        for path in self.files:
            try:
                state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError:  # legacy (pre-zip) format cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
            for name in list(state):
                value = state.pop(name)
                if isinstance(value, torch.Tensor):
                    yield _ValueRef(name, value)
                del value
            del state


class StateDictCheckpoint(Checkpoint):
    """An in-memory state dict (``hf_model=``): tensors are read in place."""

    def __init__(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.state_dict = state_dict
        self.total_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
        self.description = "hf_model"

    def __iter__(self) -> Iterator[TensorRef]:
        for name, value in self.state_dict.items():
            yield _ValueRef(name, value.detach())


def open_folder(folder: Path) -> Checkpoint:
    """The weights of a Hugging Face model folder: (sharded) safetensors, else (sharded) .bin."""
    for index_name, single, cls in (
        ("model.safetensors.index.json", "model.safetensors", SafetensorsCheckpoint),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", TorchBinCheckpoint),
    ):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted({folder / f for f in weight_map.values()})
            missing = [p.name for p in files if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are not there: {missing}")
            return cls(files)  # type: ignore[abstract]
        if (folder / single).is_file():
            return cls([folder / single])  # type: ignore[abstract]
    loose = sorted(folder.glob("*.safetensors"))
    if loose:
        return SafetensorsCheckpoint(loose)
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise FileNotFoundError(
        f"{folder} has no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin "
        f"or pytorch_model.bin.index.json); it holds: {found}"
    )


# ---------------------------------------------------------------------------------------- writing
class SafetensorsWriter:
    """Write a safetensors file one tensor at a time (no tensor is held after ``add``).

    Data goes to ``<path>.data`` as it comes; :meth:`finish` writes the header and appends
    the data (the header must come first and is only known at the end).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data_path = path.with_name(path.name + ".data")
        self._data = open(self._data_path, "wb")  # noqa: SIM115 (closed in finish/abort)
        self._entries: dict[str, dict[str, Any]] = {}
        self._offset = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"tensor {name} written twice")
        t = tensor.detach().to("cpu").contiguous()
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(f"cannot write dtype {t.dtype} to safetensors")
        n = t.numel() * t.element_size()
        if n:
            self._data.write(_bytes_of(t))
        self._entries[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [self._offset, self._offset + n],
        }
        self._offset += n

    def finish(self, metadata: dict[str, str] | None = None) -> None:
        self._data.close()
        header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}, **self._entries}
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned, as safetensors writes it
        with open(self.path, "wb") as out, open(self._data_path, "rb") as data:
            out.write(struct.pack("<Q", len(blob)))
            out.write(blob)
            while chunk := data.read(16 << 20):
                out.write(chunk)
        os.remove(self._data_path)

    def abort(self) -> None:
        self._data.close()
        if self._data_path.exists():
            os.remove(self._data_path)
