"""The shape of a graph as data: which nodes hold values, and what each node refers to."""

from __future__ import annotations

from telelens.protos import ir

OP_NODES: tuple[type[ir.Node], ...] = (
    ir.Index, ir.Binary, ir.Unary, ir.Reduce, ir.Gather, ir.Reshape, ir.Transpose,
)  # fmt: skip
VALUE_NODES: tuple[type[ir.Node], ...] = (
    ir.Read, ir.Constant, ir.Weight, ir.Save, ir.Sweep, ir.SweepLogits, ir.Grad, *OP_NODES,
)  # fmt: skip
"""Nodes whose value a Ref may use (a Save's value is its input's)."""
METRIC_NODES: tuple[type[ir.Node], ...] = (ir.Constant, ir.Weight, ir.SweepLogits, *OP_NODES)
"""Nodes allowed inside a sweep's metric sub-graph."""
HOOK_NODES: tuple[type[ir.Node], ...] = (ir.Read, ir.Write, ir.CodeHook, ir.GradWrite, ir.GradCodeHook)
BACKWARD_NODES: tuple[type[ir.Node], ...] = (ir.GradWrite, ir.GradCodeHook)
"""Backward hooks: they act on the gradient flowing back through a hook, not on the activation."""


def index_refs(items: tuple[ir.IndexItem, ...], field: str = "index") -> list[tuple[str, int]]:
    return [(f"{field}[{i}]", it.node) for i, it in enumerate(items) if isinstance(it, ir.Ref)]


def value_refs(node: ir.Node) -> list[tuple[str, int]]:
    """``(field, node id)`` of every value this node uses (not the runs it hooks; not a sweep's metric)."""
    refs: list[tuple[str, object]] = []
    if isinstance(node, ir.Run):
        refs = [("tokens", node.tokens), ("attention_mask", node.attention_mask)]
    elif isinstance(node, (ir.Write, ir.GradWrite)):
        value = [("value", node.value.node)] if isinstance(node.value, ir.Ref) else []
        return value + index_refs(node.index)
    elif isinstance(node, ir.Index):
        return [("input", node.input.node), *index_refs(node.index)]
    elif isinstance(node, ir.Binary):
        refs = [("a", node.a), ("b", node.b)]
    elif isinstance(node, (ir.Unary, ir.Reduce, ir.Reshape, ir.Transpose, ir.Save)):
        refs = [("input", node.input)]
    elif isinstance(node, ir.Gather):
        refs = [("input", node.input), ("index", node.index)]
    elif isinstance(node, ir.Grad):
        refs = [("of", node.of), ("wrt", node.wrt)]
    return [(f, r.node) for f, r in refs if isinstance(r, ir.Ref)]


def run_refs(node: ir.Node) -> list[tuple[str, int]]:
    """``(field, node id)`` of every run this node hooks or patches."""
    if isinstance(node, HOOK_NODES):
        return [("run", node.run)]  # type: ignore[attr-defined]
    if isinstance(node, ir.Sweep):
        return [("clean", node.clean), ("corrupted", node.corrupted)]
    return []


def metric_outer_refs(sweep: ir.Sweep) -> list[tuple[int, str, int]]:
    """``(metric node id, field, outer node id)`` for each metric ref that leaves the metric."""
    local = {n.id for n in sweep.metric}
    return [(n.id, f, r) for n in sweep.metric for f, r in value_refs(n) if r not in local]


def kind(node: ir.Node | None) -> str:
    return "missing node" if node is None else type(node).__name__
