"""Worker items as serialized ``RunResponse`` messages: the bytes a client receives.

Both ends of a run produce them: a worker for the results it sends in its own gRPC stream,
the front door for results it collects through Ray. Either way the front door forwards
bytes, never re-encoding a message. Also: registering a servicer whose streaming methods
yield such bytes instead of message objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, cast

import grpc

from telelens.protos import service_pb2, tensor_pb2
from telelens.server._private.results import Done, Header, Progress, ResultPiece

# The first byte of a serialized RunResponse is the tag of its one set `item` field
# (field number << 3 | 2 for a length-delimited submessage).
_BATCH_TAG = 5 << 3 | 2  # a RunBatch holds a whole run: results and summary
_RESULT_TAGS = frozenset({2 << 3 | 2, 3 << 3 | 2, _BATCH_TAG})  # header = 2, chunk = 3
_LAST_TAGS = frozenset({4 << 3 | 2, _BATCH_TAG})  # done = 4


def carries_result(message: bytes) -> bool:
    """Whether a serialized ``RunResponse`` holds results (a header, chunk, or batch)."""
    return bool(message) and message[0] in _RESULT_TAGS


def is_done(message: bytes) -> bool:
    """Whether a serialized ``RunResponse`` is the last of its run (the summary, or a batch)."""
    return bool(message) and message[0] in _LAST_TAGS


def batched(responses: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """A run's remaining ``responses``: as one :func:`batch` if it stays within ``limit`` bytes
    (a short run: one write and one read per hop instead of three or more), else as they are."""
    pending: list[bytes] = []
    size = 0
    it = iter(responses)
    for message in it:
        size += len(message) + _ITEM_FRAMING
        if size > limit:
            yield from pending
            yield message
            yield from it
            return
        pending.append(message)
    yield batch(pending)


_ITEM_FRAMING = 6  # a RunBatch item's tag and length: at most 1 + 5 bytes


def batch(responses: Iterable[bytes]) -> bytes:
    """Serialized ``RunResponse`` s as one ``RunResponse(batch=RunBatch(items=...))``, byte for byte."""
    items = b"".join(b"".join((b"\x0a", _varint(len(r)), r)) for r in responses)  # RunBatch.items = 1
    return b"".join((bytes((_BATCH_TAG,)), _varint(len(items)), items))


def item_messages(item: Progress | Header | ResultPiece | Done, chunk_bytes: int) -> Iterator[bytes]:
    """``item`` as serialized ``RunResponse`` s: one, or a chunk cut into ``chunk_bytes`` pieces."""
    if isinstance(item, ResultPiece):
        view = item.data.data  # the uint8 array's buffer, as a memoryview
        for start in range(0, len(view), chunk_bytes):
            yield encode_chunk(item.name, item.offset + start, view[start : start + chunk_bytes])
    else:
        yield _message(item).SerializeToString()


def _message(item: Progress | Header | Done) -> service_pb2.RunResponse:
    if isinstance(item, Progress):
        return service_pb2.RunResponse(
            progress=service_pb2.Progress(done=item.done, total=item.total, stage=item.stage)
        )
    if isinstance(item, Header):
        return service_pb2.RunResponse(
            header=service_pb2.ResultHeader(
                name=item.name, dtype=wire_dtype(item.dtype), shape=list(item.shape), nbytes=item.nbytes
            )
        )
    return service_pb2.RunResponse(
        done=service_pb2.RunSummary(
            result_bytes=item.result_bytes, compute_seconds=item.compute_seconds, worker=item.worker
        )
    )


def wire_dtype(name: str) -> tensor_pb2.DType:
    """The ``DType`` enum value of a dtype name (``"float32"`` -> ``DTYPE_FLOAT32``)."""
    # The generated stubs type ``Value`` as a plain int; it is the enum's value.
    return cast(tensor_pb2.DType, tensor_pb2.DType.Value("DTYPE_" + name.upper()))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def encode_chunk(name: str, offset: int, data: memoryview | bytes) -> bytes:
    """``RunResponse(chunk=ResultChunk(name, offset, data)).SerializeToString()``, byte for byte.

    Written by hand so that the data is copied once, straight from the result's buffer into
    the message, instead of into a ``bytes``, a protobuf field and then its serialization.
    """
    encoded = name.encode()
    head = b"".join(
        (
            b"\x0a" + _varint(len(encoded)) + encoded if encoded else b"",  # ResultChunk.name = 1
            b"\x10" + _varint(offset) if offset else b"",  # ResultChunk.offset = 2
            b"\x1a" + _varint(len(data)) if len(data) else b"",  # ResultChunk.data = 3
        )
    )
    return b"".join((b"\x1a", _varint(len(head) + len(data)), head, data))  # RunResponse.chunk = 3


def _passthrough(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_servicer(
    server: grpc.Server | grpc.aio.Server,
    module: ModuleType,
    service: str,
    servicer: object,
    raw_responses: Iterable[str] = (),
) -> None:
    """Register ``servicer`` for ``service`` of the ``*_pb2`` ``module``, like the generated
    ``add_..._to_server``, except that the methods named in ``raw_responses`` may also
    return or yield pre-serialized messages (``bytes``)."""
    descriptor = module.DESCRIPTOR.services_by_name[service]
    raw = set(raw_responses)
    handlers = {}
    for method in descriptor.methods:
        request = _message_class(method.input_type)
        response = _message_class(method.output_type)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=request.FromString,
            response_serializer=_passthrough if method.name in raw else response.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(descriptor.full_name, handlers),))
    server.add_registered_method_handlers(descriptor.full_name, handlers)


def _message_class(descriptor: Any) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)
