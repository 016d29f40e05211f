"""What encoding and decoding share: the wire's enum tables, field errors, tensor messages.

The enum tables map IR strings to protobuf enum values (``"float32"`` <-> ``DTYPE_FLOAT32``);
the dtype table comes from ``ir.ITEMSIZE``, the one list of dtypes. Never imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import graph_pb2, ir, tensor_pb2
from .structure import SWEEP_AXES
from .tensor_checks import TensorProblem, check_tensor_data, expected_nbytes

MAX_REPORTED_ERRORS = 100
"""A hostile graph can be wrong everywhere; report this many errors and a count of the rest."""


class EnumMap:
    """IR strings <-> a protobuf enum whose values are ``PREFIX_`` + the upper-cased string."""

    def __init__(self, enum: Any, prefix: str, names: Iterable[str]) -> None:
        self.numbers = {name: enum.Value(prefix + name.upper()) for name in names}
        self.names = {number: name for name, number in self.numbers.items()}


DTYPES = EnumMap(tensor_pb2.DType, "DTYPE_", ir.DTYPES)
WRITE_MODES = EnumMap(graph_pb2.WriteMode, "WRITE_MODE_", ir.WRITE_MODES)
BINARY_OPS = EnumMap(graph_pb2.BinaryOp, "BINARY_OP_", ir.BINARY_OPS)
UNARY_OPS = EnumMap(graph_pb2.UnaryOp, "UNARY_OP_", ir.UNARY_OPS)
REDUCE_OPS = EnumMap(graph_pb2.ReduceOp, "REDUCE_OP_", ir.REDUCE_OPS)
SWEEP_AXES_WIRE = EnumMap(graph_pb2.SweepAxis, "SWEEP_AXIS_", SWEEP_AXES)
WIRE_DTYPES: dict[int, str] = DTYPES.names
"""``tensor_pb2.DType`` value -> dtype name (what a result header's ``dtype`` means)."""


class FieldError(Exception):
    """One problem in one field of the node being converted."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def refuse(errors: list[ir.GraphError]) -> ir.GraphValidationError:
    if len(errors) > MAX_REPORTED_ERRORS:
        more = len(errors) - MAX_REPORTED_ERRORS
        errors = [*errors[:MAX_REPORTED_ERRORS], ir.GraphError(None, "", f"... and {more} more errors")]
    return ir.GraphValidationError(errors)


def enum_value(table: EnumMap, value: object, field: str) -> int:
    """The wire value of IR string ``value`` (``FieldError`` if the wire has none)."""
    number = table.numbers.get(value) if isinstance(value, str) else None
    if number is None:
        raise FieldError(field, f"{value!r} is not one of {', '.join(table.numbers)}")
    return number


def enum_name(table: EnumMap, value: int, field: str) -> str:
    """The IR string of wire value ``value`` (``FieldError`` if unset or unknown)."""
    if value == 0:
        raise FieldError(field, "required (UNSPECIFIED)")
    name = table.names.get(value)
    if name is None:
        raise FieldError(field, f"unknown enum value {value}")
    return name


def tensor_to(td: ir.TensorData, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """``td`` written into ``out`` (a new message if None); ``FieldError`` for an unknown dtype."""
    out = tensor_pb2.Tensor() if out is None else out
    out.dtype = enum_value(DTYPES, td.dtype, "dtype")  # type: ignore[assignment]
    out.shape.extend(td.shape)
    out.data = td.data  # written in place: one copy of a large constant, not two
    return out


def tensor_from(msg: tensor_pb2.Tensor, max_bytes: int | None) -> ir.TensorData:
    """``msg`` as ``ir.TensorData``; ``FieldError`` if malformed. ``max_bytes=None``: a tensor the
    front door already checked, so its shape and byte count are taken as they are."""
    dtype = enum_name(DTYPES, msg.dtype, "dtype")
    shape = tuple(msg.shape)
    if max_bytes is None:
        return ir.TensorData(dtype, shape, msg.data)
    try:
        expected = expected_nbytes(dtype, shape, max_bytes)  # before the data is touched
        data = msg.data
        check_tensor_data(dtype, shape, data, expected)
    except TensorProblem as e:
        raise FieldError(e.field, e.reason) from None
    return ir.TensorData(dtype, shape, data)
