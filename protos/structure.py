"""Structural checks on an ``ir.Graph``: what can be refused without a model.

The codec runs these on every decoded graph; local mode can run them on a graph built in
process. They cover ids, references and the kind of node each reference needs, enum-like
strings, tensor byte counts against their shape, and the ``ir.Limits`` that need no model
(node count, constant bytes). Hook names, shapes flowing through ops and index ranges
need the model and are the executor's checks. Imports neither torch nor protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import ir

ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "bool": 1,
}
SWEEP_AXES = ("layer", "pos", "head")
"""A sweep's axes are a non-empty subset of these, in this order."""
MAX_NDIM = 64
"""Most dimensions a tensor or a reshape target may have (torch's own ceiling)."""

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

# Nodes that are effects, not tensors: a tensor operand may not refer to them.
_NO_VALUE = (ir.Run, ir.Write, ir.CodeHook)
# Nodes a sweep's metric sub-graph may not hold: it is pure tensor math on the patched logits.
_OUTER_ONLY = (ir.Run, ir.Read, ir.Write, ir.CodeHook, ir.Save, ir.Sweep)


def is_int(x: object) -> bool:
    """A Python int (not bool) that fits an int64."""
    return isinstance(x, int) and not isinstance(x, bool) and INT64_MIN <= x <= INT64_MAX


