"""Structural checks on an ``ir.Graph``: what can be refused without a model.

The one structural checker. The codec runs it on every decoded graph (the front door, without
a model); local validation (``telelens.core.graph.validate``) runs it on a graph built in process
before its model-aware checks, unless the graph is one this process already checked
(:func:`is_checked`). It covers ids, references and the kind of node each reference needs,
enum-like strings, tensor byte counts against their shape, and the ``ir.Limits`` that need no
model (node count, constant bytes). Hook names, shapes flowing through ops and index ranges
need the model and are the executor's checks. Imports neither torch nor protobuf.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

from . import ir
from .tensor_checks import MAX_NDIM, is_int, tensor_problems

SWEEP_AXES = ("layer", "pos", "head")
"""A sweep's axes are a non-empty subset of these, in this order."""
# Nodes that are effects, not tensors: a tensor operand may not refer to them.
_NO_VALUE = (ir.Run, ir.Write, ir.CodeHook, ir.GradWrite, ir.GradCodeHook)
# Nodes a sweep's metric sub-graph may not hold: it is pure tensor math on the patched logits.
_OUTER_ONLY = (
    ir.Run,
    ir.Read,
    ir.Write,
    ir.CodeHook,
    ir.Save,
    ir.Sweep,
    ir.Grad,
    ir.GradWrite,
    ir.GradCodeHook,
)


def check_structure(graph: ir.Graph, limits: ir.Limits | None = None) -> list[ir.GraphError]:
    """Every structural error in ``graph`` (empty when it is well formed).

    A graph found well formed is remembered (see :func:`is_checked`), so that later stages of
    this process need not check it again.
    """
    limits = limits or ir.Limits()
    checker = _StructureChecker(limits)
    checker.graph(graph)
    if not checker.errors:
        mark_checked(graph, limits)
    return checker.errors


# Graphs known to be well formed, by identity (never by value: an equal graph built elsewhere
# was not checked), with the limits they were checked under. Entries leave with their graph.
_checked: dict[int, tuple[weakref.ref[ir.Graph], ir.Limits]] = {}


def mark_checked(graph: ir.Graph, limits: ir.Limits) -> None:
    """Record that ``graph`` is well formed under ``limits`` (the decoder's trusted path says so for
    a graph the front door checked)."""
    key = id(graph)

    def forget(ref: weakref.ref[ir.Graph]) -> None:
        if _checked.get(key, (None,))[0] is ref:
            del _checked[key]

    _checked[key] = (weakref.ref(graph, forget), limits)


def is_checked(graph: ir.Graph, limits: ir.Limits) -> bool:
    """Whether this very ``graph`` was found well formed under limits at least as strict as ``limits``."""
    entry = _checked.get(id(graph))
    if entry is None or entry[0]() is not graph:
        return False
    checked = entry[1]
    return checked.max_nodes <= limits.max_nodes and checked.max_constant_bytes <= limits.max_constant_bytes


def count_nodes(nodes: Iterable[ir.Node]) -> int:
    """Nodes including those of sweep sub-graphs."""
    return sum(1 + (len(n.metric) if isinstance(n, ir.Sweep) else 0) for n in nodes)


class _StructureChecker:
    def __init__(self, limits: ir.Limits) -> None:
        self.limits = limits
        self.errors: list[ir.GraphError] = []
        self.constant_bytes = 0
        self.save_names: dict[str, int] = {}  # name -> the Save that uses it first

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


def _is_local_tensor(value: object) -> bool:
    """A torch tensor or numpy array (local mode), recognised without importing either."""
    return type(value).__module__.split(".")[0] in ("torch", "numpy") and hasattr(value, "shape")


class _Scope:
    """One id space: the graph, or a sweep's metric sub-graph (``sweep`` is then its node)."""

    def __init__(
        self, checker: _StructureChecker, sweep: ir.Sweep | None = None, parent: _Scope | None = None
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
            self.error(field, f"must refer to a Run; node {target} is a {type(node).__name__}, not a Run")
        elif want == "value" and (
            isinstance(node, _NO_VALUE) or (isinstance(node, ir.SweepLogits) and not local)
        ):
            self.error(field, f"refers to node {target}, a {type(node).__name__}, which has no tensor value")

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
            elif isinstance(item, ir.SliceItem):
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
        elif _is_local_tensor(value):  # dtype and shape are the executor's to check
            self.c.constant_bytes += int(getattr(value, "nbytes", 0))
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
            first = self.c.save_names.setdefault(n.name, n.id)
            if first != n.id:
                self.error("name", f"duplicate save name {n.name!r} (also node {first})")
        if n.dtype is not None:
            self.choice("dtype", n.dtype, ir.DTYPES)

    def _CodeHook(self, n: ir.CodeHook) -> None:
        self.ref("run", n.run, "run")
        self.name("hook", n.hook)
        if not isinstance(n.payload, bytes):
            self.error("payload", "must be bytes")

    def _Grad(self, n: ir.Grad) -> None:
        self.tensor_ref("of", n.of)
        if not isinstance(n.wrt, ir.Ref):
            self.error("wrt", f"expected a Ref, got {type(n.wrt).__name__}")
            return
        self.ref("wrt", n.wrt.node, "value")
        target = self.seen.get(n.wrt.node) if is_int(n.wrt.node) else None
        if target is not None and not isinstance(target, ir.Read):
            self.error(
                "wrt", f"must refer to a Read (the activation to differentiate by); node {n.wrt.node} is a "
                f"{type(target).__name__}",
            )  # fmt: skip

    def _GradWrite(self, n: ir.GradWrite) -> None:
        self._Write(n)  # type: ignore[arg-type]  # the same fields as a Write

    def _GradCodeHook(self, n: ir.GradCodeHook) -> None:
        self._CodeHook(n)  # type: ignore[arg-type]  # the same fields as a CodeHook

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
