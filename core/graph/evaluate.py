"""Tensor ops of the graph, and a memoized evaluator over nodes.

:func:`compute` is the one implementation of every op: the validator calls it on
``device="meta"`` tensors (shapes and dtypes only), the executor on real ones, so
shape inference cannot drift from execution.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch

from telelens.core.graph.refs import OP_NODES, value_refs
from telelens.core.graph.weights import get_weight
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

Getter = Callable[[int], torch.Tensor]


class GraphRuntimeError(RuntimeError):
    """A node failed during execution (a data-dependent error validation could not see)."""

    def __init__(self, node_id: int | None, reason: str) -> None:
        self.node_id = node_id
        self.reason = reason
        super().__init__(f"node {node_id}: {reason}" if node_id is not None else reason)


# ---------------------------------------------------------------------------------------- ops
def operand(op: ir.Operand, get: Getter) -> torch.Tensor | float:
    """A node's value, or a Python number (an int stays an int, so int tensors stay int)."""
    if isinstance(op, ir.Ref):
        return get(op.node)
    return op if isinstance(op, int) and not isinstance(op, bool) else float(op)


def _same_device(x: torch.Tensor, y: Any) -> Any:
    """Move a secondary tensor to the primary's device (model split over GPUs)."""
    if isinstance(y, torch.Tensor) and y.device != x.device:
        return y.to(x.device)
    return y


def to_index(items: tuple[ir.IndexItem, ...], get: Getter, like: torch.Tensor) -> tuple[Any, ...]:
    """IR index items -> a torch index tuple for tensors on ``like``'s device."""
    out: list[Any] = []
    for it in items:
        if isinstance(it, ir.Ref):
            out.append(_same_device(like, get(it.node)))
        elif isinstance(it, ir.SliceItem):
            out.append(slice(it.start, it.stop, it.step))
        elif it is ir.ELLIPSIS:
            out.append(Ellipsis)
        elif it is ir.NEW_AXIS:
            out.append(None)
        elif isinstance(it, int) and not isinstance(it, bool):
            out.append(it)
        else:
            raise TypeError(f"unsupported index item {it!r}")
    return tuple(out)


def _binary(
    op: str, a: torch.Tensor | float, b: torch.Tensor | float, device: torch.device | str
) -> torch.Tensor:
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        a = torch.tensor(a, device=device)
    if isinstance(a, torch.Tensor):
        b = _same_device(a, b)
    # One operand is a tensor by now, so each result is a tensor (mypy cannot follow that).
    if op == "add":
        return cast(torch.Tensor, a + b)
    if op == "sub":
        return cast(torch.Tensor, a - b)
    if op == "mul":
        return cast(torch.Tensor, a * b)
    if op == "div":
        return cast(torch.Tensor, a / b)
    if op == "pow":
        return cast(torch.Tensor, a**b)
    if op == "matmul":
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            raise ValueError("matmul needs two tensors, not a number")
        return a @ b
    if op in ("maximum", "minimum"):
        x = a if isinstance(a, torch.Tensor) else torch.tensor(a, device=b.device)  # type: ignore[union-attr]
        y = b if isinstance(b, torch.Tensor) else torch.tensor(b, device=x.device)
        return torch.maximum(x, y) if op == "maximum" else torch.minimum(x, y)
    raise ValueError(f"unknown binary op {op!r}; expected one of {list(ir.BINARY_OPS)}")


def _unary(node: ir.Unary, x: torch.Tensor) -> torch.Tensor:
    op = node.op
    simple = {
        "neg": torch.neg,
        "abs": torch.abs,
        "exp": torch.exp,
        "log": torch.log,
        "sqrt": torch.sqrt,
        "relu": torch.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }
    if op in simple:
        return simple[op](x)
    if op in ("softmax", "log_softmax"):
        if node.dim is None:
            raise ValueError(f"{op} needs a dim")
        return torch.softmax(x, node.dim) if op == "softmax" else torch.log_softmax(x, node.dim)
    if op == "clamp":
        if node.min is None and node.max is None:
            raise ValueError("clamp needs min, max or both")
        return torch.clamp(x, min=node.min, max=node.max)
    if op == "float":
        return x.float()
    raise ValueError(f"unknown unary op {op!r}; expected one of {list(ir.UNARY_OPS)}")


