"""Between ``ir.Graph`` (Python values) and ``telelens.v1.Graph`` (protobuf on the wire).

``decode_graph`` is the server's front door: whatever bytes arrive, it returns a
structurally valid ``ir.Graph`` or raises ``ir.GraphValidationError`` naming each bad
node, never another exception. It refuses sizes (node count, constant bytes) before
building anything of that size, and it never imports torch. ``encode_graph`` is the
client's side; it converts local-mode torch constants to ``ir.TensorData``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from . import graph_pb2, ir, tensor_pb2
from .structure import SWEEP_AXES, TensorProblem, check_structure, check_tensor_data, expected_nbytes

__all__ = [
    "decode_graph",
    "encode_graph",
    "errors_from_proto",
    "errors_to_proto",
    "graph_from_bytes",
    "graph_to_bytes",
    "tensor_from_proto",
    "tensor_to_proto",
]

MAX_REPORTED_ERRORS = 100
"""A hostile graph can be wrong everywhere; report this many errors and a count of the rest."""


class _EnumMap:
    """IR strings <-> a protobuf enum whose values are ``PREFIX_`` + the upper-cased string."""

    def __init__(self, enum: Any, prefix: str, names: Iterable[str]) -> None:
        self.numbers = {name: enum.Value(prefix + name.upper()) for name in names}
        self.names = {number: name for name, number in self.numbers.items()}


_DTYPES = _EnumMap(tensor_pb2.DType, "DTYPE_", ir.DTYPES)
_WRITE_MODES = _EnumMap(graph_pb2.WriteMode, "WRITE_MODE_", ir.WRITE_MODES)
_BINARY_OPS = _EnumMap(graph_pb2.BinaryOp, "BINARY_OP_", ir.BINARY_OPS)
_UNARY_OPS = _EnumMap(graph_pb2.UnaryOp, "UNARY_OP_", ir.UNARY_OPS)
_REDUCE_OPS = _EnumMap(graph_pb2.ReduceOp, "REDUCE_OP_", ir.REDUCE_OPS)
_SWEEP_AXES = _EnumMap(graph_pb2.SweepAxis, "SWEEP_AXIS_", SWEEP_AXES)


class _FieldError(Exception):
    """One problem in one field of the node being converted."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason


def _refuse(errors: list[ir.GraphError]) -> ir.GraphValidationError:
    if len(errors) > MAX_REPORTED_ERRORS:
        more = len(errors) - MAX_REPORTED_ERRORS
        errors = [*errors[:MAX_REPORTED_ERRORS], ir.GraphError(None, "", f"... and {more} more errors")]
    return ir.GraphValidationError(errors)


# --- tensors ----------------------------------------------------------------------------------


def tensor_to_proto(td: ir.TensorData) -> tensor_pb2.Tensor:
    """``ir.TensorData`` as a ``telelens.v1.Tensor``; raises ``ir.GraphValidationError`` for an unknown dtype.

    Shape and byte count are not checked here: the decoder checks them on the receiving side.
    """
    try:
        return _tensor_to(td)
    except _FieldError as e:
        raise ir.GraphValidationError([ir.GraphError(None, e.field, e.reason)]) from None


