"""Streamed results, assembled without giant intermediate copies.

A ``Run`` answers with ``ResultHeader`` (name, dtype, shape, byte count) and ``ResultChunk``
(name, offset, bytes) messages. Each header allocates the result's final buffer once, and
every chunk is copied straight into it at its offset. Chunks are parsed by hand from the
raw message bytes (:func:`parse_run_response`), so a chunk's payload is a zero-copy view of
what gRPC received, not a protobuf copy: one memcpy per byte from the wire to the tensor.

Everything received is raw little-endian bytes, checked against its header; nothing from
the server is ever unpickled or evaluated.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from telelens.client.errors import ProtocolError
from telelens.protos import ir, service_pb2
from telelens.protos.codec import WIRE_DTYPES  # re-exported: cli and remote read it here

if TYPE_CHECKING:
    import torch


# ---------------------------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Chunk:
    """A ``ResultChunk`` whose ``data`` is a view of the received message (no copy)."""

    name: str
    offset: int
    data: memoryview


@dataclass(frozen=True)
class Malformed:
    """A response that could not be parsed; raised as a ProtocolError by whoever reads it."""

    reason: str


class _Fallback(Exception):
    """The fast path does not handle this message: parse it with protobuf."""


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Fallback
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _skip(buf: bytes, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(buf, pos, end)[1]
    if wire_type == 1:
        return pos + 8
    if wire_type == 2:
        n, pos = _varint(buf, pos, end)
        return pos + n
    if wire_type == 5:
        return pos + 4
    raise _Fallback  # groups: not in this schema


_CHUNK_TAG = (3 << 3) | 2  # RunResponse.chunk: field 3, length-delimited


def _fast_chunk(raw: bytes) -> Chunk:
    """``RunResponse{chunk}`` parsed by hand; raises _Fallback for anything else."""
    end = len(raw)
    if end == 0 or raw[0] != _CHUNK_TAG:
        raise _Fallback
    n, pos = _varint(raw, 1, end)
    if pos + n != end:  # other fields follow (unknown, or a repeated oneof): let protobuf decide
        raise _Fallback
    name, offset, data = "", 0, memoryview(b"")
    view = memoryview(raw)
    while pos < end:
        tag, pos = _varint(raw, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number in (1, 3) and wire_type == 2:
            length, pos = _varint(raw, pos, end)
            if pos + length > end:
                raise _Fallback
            if number == 1:
                name = bytes(view[pos : pos + length]).decode("utf-8")
            else:
                data = view[pos : pos + length]
            pos += length
        elif number == 2 and wire_type == 0:
            offset, pos = _varint(raw, pos, end)
        else:
            pos = _skip(raw, pos, end, wire_type)
        if pos > end:
            raise _Fallback
    return Chunk(name, offset, data)


def parse_run_response(raw: bytes) -> service_pb2.RunResponse | Chunk | Malformed:
    """gRPC response deserializer for ``Run``: chunks fast, everything else through protobuf.

    Never raises (gRPC would turn an exception into an opaque INTERNAL error).
    """
    try:
        return _fast_chunk(raw)
    except (_Fallback, UnicodeDecodeError):
        pass
    try:
        msg = service_pb2.RunResponse.FromString(raw)
    except Exception as e:  # a DecodeError, whatever protobuf calls it
        return Malformed(f"undecodable Run response ({len(raw)} bytes): {e}")
    return response_item(msg)


def response_item(msg: service_pb2.RunResponse) -> service_pb2.RunResponse | Chunk:
    """A parsed ``RunResponse`` as the assembler takes it: a chunk as a :class:`Chunk`."""
    if msg.WhichOneof("item") == "chunk":
        c = msg.chunk
        return Chunk(c.name, c.offset, memoryview(c.data))
    return msg


# ---------------------------------------------------------------------------------------- assembly
@dataclass
class _Pending:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    buffer: Any  # torch uint8 tensor [nbytes]
    view: memoryview
    spans: list[tuple[int, int]] = field(default_factory=list)  # (offset, end) of each chunk
    received: int = 0


@dataclass
class AssemblyStats:
    results: int = 0
    result_bytes: int = 0
    """Sum of the headers' byte counts."""
    chunk_bytes: int = 0
    """Payload bytes of the chunks received."""
    chunks: int = 0


