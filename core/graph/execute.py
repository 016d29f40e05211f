"""Execution: validate, plan, run the forward passes with hooks, evaluate and return the Saves."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.graph.evaluate import Evaluator, GraphRuntimeError
from telelens.core.graph.gradients import Gradients, apply_with_grad, handles_grad
from telelens.core.graph.plan import Capture, Member, Plan, RunGroup, SweepStep, make_plan
from telelens.core.graph.sweep import run_sweep
from telelens.core.graph.tensors import TORCH_DTYPES
from telelens.core.graph.validate import DEFAULT_LIMITS, CheckedGraph, RunShape, check
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

Progress = Callable[[int, int], Any]
"""``progress(done, total)``: forward passes done out of the total planned."""


def execute(
    model: HookedTransformer,
    graph: ir.Graph,
    limits: ir.Limits = DEFAULT_LIMITS,
    progress: Progress | None = None,
    *,
    batch_runs: bool = True,
    for_autograd: bool = True,
) -> dict[str, torch.Tensor]:
    """Run an intervention graph on ``model``; return the saved values by name.

    The graph is validated first, before any forward pass (``ir.GraphValidationError``
    lists every problem). Results are detached CPU tensors in the dtype each Save asked for.
    ``batch_runs=False`` gives every run its own forward pass (for comparisons).
    ``for_autograd=False`` (the server: results only get serialized) skips the copy that turns
    inference-mode results into ordinary tensors.
    """
    checked = check(model, graph, limits)
    if checked.errors:
        raise ir.GraphValidationError(checked.errors)
    plan = make_plan(model, checked, batch_runs=batch_runs)
    executor = _Executor(model, checked, plan, progress)
    # Code hooks may build autograd-aware tensors, and gradients need autograd-aware tensors
    # (only their own runs record: see gradients); everything else needs no autograd at all.
    with torch.no_grad() if plan.has_code or plan.has_grad else torch.inference_mode():
        executor.run()
        values = {}
        for save in graph.saves:
            v = executor.evaluator.value(save.id).detach()
            values[save.name] = v.to(TORCH_DTYPES[save.dtype]) if save.dtype else v
    return {name: _to_result(v, for_autograd) for name, v in values.items()}


def _to_result(v: torch.Tensor, for_autograd: bool = True) -> torch.Tensor:
    """A CPU tensor of its own: never an inference tensor, a model weight, or a view of a big activation.

    Without ``for_autograd`` (results that are only serialized) a contiguous tensor is kept as it is.
    """
    out = v.to("cpu")
    if not for_autograd:
        return out.contiguous()
    shares = out.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    oversized = out.untyped_storage().nbytes() > out.numel() * out.element_size()
    if shares or oversized or out.is_inference():
        out = out.clone()  # outside inference mode: a normal tensor
    return out


_LOGITS_HOOK = SimpleNamespace(name=ir.LOGITS, ctx={})
"""What a code hook at ``logits`` receives as ``hook``."""


class _Executor:
    def __init__(
        self, model: HookedTransformer, checked: CheckedGraph, plan: Plan, progress: Progress | None
    ) -> None:
        self.model, self.checked, self.plan, self.progress = model, checked, plan, progress
        self.device = model.W_E.device
        self.evaluator = Evaluator(model, checked.nodes, checked.constants, self.device)
        if plan.has_grad:
            self.evaluator.grads = Gradients(self.evaluator, checked.nodes)
        self.captures: dict[int, dict[int, torch.Tensor]] = {}  # sweep id -> layer -> clean activation
        self.code: dict[int, Callable[..., Any]] = {}
        self.done = 0

    def run(self) -> None:
        for step in self.plan.steps:
            if isinstance(step, RunGroup):
                self._run_group(step)
            else:
                self._sweep(step)

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.plan.n_passes)

    # ------------------------------------------------------------------ runs
    def _inputs(self, run: ir.Run, shape: RunShape) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids [batch, pos] and attention mask of a run, on the model's first device."""
        # An explicit mask wins; a padded text batch brings its own.
        mask = self.evaluator.value(run.attention_mask.node) if run.attention_mask is not None else None
        if run.tokens is None:
            assert shape.tokens is not None
            tokens, mask = shape.tokens, shape.attention_mask if mask is None else mask
        else:
            tokens = self.evaluator.value(run.tokens.node).long()
            if not isinstance(self.checked.nodes[run.tokens.node], ir.Constant):  # constants were checked
                vocab = self.model.cfg.d_vocab
                lo, hi = int(tokens.min()), int(tokens.max())
                if lo < 0 or hi >= vocab:
                    raise GraphRuntimeError(
                        run.id, f"token id {lo if lo < 0 else hi} is out of range for a vocabulary of {vocab}"
                    )
        return tokens.to(self.device), None if mask is None else mask.to(self.device)

    def _run_group(self, group: RunGroup) -> None:
        members = group.members
        inputs = [self._inputs(m.run, m.shape) for m in members]
        if len(members) == 1:
            tokens, mask = inputs[0]
        else:  # batchable runs have no mask
            tokens, mask = torch.cat([t for t, _ in inputs]), None
        names = sorted({h for m in members for h in m.ops if h != ir.LOGITS})
        fwd_hooks = [(name, self._hook_fn(name, members)) for name in names]
        start = group.start_at_layer
        if start is not None:  # the residual entering block ``start`` is the members' start writes
            resid = [self._start_value(m) for m in members]
            model_input = resid[0] if len(resid) == 1 else torch.cat(resid)
        else:
            model_input = tokens
        with (
            self.model.hooks(fwd_hooks=fwd_hooks),
            torch.enable_grad() if group.needs_grad else nullcontext(),
        ):
            out = self.model(
                model_input, attention_mask=mask, start_at_layer=start, stop_at_layer=group.stop_at_layer
            )
            if any(ir.LOGITS in m.ops for m in members):
                self._apply(ir.LOGITS, members, out, _LOGITS_HOOK)
        self._tick()

    def _start_value(self, m: Member) -> torch.Tensor:
        """What a late-starting run's start write sets, as the hook it replaces would hold it."""
        assert m.start is not None and self.checked.table is not None
        write = m.start.write
        value = self.evaluator.operand(write.value)
        assert isinstance(value, torch.Tensor)  # a whole [batch, pos, d_model] tensor (see the planner)
        return value.to(self.device, self.checked.table.dtypes[write.hook])

    def _hook_fn(self, name: str, members: list[Member]) -> Callable[..., torch.Tensor | None]:
        def fn(act: torch.Tensor, hook: Any) -> torch.Tensor | None:
            return self._apply(name, members, act, hook)

        fn.__name__ = f"graph_hook[{name}]"
        return fn

    def _apply(self, name: str, members: list[Member], act: torch.Tensor, hook: Any) -> torch.Tensor | None:
        """Run every member's ops at one hook; return the new activation if anything was written."""
        if len(members) == 1 and handles_grad(members[0], name):
            return apply_with_grad(self, members[0], name, act, hook)
        owned = False  # True once ``act`` is our own clone (safe to write in place)
        changed = False
        batched = len(members) > 1
        for m in members:
            ops = m.ops.get(name, [])
            for i, op in enumerate(ops):
                view = act[m.rows] if batched else act
                if isinstance(op, ir.Read):
                    # A snapshot needs its own copy only if a later op here writes into our clone in place.
                    later_write = any(isinstance(o, (ir.Write, ir.CodeHook)) for o in ops[i + 1 :])
                    self.evaluator.set(op.id, view.clone() if owned and later_write else view)
                elif isinstance(op, Capture):
                    self.captures.setdefault(op.sweep, {})[op.layer] = view
                elif isinstance(op, ir.Write):
                    value = self._value(op, act)
                    if not owned:
                        act, owned, changed = act.clone(), True, True
                        view = act[m.rows] if batched else act
                    self._write(op, view, value)
                else:
                    assert isinstance(op, ir.CodeHook), "backward hooks: see gradients"
                    assert not batched, "runs with code hooks are never batched"
                    if not owned:
                        act, owned, changed = act.clone(), True, True
                    out = self._code_fn(op)(act, hook=hook)
                    if out is not None and out is not act:
                        act, owned, changed = out, False, True  # not ours: clone again before writing
        return act if changed else None

    def _value(self, op: ir.Write, act: torch.Tensor) -> torch.Tensor | float:
        value = self.evaluator.operand(op.value)
        if isinstance(value, torch.Tensor):
            value = value.to(act.device)
            if op.mode == "set":
                value = value.to(act.dtype)  # index_put_ wants equal dtypes
        return value

    def _write(self, op: ir.Write, view: torch.Tensor, value: torch.Tensor | float) -> None:
        try:
            index = self.evaluator.index(op.index, view)
            if op.mode == "set":
                view[index] = value
            elif op.mode == "add":
                view[index] += value
            else:
                view[index] *= value
        except GraphRuntimeError:
            raise
        except Exception as e:  # data-dependent index errors (computed indices out of range)
            raise GraphRuntimeError(op.id, f"write to {op.hook} failed: {e}") from e

    def _code_fn(self, op: ir.CodeHook) -> Callable[..., Any]:
        if op.id not in self.code:
            from telelens.trace.code_payload import loads  # cloudpickle: only where code is allowed

            self.code[op.id] = loads(op.payload, self.model)  # captured models/caches: this model's
        return self.code[op.id]

    # ------------------------------------------------------------------ sweeps
    def _sweep(self, step: SweepStep) -> None:
        sweep = step.sweep
        corrupted = self.checked.nodes[sweep.corrupted]
        assert isinstance(corrupted, ir.Run)
        tokens, mask = self._inputs(corrupted, self.checked.runs[corrupted.id])
        metric_nodes = {n.id: n for n in sweep.metric}
        constants = {k: v.to(self.device) for k, v in self.checked.metric_constants.get(sweep.id, {}).items()}

        def metric(logits: torch.Tensor) -> torch.Tensor:
            sub = Evaluator(self.model, metric_nodes, constants, self.device, parent=self.evaluator)
            sub.set(sweep.metric_input, logits)
            return sub.value(sweep.metric_output)

        grid = run_sweep(self.model, step.geometry, self.captures[sweep.id], tokens, mask, metric, self._tick)
        self.evaluator.set(sweep.id, grid)