def _reduce(node: ir.Reduce, x: torch.Tensor) -> torch.Tensor:
    op, keep = node.op, node.keepdim
    if node.dims is not None and len(node.dims) == 0:
        raise ValueError("dims must be None (every dim) or name at least one dim")
    # dim=None (not a tuple of every dim): the same kernel as ``x.sum()``, so results match bit for bit.
    dims = None if node.dims is None else tuple(node.dims)
    if op == "sum":
        return torch.sum(x, dim=dims, keepdim=keep)
    if op == "mean":
        return torch.mean(x, dim=dims, keepdim=keep)
    if op == "max":
        return torch.amax(x, dim=() if dims is None else dims, keepdim=keep)
    if op == "min":
        return torch.amin(x, dim=() if dims is None else dims, keepdim=keep)
    if op in ("argmax", "argmin"):
        fn = torch.argmax if op == "argmax" else torch.argmin
        if dims is None:
            return fn(x, dim=None, keepdim=keep)
        if len(dims) != 1:
            raise ValueError(f"{op} reduces over one dim (or all of them), got dims {list(dims)}")
        return fn(x, dim=dims[0], keepdim=keep)
    if op == "norm":
        return torch.linalg.vector_norm(x, dim=dims, keepdim=keep)
    if op == "logsumexp":
        return torch.logsumexp(x, dim=tuple(range(x.dim())) if dims is None else dims, keepdim=keep)
    raise ValueError(f"unknown reduce op {op!r}; expected one of {list(ir.REDUCE_OPS)}")


def compute(node: ir.Node, get: Getter, device: torch.device | str) -> torch.Tensor:
    """The value of one op node (Index, Binary, Unary, Reduce, Gather, Reshape, Transpose)."""
    if isinstance(node, ir.Binary):
        return _binary(node.op, operand(node.a, get), operand(node.b, get), device)
    x = get(node.input.node)  # type: ignore[attr-defined]
    if isinstance(node, ir.Index):
        return x[to_index(node.index, get, x)]
    if isinstance(node, ir.Unary):
        return _unary(node, x)
    if isinstance(node, ir.Reduce):
        return _reduce(node, x)
    if isinstance(node, ir.Gather):
        return torch.gather(x, node.dim, _same_device(x, get(node.index.node)))
    if isinstance(node, ir.Reshape):
        return x.reshape(tuple(node.shape))
    if isinstance(node, ir.Transpose):
        return x.transpose(node.dim0, node.dim1)
    raise TypeError(f"{type(node).__name__} is not a tensor op")


def short_reason(e: BaseException) -> str:
    """A torch error as one readable line."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:400]


# ---------------------------------------------------------------------------------------- evaluator
class Evaluator:
    """Values of nodes, computed on demand and memoized.

    Leaves come from three places: Constants (decoded once, moved to ``device``), Weights
    (read from the model), and values the executor stores with :meth:`set` (Reads as their
    hooks fire, Sweep grids, a metric's logits). A sub-evaluator (a sweep metric) resolves
    ids outside its own nodes through ``parent``.
    """

    def __init__(
        self,
        model: HookedTransformer,
        nodes: dict[int, ir.Node],
        constants: dict[int, torch.Tensor],
        device: torch.device,
        parent: Evaluator | None = None,
        grads: Callable[[ir.Grad], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.nodes = nodes
        self.constants = constants
        self.device = device
        self.parent = parent
        self.grads = grads
        """Computes Grad nodes (graphs with gradients); with it, ops are recorded for autograd."""
        self.memo: dict[int, torch.Tensor] = {}

    def set(self, node_id: int, value: torch.Tensor) -> None:
        self.memo[node_id] = value

    def has(self, node_id: int) -> bool:
        return node_id in self.memo

    def operand(self, op: ir.Operand) -> torch.Tensor | float:
        return operand(op, self.value)

    def index(self, items: tuple[ir.IndexItem, ...], like: torch.Tensor) -> tuple[Any, ...]:
        return to_index(items, self.value, like)

    def value(self, node_id: int) -> torch.Tensor:
        if node_id in self.memo:
            return self.memo[node_id]
        if node_id not in self.nodes:
            if self.parent is None:
                raise GraphRuntimeError(node_id, "no such node")
            return self.parent.value(node_id)
        # Iterative, not recursive: a long chain of ops must not hit Python's recursion limit.
        # Ids grow along every edge, so ascending id order is a valid evaluation order.
        pending: set[int] = set()
        stack = [node_id]
        while stack:
            nid = stack.pop()
            if nid in pending or nid in self.memo or nid not in self.nodes:
                continue
            pending.add(nid)
            stack.extend(r for _, r in value_refs(self.nodes[nid]))
        # With gradients, a metric computed inside a no-grad pass must still be differentiable later.
        with torch.enable_grad() if self.grads is not None else contextlib.nullcontext():
            for nid in sorted(pending):
                if nid not in self.memo:  # a Grad may have filled its siblings
                    self.memo[nid] = self._compute(self.nodes[nid])
        return self.memo[node_id]

    def _compute(self, node: ir.Node) -> torch.Tensor:
        if isinstance(node, ir.Constant):
            return self.constants[node.id].to(self.device)
        if isinstance(node, ir.Weight):
            return get_weight(self.model, node.name)
        if isinstance(node, ir.Save):
            return self.value(node.input.node)
        if isinstance(node, ir.Grad) and self.grads is not None:
            return self.grads(node)
        if isinstance(node, OP_NODES):
            try:
                return compute(node, self.value, self.device)
            except GraphRuntimeError:
                raise
            except Exception as e:  # torch raises many types; name the node that failed
                raise GraphRuntimeError(node.id, short_reason(e)) from e
        raise GraphRuntimeError(node.id, f"the value of this {type(node).__name__} is not available yet")