class TensorProblem(ValueError):
    """A malformed tensor: which part (``dtype``, ``shape``, ``data``) and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def expected_nbytes(dtype: str, shape: tuple[int, ...], max_bytes: int) -> int:
    """``prod(shape) * itemsize``; raises ``TensorProblem`` past ``max_bytes`` without building a huge number."""
    if dtype not in ITEMSIZE:
        raise TensorProblem("dtype", f"unknown dtype {dtype!r}; expected one of {', '.join(ir.DTYPES)}")
    if not isinstance(shape, tuple) or not all(is_int(d) for d in shape):
        raise TensorProblem("shape", "must be a tuple of int64")
    if len(shape) > MAX_NDIM:
        raise TensorProblem("shape", f"{len(shape)} dimensions; at most {MAX_NDIM}")
    if any(d < 0 for d in shape):
        raise TensorProblem("shape", f"negative dimension in {list(shape)}")
    if 0 in shape:
        return 0
    n = ITEMSIZE[dtype]
    for d in shape:
        n *= d
        if n > max_bytes:
            raise TensorProblem("shape", f"{list(shape)} x {dtype} exceeds the limit of {max_bytes} bytes")
    return n


def check_tensor_data(dtype: str, shape: tuple[int, ...], data: object, expected: int) -> None:
    """Raises ``TensorProblem`` unless ``data`` is ``expected`` bytes (and 0/1 bytes for bool)."""
    if not isinstance(data, bytes):
        raise TensorProblem("data", "must be bytes")
    if len(data) != expected:
        raise TensorProblem("data", f"{len(data)} bytes; shape {list(shape)} x {dtype} needs {expected}")
    if dtype == "bool" and data.translate(None, b"\x00\x01"):
        raise TensorProblem("data", "bool elements must be the bytes 0 or 1")


def tensor_problems(td: ir.TensorData, max_bytes: int) -> list[tuple[str, str]]:
    """``(field, reason)`` for the first way ``td`` is malformed (shape is checked before data)."""
    try:
        check_tensor_data(td.dtype, td.shape, td.data, expected_nbytes(td.dtype, td.shape, max_bytes))
    except TensorProblem as e:
        return [(e.field, e.reason)]
    return []


def check_structure(graph: ir.Graph, limits: ir.Limits | None = None) -> list[ir.GraphError]:
    """Every structural error in ``graph`` (empty when it is well formed)."""
    checker = _Checker(limits or ir.Limits())
    checker.graph(graph)
    return checker.errors


def count_nodes(nodes: Iterable[ir.Node]) -> int:
    """Nodes including those of sweep sub-graphs."""
    return sum(1 + (len(n.metric) if isinstance(n, ir.Sweep) else 0) for n in nodes)


class _Checker:
    def __init__(self, limits: ir.Limits) -> None:
        self.limits = limits
        self.errors: list[ir.GraphError] = []
        self.constant_bytes = 0
        self.save_names: set[str] = set()

    def graph(self, graph: ir.Graph) -> None:
        if not isinstance(graph, ir.Graph) or not isinstance(graph.nodes, tuple):
            self.errors.append(ir.GraphError(None, "", "not an ir.Graph with a tuple of nodes"))
            return
        if not is_int(graph.version) or not 1 <= graph.version <= ir.GRAPH_VERSION:
            self.errors.append(
                ir.GraphError(
                    None,
                    "version",
                    f"{graph.version!r} is not a graph version this code runs (1..{ir.GRAPH_VERSION})",
                )
            )
        total = count_nodes(n for n in graph.nodes if isinstance(n, ir.Node))
        if total > self.limits.max_nodes:
            self.errors.append(
                ir.GraphError(None, "nodes", f"{total} nodes; the limit is {self.limits.max_nodes}")
            )
            return
        _Scope(self, None).nodes(graph.nodes)
        if self.constant_bytes > self.limits.max_constant_bytes:
            self.errors.append(
                ir.GraphError(
                    None,
                    "nodes",
                    f"constants hold {self.constant_bytes} bytes; the limit is {self.limits.max_constant_bytes}",
                )
            )


class _Scope:
    """One id space: the graph, or a sweep's metric sub-graph (``sweep`` is then its node)."""

    def __init__(
        self, checker: _Checker, sweep: ir.Sweep | None = None, parent: _Scope | None = None
    ) -> None:
        self.c = checker
        self.sweep = sweep
        self.parent = parent  # the graph, for a metric: its refs may reach nodes before the sweep
        self.seen: dict[int, ir.Node] = {}
        self.ids: set[int] = set()  # every id of this scope: a local id shadows the graph's
        self.current: int | None = None

    def error(self, field: str, reason: str) -> None:
        if self.sweep is None:
            self.c.errors.append(ir.GraphError(self.current, field, reason))
        else:
            where = f"metric[node {self.current}]" if self.current is not None else "metric"
            self.c.errors.append(ir.GraphError(self.sweep.id, f"{where}.{field}" if field else where, reason))

    def nodes(self, nodes: tuple[ir.Node, ...]) -> None:
        last: int | None = None
        self.ids = {n.id for n in nodes if isinstance(n, ir.Node) and is_int(n.id)}
        for position, node in enumerate(nodes):
            self.current = None
            if type(node) not in ir.NODE_TYPES:
                self.error(f"nodes[{position}]", f"not an intervention node: {type(node).__name__}")
                continue
            if not is_int(node.id) or node.id < 0:
                self.error(f"nodes[{position}].id", f"{node.id!r} is not a non-negative int64")
                continue
            self.current = node.id
            if last is not None and node.id <= last:
                reason = (
                    "duplicate id" if node.id in self.seen else f"ids must increase; previous id is {last}"
                )
                self.error("id", reason)
                continue
            last = node.id
            self.node(node)
            self.seen[node.id] = node

    # --- references -------------------------------------------------------------------------

    def ref(self, field: str, target: object, want: str) -> None:
        """``target`` (an id) names an earlier node of the right kind; ``want`` is "run" or "value".

        In a metric, an id of the metric is local (and must be earlier in it); any other id
        must name a node of the graph before the sweep.
        """
        if not is_int(target):
            self.error(field, f"{target!r} is not a node id")
            return
        assert isinstance(target, int) and self.current is not None
        local = self.parent is None or target in self.ids
        if local and target >= self.current:
            self.error(field, f"refers to node {target}, not an earlier node")
            return
        owner = self if local or self.parent is None else self.parent
        node = owner.seen.get(target)
        if node is None:
            where = (
                "the graph" if self.parent is None else "the metric sub-graph or the graph before the sweep"
            )
            self.error(field, f"no node {target} in {where}")
        elif want == "run" and not isinstance(node, ir.Run):
            self.error(field, f"node {target} is a {type(node).__name__}, not a Run")
        elif want == "value" and (
            isinstance(node, _NO_VALUE) or (isinstance(node, ir.SweepLogits) and not local)
        ):
            self.error(field, f"node {target} is a {type(node).__name__}, which has no tensor value")

    def tensor_ref(self, field: str, value: object, *, optional: bool = False) -> None:
        if value is None and optional:
            return
        if not isinstance(value, ir.Ref):
            self.error(field, f"expected a Ref, got {type(value).__name__}")
            return
        self.ref(field, value.node, "value")

    def operand(self, field: str, value: object) -> None:
        if isinstance(value, ir.Ref):
            self.ref(field, value.node, "value")
        elif not isinstance(value, (int, float)) or (isinstance(value, int) and not is_int(value)):
            self.error(field, f"expected a Ref or a scalar, got {type(value).__name__}")

    def index(self, field: str, items: object) -> None:
        if not isinstance(items, tuple):
            self.error(field, "must be a tuple of index items")
            return
        for i, item in enumerate(items):
            if isinstance(item, ir.Ref):
                self.ref(f"{field}[{i}]", item.node, "value")
            elif isinstance(item, ir.Slice):
                for part in ("start", "stop", "step"):
                    v = getattr(item, part)
                    if v is not None and not is_int(v):
                        self.error(f"{field}[{i}].{part}", f"{v!r} is not an int64")
            elif not (is_int(item) or item is ir.ELLIPSIS or item is ir.NEW_AXIS):
                self.error(f"{field}[{i}]", f"not an index item: {item!r}")

    # --- plain fields -----------------------------------------------------------------------

    def name(self, field: str, value: object) -> None:
        if not isinstance(value, str) or not value:
            self.error(field, "must be a non-empty string")

    def choice(self, field: str, value: object, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            self.error(field, f"{value!r} is not one of {', '.join(allowed)}")

    def integer(self, field: str, value: object, *, optional: bool = False) -> None:
        if not (is_int(value) or (optional and value is None)):
            self.error(field, f"{value!r} is not an int64")

    def flag(self, field: str, value: object, *, optional: bool = False) -> None:
        if not (isinstance(value, bool) or (optional and value is None)):
            self.error(field, f"{value!r} is not a bool")

    def scalar(self, field: str, value: object) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            self.error(field, f"{value!r} is not a number")

    def ints(self, field: str, value: object) -> bool:
        ok = isinstance(value, tuple) and len(value) <= MAX_NDIM and all(is_int(v) for v in value)
        if not ok:
            self.error(field, f"must be a tuple of at most {MAX_NDIM} int64")
        return ok

    # --- nodes ------------------------------------------------------------------------------

    def node(self, n: ir.Node) -> None:
        if self.sweep is None and isinstance(n, ir.SweepLogits):
            self.error("", "SweepLogits may only appear in a sweep's metric sub-graph")
            return
        if self.sweep is not None and isinstance(n, _OUTER_ONLY):
            self.error("", f"a {type(n).__name__} may not appear in a sweep's metric sub-graph")
            return
        method = getattr(self, f"_{type(n).__name__}")
        method(n)

    def _Run(self, n: ir.Run) -> None:
        self.tensor_ref("tokens", n.tokens, optional=True)
        self.tensor_ref("attention_mask", n.attention_mask, optional=True)
        if not isinstance(n.text, tuple) or not all(isinstance(t, str) for t in n.text):
            self.error("text", "must be a tuple of strings")
        elif (n.tokens is None) == (len(n.text) == 0):
            self.error("tokens", "a run needs exactly one of tokens or text")
        self.flag("prepend_bos", n.prepend_bos, optional=True)

    def _Read(self, n: ir.Read) -> None:
        self.ref("run", n.run, "run")
        self.name("hook", n.hook)

    def _Write(self, n: ir.Write) -> None:
        self.ref("run", n.run, "run")
        self.name("hook", n.hook)
        self.operand("value", n.value)
        self.index("index", n.index)
        self.choice("mode", n.mode, ir.WRITE_MODES)

    def _Constant(self, n: ir.Constant) -> None:
        value = n.value
        if isinstance(value, ir.TensorData):
            for field, reason in tensor_problems(value, self.c.limits.max_constant_bytes):
                self.error(f"value.{field}", reason)
            self.c.constant_bytes += len(value.data) if isinstance(value.data, bytes) else 0
        elif type(value).__module__.split(".")[0] == "torch" and hasattr(value, "shape"):
            pass  # local mode: a torch tensor, checked by the executor
        else:
            self.error(
                "value", f"expected TensorData (or a torch tensor in local mode), got {type(value).__name__}"
            )

    def _Weight(self, n: ir.Weight) -> None:
        self.name("name", n.name)

    def _Index(self, n: ir.Index) -> None:
        self.tensor_ref("input", n.input)
        self.index("index", n.index)

    def _Binary(self, n: ir.Binary) -> None:
        self.choice("op", n.op, ir.BINARY_OPS)
        self.operand("a", n.a)
        self.operand("b", n.b)

    def _Unary(self, n: ir.Unary) -> None:
        self.choice("op", n.op, ir.UNARY_OPS)
        self.tensor_ref("input", n.input)
        self.integer("dim", n.dim, optional=True)
        self.scalar("min", n.min)
        self.scalar("max", n.max)

    def _Reduce(self, n: ir.Reduce) -> None:
        self.choice("op", n.op, ir.REDUCE_OPS)
        self.tensor_ref("input", n.input)
        if n.dims is not None:
            self.ints("dims", n.dims)
        self.flag("keepdim", n.keepdim)

    def _Gather(self, n: ir.Gather) -> None:
        self.tensor_ref("input", n.input)
        self.integer("dim", n.dim)
        self.tensor_ref("index", n.index)

    def _Reshape(self, n: ir.Reshape) -> None:
        self.tensor_ref("input", n.input)
        if self.ints("shape", n.shape):
            if any(d < -1 for d in n.shape):
                self.error("shape", f"dimensions must be >= -1, got {list(n.shape)}")
            elif n.shape.count(-1) > 1:
                self.error("shape", "at most one -1")

    def _Transpose(self, n: ir.Transpose) -> None:
        self.tensor_ref("input", n.input)
        self.integer("dim0", n.dim0)
        self.integer("dim1", n.dim1)

    def _Save(self, n: ir.Save) -> None:
        self.tensor_ref("input", n.input)
        self.name("name", n.name)
        if isinstance(n.name, str) and n.name:
            if n.name in self.c.save_names:
                self.error("name", f"another Save already uses the name {n.name!r}")
            self.c.save_names.add(n.name)
        if n.dtype is not None:
            self.choice("dtype", n.dtype, ir.DTYPES)

    def _CodeHook(self, n: ir.CodeHook) -> None:
        self.ref("run", n.run, "run")
        self.name("hook", n.hook)
        if not isinstance(n.payload, bytes):
            self.error("payload", "must be bytes")

    def _Sweep(self, n: ir.Sweep) -> None:
        self.ref("corrupted", n.corrupted, "run")
        self.ref("clean", n.clean, "run")
        self.name("activation", n.activation)
        axes_ok = isinstance(n.axes, tuple) and all(a in SWEEP_AXES for a in n.axes)
        if not axes_ok or not n.axes or list(n.axes) != sorted(set(n.axes), key=SWEEP_AXES.index):
            self.error("axes", f"{n.axes!r}: must be a non-empty subset of {SWEEP_AXES}, in that order")
        if not isinstance(n.metric, tuple):
            self.error("metric", "must be a tuple of nodes")
            return
        sub = _Scope(self.c, n, parent=self)
        sub.nodes(n.metric)
        logits = [m.id for m in sub.seen.values() if isinstance(m, ir.SweepLogits)]
        if not is_int(n.metric_input) or not isinstance(sub.seen.get(n.metric_input), ir.SweepLogits):
            self.error(
                "metric_input", f"{n.metric_input!r} is not a SweepLogits node of the metric sub-graph"
            )
        elif len(logits) > 1:
            self.error("metric", f"one SweepLogits node expected, found {len(logits)}")
        out = sub.seen.get(n.metric_output) if is_int(n.metric_output) else None
        if out is None:
            self.error("metric_output", f"{n.metric_output!r} is not a node of the metric sub-graph")

    def _SweepLogits(self, n: ir.SweepLogits) -> None:
        pass
