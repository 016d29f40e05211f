"""GGUF files: config and tokenizer through transformers, tensors de-quantized one at a time.

The config and tokenizer come from transformers' GGUF support (``AutoConfig`` /
``AutoTokenizer.from_pretrained(folder, gguf_file=...)``), so they are exactly what a
Hugging Face model loaded from the same file sees. Tensors are read with plain file reads
(no memory map: mapped pages would stay in RSS), de-quantized by the ``gguf`` package a
few MB at a time, then passed through transformers' per-architecture tensor processor
(e.g. LLaMA's q/k row permutation) and renamed to Hugging Face names, exactly as
``transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint`` does.
"""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from telelens.core.loading.checkpoint import Checkpoint, TensorRef, _read_exact, _ValueRef

if TYPE_CHECKING:
    from telelens.core.loading.cache import CacheBuilder

logger = logging.getLogger(__name__)

# Metadata value types: fixed-size ones (struct format), 8 = string, 9 = array.
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_CHUNK_BYTES = 4 << 20  # raw bytes de-quantized per step


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: torch-order shape, ggml type, absolute byte offset and size."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class GGUFTable:
    architecture: str
    tensors: list[GGUFTensorInfo]


def read_tensor_table(path: Path) -> GGUFTable:
    """The architecture and tensor table of a GGUF file (metadata arrays are skipped, not decoded)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (need 2 or 3)")
        pos = 24
        meta: dict[str, Any] = {}

        def string(pos: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", mm, pos)
            return bytes(mm[pos + 8 : pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n

        def value(pos: int, vtype: int) -> tuple[Any, int]:
            if vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                return struct.unpack_from(fmt, mm, pos)[0], pos + struct.calcsize(fmt)
            if vtype == 8:
                return string(pos)
            if vtype == 9:
                etype, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if etype in _SCALARS:
                    return None, pos + count * struct.calcsize(_SCALARS[etype])
                for _ in range(count):  # strings (vocabularies): walk past them
                    _, pos = value(pos, etype)
                return None, pos
            raise ValueError(f"{path}: unknown GGUF metadata type {vtype}")

        for _ in range(n_kv):
            key, pos = string(pos)
            (vtype,) = struct.unpack_from("<I", mm, pos)
            meta[key], pos = value(pos + 4, vtype)

        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", mm, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
            ggml_type, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            raw.append((name, tuple(reversed(dims)), ggml_type, offset))  # ggml lists the fastest dim first

    import gguf

    align = int(meta.get("general.alignment") or 32)
    data_start = (pos + align - 1) // align * align
    tensors = []
    for name, shape, ggml_type, offset in raw:
        block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        tensors.append(
            GGUFTensorInfo(name, shape, ggml_type, data_start + offset, prod(shape) // block * block_bytes)
        )
    return GGUFTable(str(meta.get("general.architecture")), tensors)


def load_gguf_config(path: Path) -> Any:
    """The Hugging Face config transformers derives from a GGUF file (``architectures`` filled in)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if not getattr(config, "architectures", None):
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type)
        if arch is not None:
            config.architectures = [arch]
    return config


def load_gguf_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def gguf_to_hf_names(architecture: str, hf_names: list[str], n_layers: int, processor: Any) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face name, built the way transformers builds it."""
    import gguf

    arch = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == architecture), None)
    if arch is None:
        raise ValueError(f"GGUF architecture {architecture!r} is unknown to the gguf package")
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    out: dict[str, str] = {}
    for hf_name in hf_names:
        base, suffix = processor.preprocess_name(hf_name), ""
        if base.endswith((".weight", ".bias")):
            base, suffix = base.rsplit(".", 1)
            suffix = "." + suffix
        gguf_name = name_map.get_name(base)
        if gguf_name is not None:
            out[gguf_name + suffix] = hf_name
    return out


def _dequantize(f: Any, info: GGUFTensorInfo) -> np.ndarray:
    """One tensor as float32 [shape], de-quantized in row chunks to keep temporaries small."""
    import gguf

    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    rows = prod(info.shape[:-1])
    row_bytes = info.nbytes // rows
    out = np.empty((rows, info.shape[-1]), dtype=np.float32)
    step = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    buf = np.empty(min(step, rows) * row_bytes, dtype=np.uint8)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        raw = buf[: n * row_bytes]
        _read_exact(f, info.offset + start * row_bytes, raw.data)
        out[start : start + n] = gguf.dequantize(raw.reshape(n, row_bytes), qtype)
    return out.reshape(info.shape)


class GGUFCheckpoint(Checkpoint):
    """The tensors of a GGUF file under Hugging Face names, as float32, optionally teed into a cache."""

    def __init__(
        self,
        path: Path,
        hf_config: Any,
        hf_names: list[str],
        n_layers: int,
        cache: CacheBuilder | None = None,
    ) -> None:
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        self.path = path
        self.table = read_tensor_table(path)
        self.processor = TENSOR_PROCESSORS.get(self.table.architecture, TensorProcessor)(
            config=hf_config.to_dict()
        )
        self.names = gguf_to_hf_names(self.table.architecture, hf_names, n_layers, self.processor)
        self.cache = cache
        self.total_bytes = sum(4 * prod(t.shape) for t in self.table.tensors)
        self.description = f"de-quantizing {path.name}"

    def __iter__(self) -> Iterator[TensorRef]:
        skipped: list[str] = []
        with open(self.path, "rb", buffering=0) as f:
            for info in self.table.tensors:
                weights = _dequantize(f, info)
                side: dict[str, dict[str, torch.Tensor]] = {"tensors": {}}
                result = self.processor.process(
                    weights=weights, name=info.name, tensor_key_mapping=self.names, parsed_parameters=side
                )
                outputs = list(
                    side["tensors"].items()
                )  # a processor may emit tensors directly (GPT-2's output)
                if result.name is not None:
                    if result.name not in self.names:
                        skipped.append(result.name)  # transformers skips these too (e.g. rope_freqs)
                    else:
                        tensor = torch.from_numpy(np.ascontiguousarray(result.weights, dtype=np.float32))
                        outputs.append((self.names[result.name], tensor))
                del weights, result
                for name, tensor in outputs:
                    tensor = tensor.float()
                    if self.cache is not None:
                        self.cache.add(name, tensor)
                    yield _ValueRef(name, tensor)
                del outputs
        if skipped:
            logger.warning(
                "%s: GGUF tensors with no Hugging Face counterpart were skipped: %s", self.path.name, skipped
            )
