"""Gradients in a trace: ``metric.backward()``, ``run[hook].grad``, backward hooks.

nnsight-like::

    with model.trace() as t:
        run = t.run(tokens)
        metric = run.logits[0, -1, a] - run.logits[0, -1, b]
        metric.backward()                                   # the scalar later .grad differentiate
        run["blocks.0.hook_resid_post"].grad[:, 0] = 0.0    # a backward hook (a GradWrite)
        g = t.save(run["blocks.1.hook_resid_pre"].grad)     # a Grad: only it travels back

Nothing runs while tracing: the executor runs one backward pass per metric and sends back the
gradients that were saved. ``t.grad(metric, run[hook])`` is the explicit form. Backward hooks
(``run[hook].grad[idx] = v``, ``run[hook].grad.apply(op)``) change the gradient flowing back
through ``hook`` to earlier hooks; a hook's backward ops act in program order, and a ``.grad``
taken after one sees its result (as TransformerLens's in-place backward hooks do).

Declarative ops that only set, add to or scale the gradient (``ops.zero_ablate``, ``ops.patch``,
``ops.add``, ``ops.scale``) compile to ``GradWrite`` nodes; ops that read the gradient itself
(``mean_ablate``, ``resample_ablate``, ``clamp``) and Python functions run as code
(``GradCodeHook``) and need ``allow_code=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from telelens.protos import ir
from telelens.trace.graph import GraphBuilder
from telelens.trace.hook_ops import HookOp, Python
from telelens.trace.values import ValueProxy, to_index, to_operand

if TYPE_CHECKING:
    from telelens.trace.proxies import HookProxy, RunProxy


class _NotDeclarative(Exception):
    """The op reads the gradient itself: it cannot become a GradWrite."""


def start_backward(value: ValueProxy) -> BackwardScope:
    """``value.backward()``: ``value`` becomes the scalar that later ``.grad`` differentiate."""
    value._builder.backward_of = value._ref()
    return BackwardScope()


class BackwardScope:
    """What ``metric.backward()`` returns; also usable as ``with metric.backward(): ...`` (nnsight 0.5)."""

    def __enter__(self) -> BackwardScope:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def grad_of(builder: GraphBuilder, of: Any, wrt: Any) -> ValueProxy:
    """The gradient of scalar ``of`` with respect to activation ``wrt`` (``run[hook]``)."""
    from telelens.trace.proxies import HookProxy

    if not isinstance(wrt, HookProxy):
        raise TypeError(
            "gradients are taken with respect to an activation: pass run[hook] (not a slice of it)"
        )
    operand = to_operand(builder, of)
    if not isinstance(operand, ir.Ref):
        raise TypeError("the value to differentiate must be a traced value, not a number")
    return ValueProxy(builder, builder.grad(operand, wrt._ref()))


class GradProxy(ValueProxy):
    """``run[hook].grad``: the gradient at one activation.

    As a value it is a Grad of the metric given to ``.backward()`` (created on first use);
    assigning into it (``grad[idx] = v``) or ``grad.apply(op)`` adds a backward hook.
    """

    def __init__(self, hook: HookProxy) -> None:
        super().__init__(hook._builder, None)
        self.hook = hook

    def _ref(self) -> int:
        if self._node_id is None:
            of = getattr(self._builder, "backward_of", None)
            if of is None:
                raise RuntimeError(
                    f"the gradient at {self.hook.hook!r} needs a metric to differentiate: call "
                    "metric.backward() before using .grad, or use t.grad(metric, run[hook])"
                )
            self._node_id = self._builder.grad(ir.Ref(of), self.hook._ref())
        return self._node_id

    def __repr__(self) -> str:
        return f"<GradProxy run {self.hook.run.id} {self.hook.hook!r}>"

    def __setitem__(self, idx: Any, value: Any) -> None:
        _GradSink(self._builder, self.hook.run.id, self.hook.hook)[idx] = value

    def apply(self, op: Any) -> None:
        """Apply a declarative op (or, where code is allowed, a function) to the gradient as a backward hook."""
        backward_op_nodes(op, self._builder, self.hook.run, self.hook.hook)


class _GradRegion:
    """``sink[idx]`` while an op compiles: only ``+=``/``-=``/``*=`` then a store back are declarative."""

    def __init__(self, idx: Any) -> None:
        self.idx = idx
        self.pending: tuple[str, Any] | None = None

    def __iadd__(self, other: Any) -> _GradRegion:
        self.pending = ("add", other)
        return self

    def __isub__(self, other: Any) -> _GradRegion:
        self.pending = ("add", -other)
        return self

    def __imul__(self, other: Any) -> _GradRegion:
        self.pending = ("mul", other)
        return self

    def __getattr__(self, name: str) -> Any:
        raise _NotDeclarative(f"it uses the gradient's .{name}")

    def __getitem__(self, idx: Any) -> Any:
        raise _NotDeclarative("it indexes the gradient")


class _GradSink:
    """Stands for the gradient at one hook while a declarative op compiles to GradWrite nodes."""

    def __init__(self, builder: GraphBuilder, run: int, hook: str) -> None:
        self.builder, self.run, self.hook = builder, run, hook

    def __getitem__(self, idx: Any) -> _GradRegion:
        return _GradRegion(idx)

    def __setitem__(self, idx: Any, value: Any) -> None:
        mode = "set"
        if isinstance(value, _GradRegion):
            if value.pending is None or value.idx is not idx:
                raise _NotDeclarative("it copies the gradient around")
            mode, value = value.pending
        index = () if idx is ... else to_index(self.builder, idx)
        self.builder.grad_write(self.run, self.hook, to_operand(self.builder, value), index, mode)

    def __getattr__(self, name: str) -> Any:
        raise _NotDeclarative(f"it uses the gradient's .{name}")


def backward_op_nodes(op: Any, builder: GraphBuilder, run: RunProxy, hook: str) -> None:
    """Append the nodes of one backward hook: GradWrites for a declarative op, else a GradCodeHook."""
    if isinstance(op, Python):
        builder.grad_code_hook(run.id, hook, op.fn)
        return
    if isinstance(op, HookOp):
        builder.check_hook(hook)
        mark = len(builder.nodes)
        try:
            op._apply(_GradSink(builder, run.id, hook), hook, run.batch_size)
            return
        except _NotDeclarative as e:
            del builder.nodes[mark:]  # nothing half-compiled stays
            if not builder.allow_code:
                raise PermissionError(
                    f"{op!r} cannot be a declarative backward hook ({e}): as a backward hook it runs as code, "
                    "which needs allow_code=True; ops.zero_ablate, patch, add and scale need no code"
                ) from None
        builder.grad_code_hook(run.id, hook, op)
        return
    if callable(op):
        builder.grad_code_hook(run.id, hook, op)
        return
    raise TypeError(
        f"a backward hook must be an op from telelens.trace.ops or a function, got {type(op).__name__}"
    )


def add_backward_hooks(
    builder: GraphBuilder,
    run: RunProxy,
    bwd_hooks: Sequence[tuple[str | Callable[[str], bool], Any]],
    resolve: Callable[[Any], list[str]],
) -> None:
    """``bwd_hooks=[(name_or_filter, op), ...]`` as backward-hook nodes of ``run``, in the order given."""
    for target, op in bwd_hooks:
        names = [target] if isinstance(target, str) else resolve(target)
        for hook in names:
            backward_op_nodes(op, builder, run, hook)


def add_cache_grads(
    builder: GraphBuilder,
    of: ValueProxy,
    reads: dict[str, int],
    shape: Callable[[str, ValueProxy], ValueProxy],
) -> dict[str, ValueProxy]:
    """``{hook + "_grad": gradient}`` of ``of`` at each Read in ``reads`` (hook -> Read id), last hook
    first (the order in which a backward pass reaches them), each shaped by ``shape(hook, grad)``."""
    of_ref = ir.Ref(of._ref())
    return {
        f"{hook}_grad": shape(hook, ValueProxy(builder, builder.grad(of_ref, read)))
        for hook, read in reversed(reads.items())
    }
