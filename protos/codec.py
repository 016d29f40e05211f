"""Between ``ir.Graph`` (Python values) and ``telelens.v1.Graph`` (protobuf on the wire).

The public face of the wire: ``decode_graph`` (the server's front door, in ``decode``),
``encode_graph`` (the client's side, in ``encode``), single tensors, and refused graphs'
structured errors. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import graph_pb2, ir, tensor_pb2
from .decode import decode_graph, graph_from_bytes
from .encode import encode_graph, graph_to_bytes
from .wire import MAX_REPORTED_ERRORS, WIRE_DTYPES, FieldError, tensor_from, tensor_to

__all__ = [
    "GRAPH_ERRORS_KEY",
    "MAX_REPORTED_ERRORS",
    "WIRE_DTYPES",
    "decode_graph",
    "encode_graph",
    "errors_from_proto",
    "errors_to_proto",
    "graph_from_bytes",
    "graph_to_bytes",
    "tensor_from_proto",
    "tensor_to_proto",
]


# --- tensors ----------------------------------------------------------------------------------


def tensor_to_proto(td: ir.TensorData) -> tensor_pb2.Tensor:
    """``ir.TensorData`` as a ``telelens.v1.Tensor``; raises ``ir.GraphValidationError`` for an unknown dtype.

    Shape and byte count are not checked here: the decoder checks them on the receiving side.
    """
    try:
        return tensor_to(td)
    except FieldError as e:
        raise ir.GraphValidationError([ir.GraphError(None, e.field, e.reason)]) from None


def tensor_from_proto(
    msg: tensor_pb2.Tensor, *, max_bytes: int = ir.Limits.max_constant_bytes
) -> ir.TensorData:
    """A checked ``ir.TensorData``; raises ``ir.GraphValidationError`` (node_id None) if malformed."""
    try:
        return tensor_from(msg, max_bytes)
    except FieldError as e:
        raise ir.GraphValidationError([ir.GraphError(None, e.field, e.reason)]) from None


# --- errors ---------------------------------------------------------------------------------


GRAPH_ERRORS_KEY = "telelens-graph-errors-bin"
"""gRPC trailing-metadata key of a refused graph's serialized ``GraphErrors`` (server and client)."""


def errors_to_proto(errors: Iterable[ir.GraphError]) -> graph_pb2.GraphErrors:
    """Structured errors for the wire (e.g. a refused request's details)."""
    out = graph_pb2.GraphErrors()
    for e in errors:
        item = out.errors.add(field=e.field, reason=e.reason)
        if e.node_id is not None:
            item.node_id = e.node_id
    return out


def errors_from_proto(msg: graph_pb2.GraphErrors | bytes) -> list[ir.GraphError]:
    """The inverse of ``errors_to_proto``; accepts the message or its serialized bytes."""
    parsed = msg if isinstance(msg, graph_pb2.GraphErrors) else graph_pb2.GraphErrors.FromString(bytes(msg))
    return [
        ir.GraphError(e.node_id if e.HasField("node_id") else None, e.field, e.reason) for e in parsed.errors
    ]
