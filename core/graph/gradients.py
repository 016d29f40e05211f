"""Gradients as graph operations: their checks, their hooks and the one backward pass per metric.

- Checks (:func:`grad_meta`, :func:`gradient_errors`): a Grad's ``of`` is a floating scalar
  computed from the run its ``wrt`` Read belongs to; no gradient of a gradient; a write may not
  use its own run's gradients (they exist only after its forward pass); no backward hook on
  ``logits`` (nothing of the model lies after it).
- Hooks (:func:`apply_with_grad`): only runs holding a ``wrt`` run with autograd. At a hook
  whose gradient is requested an activation that does not require grad becomes a leaf
  (``act.detach().requires_grad_()``, returned so that the rest of the pass uses it); one that
  does is kept, so no gradient path is cut. Reads store the very tensor the pass goes on with.
  Backward hooks (``GradWrite``/``GradCodeHook``) sit at the hook's output, after its forward
  ops, as a chain in node order: each sees the gradient the previous ones left, a Read placed
  after one of them sees its result (TransformerLens's in-place backward hooks), and the end of
  the chain flows to earlier hooks.
- Values (:class:`Gradients`): every Grad of one ``of`` comes from ONE ``torch.autograd.grad``
  over all their ``wrt`` tensors; results are detached (zeros where ``of`` does not depend on one).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.graph.evaluate import Evaluator, GraphRuntimeError, short_reason
from telelens.core.graph.refs import BACKWARD_NODES, value_refs
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.graph.plan import Member
    from telelens.core.graph.validate import CheckedGraph

GradFn = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------- checks
def grad_meta(
    node: ir.Grad, get_meta: Callable[[int], torch.Tensor | None]
) -> torch.Tensor | tuple[str, str]:
    """The meta value of a Grad (shaped like its activation), or ``(field, reason)``."""
    of, wrt = get_meta(node.of.node), get_meta(node.wrt.node)
    assert of is not None and wrt is not None
    if of.numel() != 1 or not of.is_floating_point():
        return "of", (
            f"must be a floating-point scalar to differentiate, got {of.dtype} of shape {list(of.shape)}: "
            "reduce it first (.sum(), .mean())"
        )
    if not wrt.is_floating_point():
        return "wrt", f"the activation is {wrt.dtype}: an integer activation has no gradient"
    return torch.empty_like(wrt)


def _grads_behind(nodes: dict[int, ir.Node]) -> dict[int, frozenset[int]]:
    """Value node id -> the Grad nodes it depends on (transitively)."""
    behind: dict[int, frozenset[int]] = {}
    for nid in sorted(nodes):
        node = nodes[nid]
        found = frozenset().union(*(behind.get(r, frozenset()) for _, r in value_refs(node)))
        behind[nid] = found | {nid} if isinstance(node, ir.Grad) else found
    return behind


def gradient_errors(out: CheckedGraph) -> list[ir.GraphError]:
    """The graph-wide gradient checks (after every node's shape and the dependencies are known)."""
    nodes, deps = out.nodes, out.deps
    errors: list[ir.GraphError] = []
    behind = _grads_behind(nodes)
    for n in nodes.values():
        if isinstance(n, ir.Grad):
            read = nodes.get(n.wrt.node)
            if not isinstance(read, ir.Read):
                continue  # structure reported it
            runs = {getattr(nodes[r], "run", None) for r in deps.reads.get(n.of.node, frozenset())}
            if read.run not in runs:
                errors.append(
                    ir.GraphError(
                        n.id,
                        "wrt",
                        f"node {n.of.node} (of) is not computed from run {read.run}, whose {read.hook} "
                        f"(node {read.id}) this gradient is taken with respect to",
                    )
                )
            inner = sorted(behind.get(n.of.node, frozenset()))
            if inner:
                errors.append(
                    ir.GraphError(
                        n.id,
                        "of",
                        f"depends on gradient node {inner[0]}: gradients of gradients are not supported",
                    )
                )
        elif isinstance(n, BACKWARD_NODES) and n.hook == ir.LOGITS:  # type: ignore[attr-defined]
            errors.append(
                ir.GraphError(
                    n.id, "hook", "logits has no backward hook: nothing of the model comes after it"
                )
            )
        if isinstance(n, (ir.Write, ir.GradWrite)):
            own = [g for g in sorted(behind.get(n.id, frozenset())) if _grad_run(nodes, g) == n.run]
            if own:
                errors.append(
                    ir.GraphError(
                        n.id,
                        "value",
                        f"depends on gradient node {own[0]} of run {n.run}, which exists only after that "
                        "run's forward pass",
                    )
                )
    return errors


def _grad_run(nodes: dict[int, ir.Node], grad_id: int) -> int | None:
    grad = nodes[grad_id]
    assert isinstance(grad, ir.Grad)
    return getattr(nodes.get(grad.wrt.node), "run", None)


def grad_reads(nodes: dict[int, ir.Node], needed: set[int]) -> dict[int, set[int]]:
    """Run id -> the Read ids of that run some needed Grad differentiates by."""
    out: dict[int, set[int]] = defaultdict(set)
    for nid in needed:
        node = nodes[nid]
        if isinstance(node, ir.Grad):
            read = nodes[node.wrt.node]
            assert isinstance(read, ir.Read)
            out[read.run].add(read.id)
    return out


# ---------------------------------------------------------------------------------------- hooks
class _BackwardHook(torch.autograd.Function):
    """Identity going forward; ``fn`` changes the gradient going back."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: GradFn) -> torch.Tensor:
        ctx.fn = fn
        return x.clone()  # not a view: later writes into it must stay legal

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.fn(grad), None


def handles_grad(member: Member, name: str) -> bool:
    """Whether the ops of ``member`` at ``name`` involve gradients (then :func:`apply_with_grad` runs them)."""
    return any(
        isinstance(o, BACKWARD_NODES) or (isinstance(o, ir.Read) and o.id in member.grad_reads)
        for o in member.ops.get(name, [])
    )


def apply_with_grad(executor: Any, m: Member, name: str, act: torch.Tensor, hook: Any) -> torch.Tensor | None:
    """Run the ops of one (unbatched) run at one hook, gradients included; the new activation or None."""
    from telelens.core.graph.plan import Capture

    ev: Evaluator = executor.evaluator
    ops = m.ops.get(name, [])
    changed = owned = False
    if not act.requires_grad and any(isinstance(o, ir.Read) and o.id in m.grad_reads for o in ops):
        act, changed = act.detach().requires_grad_(), True
    last_forward = max((i for i, o in enumerate(ops) if isinstance(o, (ir.Write, ir.CodeHook))), default=-1)
    chain: list[Any] = []
    for i, op in enumerate(ops):
        if isinstance(op, BACKWARD_NODES) or (isinstance(op, ir.Read) and i > last_forward):
            chain.append(op)
        elif isinstance(op, ir.Read):
            ev.set(op.id, act)
            owned = False  # the read holds the tensor the pass goes on with: a later write clones it
        elif isinstance(op, Capture):
            executor.captures.setdefault(op.sweep, {})[op.layer] = act
        elif isinstance(op, ir.Write):
            value = executor._value(op, act)
            if not owned:
                act, owned, changed = act.clone(), True, True
            executor._write(op, act, value)
        else:
            if not owned:
                act, owned, changed = act.clone(), True, True
            out = executor._code_fn(op)(act, hook=hook)
            if out is not None and out is not act:
                act, owned, changed = out, False, True
    # Built from the input side: the first op of the chain is the last one applied going forward.
    for op in reversed(chain):
        if isinstance(op, ir.Read):
            ev.set(op.id, act)
        elif act.requires_grad:  # otherwise no gradient ever flows back through here
            act, changed = _BackwardHook.apply(act, _grad_fn(executor, op, act, hook)), True
    return act if changed else None


def _grad_fn(executor: Any, op: ir.GradWrite | ir.GradCodeHook, act: torch.Tensor, hook: Any) -> GradFn:
    """What a backward op does to a gradient; values and indices are evaluated now, in the forward pass."""
    if isinstance(op, ir.GradCodeHook):
        code = executor._code_fn(op)

        def run_code(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            out = code(grad, hook=hook)
            return grad if out is None else out

        return run_code
    value = executor._value(op, act)
    index = executor.evaluator.index(op.index, act)

    def write(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        try:
            if op.mode == "set":
                grad[index] = value
            elif op.mode == "add":
                grad[index] += value
            else:
                grad[index] *= value
        except Exception as e:  # data-dependent index errors
            raise GraphRuntimeError(op.id, f"backward write to {op.hook} failed: {short_reason(e)}") from e
        return grad

    return write


# ---------------------------------------------------------------------------------------- values
class Gradients:
    """Computes Grad nodes for an evaluator: one backward pass per ``of``, every sibling memoized."""

    def __init__(self, evaluator: Evaluator, nodes: dict[int, ir.Node]) -> None:
        self.evaluator = evaluator
        self.by_of: dict[int, list[ir.Grad]] = defaultdict(list)
        for n in nodes.values():
            if isinstance(n, ir.Grad):
                self.by_of[n.of.node].append(n)
        self.pending = len(self.by_of)

    def __call__(self, node: ir.Grad) -> torch.Tensor:
        ev = self.evaluator
        if ev.has(node.id):
            return ev.value(node.id)
        group = self.by_of[node.of.node]
        wrt_ids = sorted({g.wrt.node for g in group})
        with torch.enable_grad():
            of = ev.value(node.of.node)
            inputs = {r: ev.value(r) for r in wrt_ids}
            live = [r for r in wrt_ids if inputs[r].requires_grad]
            grads: dict[int, torch.Tensor | None] = {}
            if of.requires_grad and live:
                self.pending -= 1
                try:
                    found = torch.autograd.grad(
                        of.reshape(()), [inputs[r] for r in live], allow_unused=True,
                        retain_graph=self.pending > 0,
                    )  # fmt: skip
                except GraphRuntimeError:
                    raise
                except Exception as e:
                    raise GraphRuntimeError(node.id, f"backward pass failed: {short_reason(e)}") from e
                grads = dict(zip(live, found, strict=True))
        for g in group:
            grad = grads.get(g.wrt.node)
            ev.set(g.id, torch.zeros_like(inputs[g.wrt.node]) if grad is None else grad.detach())
        return ev.value(node.id)
