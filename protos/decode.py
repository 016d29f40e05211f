"""``telelens.v1.Graph`` -> ``ir.Graph``: the server's front door.

Whatever bytes arrive, ``decode_graph`` returns a structurally valid ``ir.Graph`` or raises
``ir.GraphValidationError`` naming each bad node, never another exception. It refuses sizes
(node count, constant bytes) before building anything of that size, and it never imports
torch. A worker decodes the front door's checked copy with ``trusted=True``: IR only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import graph_pb2, ir
from .structure import check_structure, mark_checked
from .wire import (
    BINARY_OPS,
    DTYPES,
    REDUCE_OPS,
    SWEEP_AXES_WIRE,
    UNARY_OPS,
    WRITE_MODES,
    FieldError,
    enum_name,
    refuse,
    tensor_from,
)

__all__ = ["decode_graph", "graph_from_bytes"]


def graph_from_bytes(
    data: bytes | bytearray | memoryview, limits: ir.Limits | None = None, *, trusted: bool = False
) -> ir.Graph:
    """Alias of ``decode_graph`` for serialized input."""
    return decode_graph(data, limits, trusted=trusted)


def decode_graph(
    data: bytes | bytearray | memoryview | graph_pb2.Graph,
    limits: ir.Limits | None = None,
    *,
    trusted: bool = False,
) -> ir.Graph:
    """A structurally valid ``ir.Graph`` from the wire, or ``ir.GraphValidationError``.

    Checks, in order: the bytes parse; the version is one this code runs; the node count
    (sweep sub-graphs included) is within ``limits.max_nodes``; every node has an id and
    an op, every enum value is known, every reference field is set; each constant's shape
    is non-negative and within ``limits.max_constant_bytes`` (before its data is touched)
    and its data has exactly that many bytes; then ``structure.check_structure``.

    ``trusted=True`` is for a graph the front door already decoded and checked under the same
    ``limits`` (a worker's copy): the IR is built, but none of the checks above run again, and
    the graph is marked as checked so that validation skips its structural pass.
    """
    limits = limits or ir.Limits()
    try:
        return _decode(data, limits, trusted)
    except ir.GraphValidationError:
        raise
    except Exception as e:  # the contract: a bad graph never surfaces as another exception
        raise ir.GraphValidationError(
            [ir.GraphError(None, "", f"undecodable graph ({type(e).__name__}: {e})")]
        ) from None


def _decode(data: object, limits: ir.Limits, trusted: bool) -> ir.Graph:
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

    if trusted:
        return _build(msg, limits, trusted=True)
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

    graph = _build(msg, limits, trusted=False)
    errors = check_structure(graph, limits)
    if errors:
        raise refuse(errors)
    return graph


def _build(msg: graph_pb2.Graph, limits: ir.Limits, *, trusted: bool) -> ir.Graph:
    """The IR of ``msg`` (refused if some node cannot be built); trusted: marked as checked."""
    max_bytes = None if trusted else limits.max_constant_bytes
    errors: list[ir.GraphError] = []
    nodes: list[ir.Node] = []
    for position, m in enumerate(msg.nodes):
        if not m.HasField("id"):
            errors.append(ir.GraphError(None, f"nodes[{position}].id", "required"))
            continue
        try:
            nodes.append(_node_from(m, max_bytes, in_metric=False))
        except FieldError as e:
            errors.append(ir.GraphError(m.id, e.field, e.reason))
    if errors:
        raise refuse(errors)
    graph = ir.Graph(nodes=tuple(nodes), version=msg.version)
    if trusted:
        mark_checked(graph, limits)
    return graph


def _required(msg: Any, field: str) -> int:
    if not msg.HasField(field):
        raise FieldError(field, "required")
    return getattr(msg, field)


def _optional(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def _operand_from(msg: graph_pb2.Operand, field: str) -> ir.Operand:
    kind = msg.WhichOneof("value")
    if kind == "node":
        return ir.Ref(msg.node)
    if kind == "scalar":
        return msg.scalar
    raise FieldError(field, "required: a node or a scalar")


def _index_from(items: Iterable[graph_pb2.IndexItem], field: str) -> tuple[ir.IndexItem, ...]:
    out: list[ir.IndexItem] = []
    for i, item in enumerate(items):
        kind = item.WhichOneof("item")
        if kind == "integer":
            out.append(item.integer)
        elif kind == "slice":
            s = item.slice
            out.append(ir.SliceItem(_optional(s, "start"), _optional(s, "stop"), _optional(s, "step")))
        elif kind == "ellipsis":
            out.append(ir.ELLIPSIS)
        elif kind == "new_axis":
            out.append(ir.NEW_AXIS)
        elif kind == "tensor":
            out.append(ir.Ref(item.tensor))
        else:
            raise FieldError(f"{field}[{i}]", "empty index item (or one from a newer version)")
    return tuple(out)


def _node_from(m: graph_pb2.Node, max_bytes: int | None, *, in_metric: bool) -> ir.Node:
    """One node; ``max_bytes``: a constant's byte ceiling (None: trusted, not checked)."""
    nid = m.id
    kind = m.WhichOneof("op")
    if kind is None:
        raise FieldError("op", "no op set (an empty node, or an op from a newer version)")
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
    if kind in ("write", "grad_write"):
        return (ir.Write if kind == "write" else ir.GradWrite)(
            nid,
            run=_required(op, "run"),
            hook=op.hook,
            value=_operand_from(op.value, "value"),
            index=_index_from(op.index, "index"),
            mode=enum_name(WRITE_MODES, op.mode, "mode"),
        )
    if kind == "constant":
        if not op.HasField("value"):
            raise FieldError("value", "required")
        try:
            return ir.Constant(nid, value=tensor_from(op.value, max_bytes))
        except FieldError as e:
            raise FieldError(f"value.{e.field}", e.reason) from None
    if kind == "weight":
        return ir.Weight(nid, name=op.name)
    if kind == "index":
        return ir.Index(nid, input=ir.Ref(_required(op, "input")), index=_index_from(op.index, "index"))
    if kind == "binary":
        return ir.Binary(
            nid,
            op=enum_name(BINARY_OPS, op.op, "op"),
            a=_operand_from(op.a, "a"),
            b=_operand_from(op.b, "b"),
        )
    if kind == "unary":
        return ir.Unary(
            nid,
            op=enum_name(UNARY_OPS, op.op, "op"),
            input=ir.Ref(_required(op, "input")),
            dim=_optional(op, "dim"),
            min=_optional(op, "min"),
            max=_optional(op, "max"),
        )
    if kind == "reduce":
        return ir.Reduce(
            nid,
            op=enum_name(REDUCE_OPS, op.op, "op"),
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
        dtype = None if op.dtype == 0 else enum_name(DTYPES, op.dtype, "dtype")
        return ir.Save(nid, input=ir.Ref(_required(op, "input")), name=op.name, dtype=dtype)
    if kind in ("code_hook", "grad_code_hook"):
        cls = ir.CodeHook if kind == "code_hook" else ir.GradCodeHook
        return cls(nid, run=_required(op, "run"), hook=op.hook, payload=op.payload)
    if kind == "grad":
        return ir.Grad(nid, of=ir.Ref(_required(op, "of")), wrt=ir.Ref(_required(op, "wrt")))
    if kind == "sweep":
        if in_metric:  # refused here, not later: converting it would recurse and escape max_nodes
            raise FieldError("", "a Sweep may not appear in a sweep's metric sub-graph")
        return ir.Sweep(
            nid,
            corrupted=_required(op, "corrupted"),
            clean=_required(op, "clean"),
            activation=op.activation,
            axes=tuple(_axis_name(a, i) for i, a in enumerate(op.axes)),
            metric=_metric_from(op.metric, max_bytes),
            metric_input=_required(op, "metric_input"),
            metric_output=_required(op, "metric_output"),
        )
    if kind == "sweep_logits":
        return ir.SweepLogits(nid)
    raise FieldError("op", f"unknown op {kind!r}")  # a oneof member this decoder forgot


def _ref_or_none(msg: Any, field: str) -> ir.Ref | None:
    return ir.Ref(getattr(msg, field)) if msg.HasField(field) else None


def _axis_name(value: int, i: int) -> str:
    return enum_name(SWEEP_AXES_WIRE, value, f"axes[{i}]")


def _metric_from(metric: Iterable[graph_pb2.Node], max_bytes: int | None) -> tuple[ir.Node, ...]:
    out: list[ir.Node] = []
    for position, m in enumerate(metric):
        if not m.HasField("id"):
            raise FieldError(f"metric[{position}].id", "required")
        try:
            out.append(_node_from(m, max_bytes, in_metric=True))
        except FieldError as e:
            where = f"metric[node {m.id}]"
            raise FieldError(f"{where}.{e.field}" if e.field else where, e.reason) from None
    return tuple(out)