class ResultAssembler:
    """Collects headers and chunks of one ``Run`` into tensors.

    ``max_result_bytes`` refuses a header announcing more than that (a client-side ceiling on
    what a server can make this process allocate), before allocating; ``on_bytes(n)`` is called
    per chunk. ``expected`` are the names the graph saved, when known: a header for any other
    name is refused, and :meth:`finish` refuses a stream that lacks one of them.
    """

    def __init__(
        self,
        max_result_bytes: int | None = None,
        on_bytes: Any = None,
        expected: Iterable[str] | None = None,
    ) -> None:
        self.max_result_bytes = max_result_bytes
        self.on_bytes = on_bytes
        self.expected = None if expected is None else frozenset(expected)
        self.pending: dict[str, _Pending] = {}
        self.stats = AssemblyStats()

    def header(self, h: service_pb2.ResultHeader) -> int:
        """Allocate the buffer for one result; returns its byte count."""
        import torch

        name = h.name
        if not name:
            raise ProtocolError("a result header without a name")
        if name in self.pending:
            raise ProtocolError(f"two headers for result {name!r}")
        if self.expected is not None and name not in self.expected:
            raise ProtocolError(f"a result header for {name!r}, which the graph did not save")
        dtype = WIRE_DTYPES.get(h.dtype)
        if dtype is None:
            raise ProtocolError(f"result {name!r} has an unknown dtype (enum {h.dtype})")
        shape = tuple(int(d) for d in h.shape)
        if any(d < 0 for d in shape):
            raise ProtocolError(f"result {name!r} has a negative dimension: {list(shape)}")
        expected = math.prod(shape) * ir.ITEMSIZE[dtype]
        if h.nbytes != expected:
            raise ProtocolError(
                f"result {name!r}: header says {h.nbytes} bytes, shape {list(shape)} x {dtype} needs {expected}"
            )
        total = self.stats.result_bytes + expected
        if self.max_result_bytes is not None and total > self.max_result_bytes:
            raise ProtocolError(
                f"result {name!r} declares {expected} bytes ({_size(expected)}, shape {list(shape)} x "
                f"{dtype}), bringing this run's results to {total} bytes, more than this client's "
                f"max_result_bytes={self.max_result_bytes} ({_size(self.max_result_bytes)}); refused "
                "before allocating (raise max_result_bytes in connect() if the server is right)"
            )
        buffer = torch.empty(expected, dtype=torch.uint8)  # the result's final memory
        self.pending[name] = _Pending(name, dtype, shape, expected, buffer, buffer.numpy().data)
        self.stats.results += 1
        self.stats.result_bytes = total
        return expected

    def chunk(self, c: Chunk) -> None:
        p = self.pending.get(c.name)
        if p is None:
            raise ProtocolError(f"a chunk for {c.name!r} before its header")
        n = len(c.data)
        end = c.offset + n
        if end > p.nbytes:
            raise ProtocolError(f"a chunk of {c.name!r} ends at byte {end}, past its {p.nbytes} bytes")
        p.view[c.offset : end] = c.data
        p.spans.append((c.offset, end))
        p.received += n
        self.stats.chunk_bytes += n
        self.stats.chunks += 1
        if self.on_bytes is not None:
            self.on_bytes(n)

    def finish(self) -> dict[str, torch.Tensor]:
        """Every result as a tensor; raises ProtocolError if any byte is missing or sent twice,
        or if a name the graph saved never arrived."""
        if self.expected is not None:
            missing = sorted(self.expected - self.pending.keys())
            if missing:
                raise ProtocolError(
                    f"the run finished without the saved value(s) {', '.join(map(repr, missing))} "
                    f"(received {len(self.pending)} of {len(self.expected)} results)"
                )
        out = {}
        for p in self.pending.values():
            _check_coverage(p)
            out[p.name] = _as_tensor(p)
        return out


def _size(nbytes: int) -> str:
    """``4.0 TiB``: a byte count a person can read."""
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _check_coverage(p: _Pending) -> None:
    covered = 0
    for start, end in sorted(p.spans):
        if start != covered:
            what = "overlapping" if start < covered else "missing"
            raise ProtocolError(f"result {p.name!r}: {what} bytes at offset {min(start, covered)}")
        covered = end
    if covered != p.nbytes:
        raise ProtocolError(f"result {p.name!r}: received {covered} of {p.nbytes} bytes")


def _as_tensor(p: _Pending) -> torch.Tensor:
    import torch

    from telelens.protos.torch_tensors import LITTLE_ENDIAN_NUMPY, torch_dtypes

    torch_dtype = torch_dtypes()[p.dtype]
    if p.dtype == "bool":
        if p.nbytes and bool((p.buffer > 1).any()):
            raise ProtocolError(f"result {p.name!r}: bool elements must be the bytes 0 or 1")
        return p.buffer.view(torch.bool).reshape(p.shape)
    if sys.byteorder == "big" and ir.ITEMSIZE[p.dtype] > 1:  # wire bytes are little-endian
        array = p.buffer.numpy().view(np.dtype(LITTLE_ENDIAN_NUMPY[p.dtype])).byteswap().view(np.uint8)
        p.buffer = torch.from_numpy(array.copy())
    return p.buffer.view(torch_dtype).reshape(p.shape)