def _tensor_to(td: ir.TensorData, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    out = tensor_pb2.Tensor() if out is None else out
    out.dtype = _enum_value(_DTYPES, td.dtype, "dtype")  # type: ignore[assignment]
    out.shape.extend(td.shape)
    out.data = td.data  # written in place: one copy of a large constant, not two
    return out


def _tensor_from(msg: tensor_pb2.Tensor, max_bytes: int) -> ir.TensorData:
    dtype = _enum_name(_DTYPES, msg.dtype, "dtype")
    shape = tuple(msg.shape)
    try:
        expected = expected_nbytes(dtype, shape, max_bytes)  # before the data is touched
        data = msg.data
        check_tensor_data(dtype, shape, data, expected)
    except TensorProblem as e:
        raise _FieldError(e.field, e.reason) from None
    return ir.TensorData(dtype, shape, data)


def tensor_from_proto(
    msg: tensor_pb2.Tensor, *, max_bytes: int = ir.Limits.max_constant_bytes
) -> ir.TensorData:
    """A checked ``ir.TensorData``; raises ``ir.GraphValidationError`` (node_id None) if malformed."""
    try:
        return _tensor_from(msg, max_bytes)
    except _FieldError as e:
        raise ir.GraphValidationError([ir.GraphError(None, e.field, e.reason)]) from None


# --- errors -----------------------------------------------------------------------------------


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


# --- encoding ---------------------------------------------------------------------------------


def graph_to_bytes(graph: ir.Graph) -> bytes:
    """``encode_graph`` serialized; deterministic for a given graph."""
    return encode_graph(graph).SerializeToString(deterministic=True)


def encode_graph(graph: ir.Graph) -> graph_pb2.Graph:
    """``graph`` as a ``telelens.v1.Graph``.

    Raises ``ir.GraphValidationError`` for what the wire cannot carry (unknown op names,
    non-int64 ids, constants that are neither TensorData nor torch tensors). Structure is
    not checked here: the decoder does that on the receiving side.
    """
    errors: list[ir.GraphError] = []
    msg = graph_pb2.Graph()
    try:
        msg.version = graph.version
    except (TypeError, ValueError) as e:
        errors.append(ir.GraphError(None, "version", f"cannot encode: {e}"))
    for node in graph.nodes:
        try:
            _encode_node(msg.nodes.add(), node)
        except _FieldError as e:
            errors.append(ir.GraphError(_id_or_none(node), e.field, e.reason))
    if errors:
        raise _refuse(errors)
    return msg


def _id_or_none(node: object) -> int | None:
    node_id = getattr(node, "id", None)
    return node_id if isinstance(node_id, int) and not isinstance(node_id, bool) else None


def _encode_node(out: graph_pb2.Node, node: ir.Node) -> None:
    try:
        out.id = node.id
        encoder = _ENCODERS.get(type(node))
        if encoder is None:
            raise _FieldError("", f"not an intervention node: {type(node).__name__}")
        op = getattr(out, _OP_FIELDS[type(node)])
        op.SetInParent()  # the oneof is set even when every field keeps its default
        encoder(op, node)
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise _FieldError("", f"cannot encode: {e}") from None


def _ref(field: str, value: object) -> int:
    if not isinstance(value, ir.Ref):
        raise _FieldError(field, f"expected a Ref, got {type(value).__name__}")
    return value.node


def _enum_value(table: _EnumMap, value: object, field: str) -> int:
    number = table.numbers.get(value) if isinstance(value, str) else None
    if number is None:
        raise _FieldError(field, f"{value!r} is not one of {', '.join(table.numbers)}")
    return number


def _set_operand(out: graph_pb2.Operand, value: object, field: str) -> None:
    if isinstance(value, ir.Ref):
        out.node = value.node
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.scalar = float(value)
    else:
        raise _FieldError(field, f"expected a Ref or a scalar, got {type(value).__name__}")


def _set_index(out: Any, items: tuple[ir.IndexItem, ...], field: str) -> None:
    for i, item in enumerate(items):
        msg = out.add()
        if isinstance(item, ir.Ref):
            msg.tensor = item.node
        elif isinstance(item, ir.Slice):
            msg.slice.SetInParent()
            for part in ("start", "stop", "step"):
                if getattr(item, part) is not None:
                    setattr(msg.slice, part, getattr(item, part))
        elif item is ir.ELLIPSIS:
            msg.ellipsis.SetInParent()
        elif item is ir.NEW_AXIS:
            msg.new_axis.SetInParent()
        elif isinstance(item, int) and not isinstance(item, bool):
            msg.integer = item
        else:
            raise _FieldError(f"{field}[{i}]", f"not an index item: {item!r}")


def _enc_run(out: graph_pb2.Node.Run, n: ir.Run) -> None:
    if n.tokens is not None:
        out.tokens = _ref("tokens", n.tokens)
    out.text.extend(n.text)
    if n.prepend_bos is not None:
        out.prepend_bos = n.prepend_bos
    if n.attention_mask is not None:
        out.attention_mask = _ref("attention_mask", n.attention_mask)


def _enc_read(out: graph_pb2.Node.Read, n: ir.Read) -> None:
    out.run = n.run
    out.hook = n.hook


def _enc_write(out: graph_pb2.Node.Write, n: ir.Write) -> None:
    out.run = n.run
    out.hook = n.hook
    _set_operand(out.value, n.value, "value")
    _set_index(out.index, n.index, "index")
    out.mode = _enum_value(_WRITE_MODES, n.mode, "mode")  # type: ignore[assignment]


def _enc_constant(out: graph_pb2.Node.Constant, n: ir.Constant) -> None:
    value = n.value
    torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        from .torch_tensors import tensor_data_from_torch

        value = tensor_data_from_torch(value)
    if not isinstance(value, ir.TensorData):
        raise _FieldError("value", f"expected TensorData or a torch tensor, got {type(value).__name__}")
    try:
        _tensor_to(value, out.value)
    except _FieldError as e:
        raise _FieldError(f"value.{e.field}", e.reason) from None


def _enc_weight(out: graph_pb2.Node.Weight, n: ir.Weight) -> None:
    out.name = n.name


def _enc_index(out: graph_pb2.Node.Index, n: ir.Index) -> None:
    out.input = _ref("input", n.input)
    _set_index(out.index, n.index, "index")


def _enc_binary(out: graph_pb2.Node.Binary, n: ir.Binary) -> None:
    out.op = _enum_value(_BINARY_OPS, n.op, "op")  # type: ignore[assignment]
    _set_operand(out.a, n.a, "a")
    _set_operand(out.b, n.b, "b")


def _enc_unary(out: graph_pb2.Node.Unary, n: ir.Unary) -> None:
    out.op = _enum_value(_UNARY_OPS, n.op, "op")  # type: ignore[assignment]
    out.input = _ref("input", n.input)
    if n.dim is not None:
        out.dim = n.dim
    if n.min is not None:
        out.min = n.min
    if n.max is not None:
        out.max = n.max


def _enc_reduce(out: graph_pb2.Node.Reduce, n: ir.Reduce) -> None:
    out.op = _enum_value(_REDUCE_OPS, n.op, "op")  # type: ignore[assignment]
    out.input = _ref("input", n.input)
    if n.dims is not None:
        out.dims.SetInParent()
        out.dims.values.extend(n.dims)
    out.keepdim = n.keepdim


def _enc_gather(out: graph_pb2.Node.Gather, n: ir.Gather) -> None:
    out.input = _ref("input", n.input)
    out.dim = n.dim
    out.index = _ref("index", n.index)


def _enc_reshape(out: graph_pb2.Node.Reshape, n: ir.Reshape) -> None:
    out.input = _ref("input", n.input)
    out.shape.extend(n.shape)


def _enc_transpose(out: graph_pb2.Node.Transpose, n: ir.Transpose) -> None:
    out.input = _ref("input", n.input)
    out.dim0 = n.dim0
    out.dim1 = n.dim1


def _enc_save(out: graph_pb2.Node.Save, n: ir.Save) -> None:
    out.input = _ref("input", n.input)
    out.name = n.name
    if n.dtype is not None:
        out.dtype = _enum_value(_DTYPES, n.dtype, "dtype")  # type: ignore[assignment]


def _enc_code_hook(out: graph_pb2.Node.CodeHook, n: ir.CodeHook) -> None:
    out.run = n.run
    out.hook = n.hook
    out.payload = n.payload


def _enc_sweep(out: graph_pb2.Node.Sweep, n: ir.Sweep) -> None:
    out.corrupted = n.corrupted
    out.clean = n.clean
    out.activation = n.activation
    out.axes.extend(_enum_value(_SWEEP_AXES, a, "axes") for a in n.axes)
    for sub in n.metric:
        try:
            _encode_node(out.metric.add(), sub)
        except _FieldError as e:
            where = f"metric[node {_id_or_none(sub)}]"
            raise _FieldError(f"{where}.{e.field}" if e.field else where, e.reason) from None
    out.metric_input = n.metric_input
    out.metric_output = n.metric_output


def _enc_sweep_logits(out: graph_pb2.Node.SweepLogits, n: ir.SweepLogits) -> None:
    pass  # no fields; _encode_node has set the oneof


_ENCODERS: dict[type, Any] = {
    ir.Run: _enc_run,
    ir.Read: _enc_read,
    ir.Write: _enc_write,
    ir.Constant: _enc_constant,
    ir.Weight: _enc_weight,
    ir.Index: _enc_index,
    ir.Binary: _enc_binary,
    ir.Unary: _enc_unary,
    ir.Reduce: _enc_reduce,
    ir.Gather: _enc_gather,
    ir.Reshape: _enc_reshape,
    ir.Transpose: _enc_transpose,
    ir.Save: _enc_save,
    ir.CodeHook: _enc_code_hook,
    ir.Sweep: _enc_sweep,
    ir.SweepLogits: _enc_sweep_logits,
}
_OP_FIELDS: dict[type, str] = {
    ir.Run: "run",
    ir.Read: "read",
    ir.Write: "write",
    ir.Constant: "constant",
    ir.Weight: "weight",
    ir.Index: "index",
    ir.Binary: "binary",
    ir.Unary: "unary",
    ir.Reduce: "reduce",
    ir.Gather: "gather",
    ir.Reshape: "reshape",
    ir.Transpose: "transpose",
    ir.Save: "save",
    ir.CodeHook: "code_hook",
    ir.Sweep: "sweep",
    ir.SweepLogits: "sweep_logits",
}


# --- decoding ---------------------------------------------------------------------------------


def graph_from_bytes(data: bytes | bytearray | memoryview, limits: ir.Limits | None = None) -> ir.Graph:
    """Alias of ``decode_graph`` for serialized input."""
    return decode_graph(data, limits)


def decode_graph(
    data: bytes | bytearray | memoryview | graph_pb2.Graph, limits: ir.Limits | None = None
) -> ir.Graph:
    """A structurally valid ``ir.Graph`` from the wire, or ``ir.GraphValidationError``.

    Checks, in order: the bytes parse; the version is one this code runs; the node count
    (sweep sub-graphs included) is within ``limits.max_nodes``; every node has an id and
    an op, every enum value is known, every reference field is set; each constant's shape
    is non-negative and within ``limits.max_constant_bytes`` (before its data is touched)
    and its data has exactly that many bytes; then ``structure.check_structure``.
    """
    limits = limits or ir.Limits()
    try:
        return _decode(data, limits)
    except ir.GraphValidationError:
        raise
    except Exception as e:  # the contract: a bad graph never surfaces as another exception
        raise ir.GraphValidationError(
            [ir.GraphError(None, "", f"undecodable graph ({type(e).__name__}: {e})")]
        ) from None


def _decode(data: object, limits: ir.Limits) -> ir.Graph:
    if isinstance(data, graph_pb2.Graph):
        msg = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        msg = graph_pb2.Graph()
        try:
            msg.ParseFromString(bytes(data))
        except Exception as e:  # DecodeError, or RecursionError-like errors from upb
            raise ir.GraphValidationError(
                [ir.GraphError(None, "", f"not a telelens.v1.Graph message ({type(e).__name__}: {e})")]
            ) from None
    else:
        raise ir.GraphValidationError(
            [ir.GraphError(None, "", f"expected bytes or a telelens.v1.Graph, got {type(data).__name__}")]
        )

    if not 1 <= msg.version <= ir.GRAPH_VERSION:
        reason = (
            "missing"
            if msg.version == 0
            else f"{msg.version} is newer than this decoder ({ir.GRAPH_VERSION})"
        )
        raise ir.GraphValidationError([ir.GraphError(None, "version", reason)])
    total = len(msg.nodes) + sum(len(n.sweep.metric) for n in msg.nodes if n.WhichOneof("op") == "sweep")
    if total > limits.max_nodes:
        raise ir.GraphValidationError(
            [ir.GraphError(None, "nodes", f"{total} nodes; the limit is {limits.max_nodes}")]
        )

    errors: list[ir.GraphError] = []
    nodes: list[ir.Node] = []
    for position, m in enumerate(msg.nodes):
        if not m.HasField("id"):
            errors.append(ir.GraphError(None, f"nodes[{position}].id", "required"))
            continue
        try:
            nodes.append(_node_from(m, limits, in_metric=False))
        except _FieldError as e:
            errors.append(ir.GraphError(m.id, e.field, e.reason))
    if errors:
        raise _refuse(errors)

    graph = ir.Graph(nodes=tuple(nodes), version=msg.version)
    errors = check_structure(graph, limits)
    if errors:
        raise _refuse(errors)
    return graph


def _enum_name(table: _EnumMap, value: int, field: str) -> str:
    if value == 0:
        raise _FieldError(field, "required (UNSPECIFIED)")
    name = table.names.get(value)
    if name is None:
        raise _FieldError(field, f"unknown enum value {value}")
    return name


def _required(msg: Any, field: str) -> int:
    if not msg.HasField(field):
        raise _FieldError(field, "required")
    return getattr(msg, field)


def _optional(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def _operand_from(msg: graph_pb2.Operand, field: str) -> ir.Operand:
    kind = msg.WhichOneof("value")
    if kind == "node":
        return ir.Ref(msg.node)
    if kind == "scalar":
        return msg.scalar
    raise _FieldError(field, "required: a node or a scalar")


def _index_from(items: Iterable[graph_pb2.IndexItem], field: str) -> tuple[ir.IndexItem, ...]:
    out: list[ir.IndexItem] = []
    for i, item in enumerate(items):
        kind = item.WhichOneof("item")
        if kind == "integer":
            out.append(item.integer)
        elif kind == "slice":
            s = item.slice
            out.append(ir.Slice(_optional(s, "start"), _optional(s, "stop"), _optional(s, "step")))
        elif kind == "ellipsis":
            out.append(ir.ELLIPSIS)
        elif kind == "new_axis":
            out.append(ir.NEW_AXIS)
        elif kind == "tensor":
            out.append(ir.Ref(item.tensor))
        else:
            raise _FieldError(f"{field}[{i}]", "empty index item (or one from a newer version)")
    return tuple(out)


def _node_from(m: graph_pb2.Node, limits: ir.Limits, *, in_metric: bool) -> ir.Node:
    nid = m.id
    kind = m.WhichOneof("op")
    if kind is None:
        raise _FieldError("op", "no op set (an empty node, or an op from a newer version)")
    op: Any = getattr(m, kind)
    if kind == "run":
        return ir.Run(
            nid,
            tokens=_ref_or_none(op, "tokens"),
            text=tuple(op.text),
            prepend_bos=_optional(op, "prepend_bos"),
            attention_mask=_ref_or_none(op, "attention_mask"),
        )
    if kind == "read":
        return ir.Read(nid, run=_required(op, "run"), hook=op.hook)
    if kind == "write":
        return ir.Write(
            nid,
            run=_required(op, "run"),
            hook=op.hook,
            value=_operand_from(op.value, "value"),
            index=_index_from(op.index, "index"),
            mode=_enum_name(_WRITE_MODES, op.mode, "mode"),
        )
    if kind == "constant":
        if not op.HasField("value"):
            raise _FieldError("value", "required")
        try:
            return ir.Constant(nid, value=_tensor_from(op.value, limits.max_constant_bytes))
        except _FieldError as e:
            raise _FieldError(f"value.{e.field}", e.reason) from None
    if kind == "weight":
        return ir.Weight(nid, name=op.name)
    if kind == "index":
        return ir.Index(nid, input=ir.Ref(_required(op, "input")), index=_index_from(op.index, "index"))
    if kind == "binary":
        return ir.Binary(
            nid,
            op=_enum_name(_BINARY_OPS, op.op, "op"),
            a=_operand_from(op.a, "a"),
            b=_operand_from(op.b, "b"),
        )
    if kind == "unary":
        return ir.Unary(
            nid,
            op=_enum_name(_UNARY_OPS, op.op, "op"),
            input=ir.Ref(_required(op, "input")),
            dim=_optional(op, "dim"),
            min=_optional(op, "min"),
            max=_optional(op, "max"),
        )
    if kind == "reduce":
        return ir.Reduce(
            nid,
            op=_enum_name(_REDUCE_OPS, op.op, "op"),
            input=ir.Ref(_required(op, "input")),
            dims=tuple(op.dims.values) if op.HasField("dims") else None,
            keepdim=op.keepdim,
        )
    if kind == "gather":
        return ir.Gather(
            nid, input=ir.Ref(_required(op, "input")), dim=op.dim, index=ir.Ref(_required(op, "index"))
        )
    if kind == "reshape":
        return ir.Reshape(nid, input=ir.Ref(_required(op, "input")), shape=tuple(op.shape))
    if kind == "transpose":
        return ir.Transpose(nid, input=ir.Ref(_required(op, "input")), dim0=op.dim0, dim1=op.dim1)
    if kind == "save":
        dtype = None if op.dtype == 0 else _enum_name(_DTYPES, op.dtype, "dtype")
        return ir.Save(nid, input=ir.Ref(_required(op, "input")), name=op.name, dtype=dtype)
    if kind == "code_hook":
        return ir.CodeHook(nid, run=_required(op, "run"), hook=op.hook, payload=op.payload)
    if kind == "sweep":
        if in_metric:  # refused here, not later: converting it would recurse and escape max_nodes
            raise _FieldError("", "a Sweep may not appear in a sweep's metric sub-graph")
        return ir.Sweep(
            nid,
            corrupted=_required(op, "corrupted"),
            clean=_required(op, "clean"),
            activation=op.activation,
            axes=tuple(_axis_name(a, i) for i, a in enumerate(op.axes)),
            metric=_metric_from(op.metric, limits),
            metric_input=_required(op, "metric_input"),
            metric_output=_required(op, "metric_output"),
        )
    if kind == "sweep_logits":
        return ir.SweepLogits(nid)
    raise _FieldError("op", f"unknown op {kind!r}")  # a oneof member this decoder forgot


def _ref_or_none(msg: Any, field: str) -> ir.Ref | None:
    return ir.Ref(getattr(msg, field)) if msg.HasField(field) else None


def _axis_name(value: int, i: int) -> str:
    return _enum_name(_SWEEP_AXES, value, f"axes[{i}]")


def _metric_from(metric: Iterable[graph_pb2.Node], limits: ir.Limits) -> tuple[ir.Node, ...]:
    out: list[ir.Node] = []
    for position, m in enumerate(metric):
        if not m.HasField("id"):
            raise _FieldError(f"metric[{position}].id", "required")
        try:
            out.append(_node_from(m, limits, in_metric=True))
        except _FieldError as e:
            where = f"metric[node {m.id}]"
            raise _FieldError(f"{where}.{e.field}" if e.field else where, e.reason) from None
    return tuple(out)
