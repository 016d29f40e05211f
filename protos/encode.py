"""``ir.Graph`` -> ``telelens.v1.Graph``: the client's side of the codec.

Local-mode torch constants become ``ir.TensorData`` here (torch is used only if it is
already imported). Structure is not checked: the decoder does that on the receiving side.
"""

from __future__ import annotations

import sys
from typing import Any

from . import graph_pb2, ir
from .wire import (
    BINARY_OPS,
    DTYPES,
    REDUCE_OPS,
    SWEEP_AXES_WIRE,
    UNARY_OPS,
    WRITE_MODES,
    FieldError,
    enum_value,
    refuse,
    tensor_to,
)

__all__ = ["encode_graph", "graph_to_bytes"]


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
        except FieldError as e:
            errors.append(ir.GraphError(_id_or_none(node), e.field, e.reason))
    if errors:
        raise refuse(errors)
    return msg


def _id_or_none(node: object) -> int | None:
    node_id = getattr(node, "id", None)
    return node_id if isinstance(node_id, int) and not isinstance(node_id, bool) else None


def _encode_node(out: graph_pb2.Node, node: ir.Node) -> None:
    try:
        out.id = node.id
        encoder = _ENCODERS.get(type(node))
        if encoder is None:
            raise FieldError("", f"not an intervention node: {type(node).__name__}")
        op = getattr(out, _OP_FIELDS[type(node)])
        op.SetInParent()  # the oneof is set even when every field keeps its default
        encoder(op, node)
    except (TypeError, ValueError, AttributeError, OverflowError) as e:
        raise FieldError("", f"cannot encode: {e}") from None


def _ref(field: str, value: object) -> int:
    if not isinstance(value, ir.Ref):
        raise FieldError(field, f"expected a Ref, got {type(value).__name__}")
    return value.node


def _set_operand(out: graph_pb2.Operand, value: object, field: str) -> None:
    if isinstance(value, ir.Ref):
        out.node = value.node
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out.scalar = float(value)
    else:
        raise FieldError(field, f"expected a Ref or a scalar, got {type(value).__name__}")


def _set_index(out: Any, items: tuple[ir.IndexItem, ...], field: str) -> None:
    for i, item in enumerate(items):
        msg = out.add()
        if isinstance(item, ir.Ref):
            msg.tensor = item.node
        elif isinstance(item, ir.SliceItem):
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
            raise FieldError(f"{field}[{i}]", f"not an index item: {item!r}")


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
    out.mode = enum_value(WRITE_MODES, n.mode, "mode")  # type: ignore[assignment]


def _enc_constant(out: graph_pb2.Node.Constant, n: ir.Constant) -> None:
    value = n.value
    torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        from .torch_tensors import tensor_data_from_torch

        value = tensor_data_from_torch(value)
    if not isinstance(value, ir.TensorData):
        raise FieldError("value", f"expected TensorData or a torch tensor, got {type(value).__name__}")
    try:
        tensor_to(value, out.value)
    except FieldError as e:
        raise FieldError(f"value.{e.field}", e.reason) from None


def _enc_weight(out: graph_pb2.Node.Weight, n: ir.Weight) -> None:
    out.name = n.name


def _enc_index(out: graph_pb2.Node.Index, n: ir.Index) -> None:
    out.input = _ref("input", n.input)
    _set_index(out.index, n.index, "index")


def _enc_binary(out: graph_pb2.Node.Binary, n: ir.Binary) -> None:
    out.op = enum_value(BINARY_OPS, n.op, "op")  # type: ignore[assignment]
    _set_operand(out.a, n.a, "a")
    _set_operand(out.b, n.b, "b")


def _enc_unary(out: graph_pb2.Node.Unary, n: ir.Unary) -> None:
    out.op = enum_value(UNARY_OPS, n.op, "op")  # type: ignore[assignment]
    out.input = _ref("input", n.input)
    if n.dim is not None:
        out.dim = n.dim
    if n.min is not None:
        out.min = n.min
    if n.max is not None:
        out.max = n.max


def _enc_reduce(out: graph_pb2.Node.Reduce, n: ir.Reduce) -> None:
    out.op = enum_value(REDUCE_OPS, n.op, "op")  # type: ignore[assignment]
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
        out.dtype = enum_value(DTYPES, n.dtype, "dtype")  # type: ignore[assignment]


def _enc_code_hook(out: graph_pb2.Node.CodeHook, n: ir.CodeHook) -> None:
    out.run = n.run
    out.hook = n.hook
    out.payload = n.payload


def _enc_sweep(out: graph_pb2.Node.Sweep, n: ir.Sweep) -> None:
    out.corrupted = n.corrupted
    out.clean = n.clean
    out.activation = n.activation
    out.axes.extend(enum_value(SWEEP_AXES_WIRE, a, "axes") for a in n.axes)
    for sub in n.metric:
        try:
            _encode_node(out.metric.add(), sub)
        except FieldError as e:
            where = f"metric[node {_id_or_none(sub)}]"
            raise FieldError(f"{where}.{e.field}" if e.field else where, e.reason) from None
    out.metric_input = n.metric_input
    out.metric_output = n.metric_output


def _enc_grad(out: graph_pb2.Node.Grad, n: ir.Grad) -> None:
    out.of = _ref("of", n.of)
    out.wrt = _ref("wrt", n.wrt)


def _enc_grad_write(out: graph_pb2.Node.GradWrite, n: ir.GradWrite) -> None:
    _enc_write(out, n)  # type: ignore[arg-type]  # the same fields as a Write


def _enc_grad_code_hook(out: graph_pb2.Node.GradCodeHook, n: ir.GradCodeHook) -> None:
    _enc_code_hook(out, n)  # type: ignore[arg-type]  # the same fields as a CodeHook


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
    ir.Grad: _enc_grad,
    ir.GradWrite: _enc_grad_write,
    ir.GradCodeHook: _enc_grad_code_hook,
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
    ir.Grad: "grad",
    ir.GradWrite: "grad_write",
    ir.GradCodeHook: "grad_code_hook",
}
