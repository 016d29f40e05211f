"""Planning: which runs execute, in what order, batched how, hooked where, stopped when.

- Liveness: only what a Save needs is computed. A run executes when a needed Read or a
  sweep's clean activation comes from it, or when it carries a code hook.
- Order: units (runs and sweeps) are sorted into levels; a unit's level is one more than
  that of any unit it needs, so units of one level are independent of each other.
- Batching: runs of one level with the same number of positions, no attention mask and no
  code hook share ONE forward pass, concatenated along the batch; each run's hooks act on
  its own rows.
- Hook placement: hooks go only on points the graph reads, writes, code-hooks or a sweep
  patches from. Ops at one hook run in node order; a sweep's capture comes last.
- Gradients: a run holding a Grad's ``wrt`` runs alone, with autograd (see ``gradients``); its
  backward hooks go on its hooks like writes. Other runs drop their backward hooks: no
  gradient ever flows through them.
- Early stop: a pass that reads (or code-hooks) nothing after block L stops there
  (``stop_at_layer=L+1``), skipping the later blocks, the final norm and the unembedding;
  writes after that point could not change anything read, so they are skipped too.
- Late start: a run whose whole residual entering block L is set (a whole-tensor ``set``
  Write at ``blocks.L.hook_resid_pre``, or at ``blocks.{L-1}.hook_resid_post``), with nothing
  read, code-hooked or captured before it, starts its pass at block L (``start_at_layer=L``)
  with the written value as its input: the blocks before it could not change anything (this
  is how ``start_at_layer`` travels, see ``telelens.trace.builders``). Runs batch only with
  runs that start at the same block.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from telelens.core.graph.gradients import grad_reads
from telelens.core.graph.refs import BACKWARD_NODES, metric_outer_refs, value_refs
from telelens.core.graph.sweep import SweepGeometry
from telelens.core.graph.validate import CheckedGraph, RunShape
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


@dataclass(frozen=True)
class Capture:
    """Keep the value leaving a hook as the clean activation of ``sweep`` at ``layer``."""

    sweep: int
    layer: int


HookOp: TypeAlias = "ir.Read | ir.Write | ir.CodeHook | ir.GradWrite | ir.GradCodeHook | Capture"


@dataclass
class Member:
    """One run inside a (possibly batched) forward pass."""

    run: ir.Run
    shape: RunShape
    ops: dict[str, list[HookOp]] = field(default_factory=dict)
    """Hook name (``"logits"`` included) -> what to do there, in node order."""
    rows: slice = field(default_factory=lambda: slice(None))
    """This run's rows of the batched pass."""
    has_code: bool = False
    grad_reads: set[int] = field(default_factory=set)
    """Reads some needed Grad differentiates by: the run runs with autograd when there are any."""
    start: StartAt | None = None
    """Where the pass starts, when it need not start from the tokens (see the module doc)."""


@dataclass(frozen=True)
class StartAt:
    """Start the pass at block ``layer`` with the value ``write`` sets as the residual stream."""

    layer: int
    write: ir.Write


@dataclass
class RunGroup:
    """One forward pass over the concatenated tokens of its members."""

    members: list[Member]
    stop_at_layer: int | None
    start_at_layer: int | None = None
    """All members start at this block (None: from the tokens)."""

    @property
    def needs_grad(self) -> bool:
        return any(m.grad_reads for m in self.members)


@dataclass
class SweepStep:
    sweep: ir.Sweep
    geometry: SweepGeometry


Step = RunGroup | SweepStep


@dataclass
class Plan:
    steps: list[Step]
    n_passes: int
    """Forward passes in all: one per group, one per sweep cell (for progress reports)."""
    has_code: bool
    has_grad: bool = False


def make_plan(model: HookedTransformer, checked: CheckedGraph, batch_runs: bool = True) -> Plan:
    """Plan the execution of a validated graph."""
    nodes = checked.nodes
    needed, executed, sweeps = _liveness(checked)
    hooked: dict[int, list[HookOp]] = defaultdict(list)  # run id -> its hook nodes, in node order
    for nid in sorted(nodes):
        n = nodes[nid]
        if isinstance(n, (ir.Write, ir.CodeHook, ir.GradWrite, ir.GradCodeHook)) or (
            isinstance(n, ir.Read) and nid in needed
        ):
            hooked[n.run].append(n)
    targets = grad_reads(nodes, needed)
    members = {rid: _member(checked, rid, hooked[rid], sweeps, targets[rid]) for rid in sorted(executed)}
    for m in members.values():
        _start_late(checked, m, model.cfg.d_model)

    units = executed | sweeps
    levels = _levels(units, {u: set(checked.deps.needs.get(u, {})) & units for u in units})
    steps: list[Step] = []
    for level in sorted(set(levels.values())):
        batches: dict[object, list[Member]] = defaultdict(list)
        for u in sorted(u for u in units if levels[u] == level):
            if u in members:
                m = members[u]
                batchable = (
                    batch_runs and not m.has_code and not m.grad_reads and m.run.attention_mask is None
                )
                batchable = batchable and m.shape.attention_mask is None
                start = None if m.start is None else m.start.layer
                batches[("pos", m.shape.pos, start) if batchable else ("run", u)].append(m)
        for group in batches.values():
            steps.append(_group(model, checked, group))
        for u in sorted(u for u in sweeps if levels[u] == level):
            sweep = nodes[u]
            assert isinstance(sweep, ir.Sweep)
            steps.append(SweepStep(sweep, checked.sweeps[u]))
    n_passes = sum(1 if isinstance(s, RunGroup) else s.geometry.n_cells for s in steps)
    has_code = any(m.has_code for m in members.values())
    return Plan(steps, n_passes, has_code, has_grad=any(m.grad_reads for m in members.values()))


def _liveness(checked: CheckedGraph) -> tuple[set[int], set[int], set[int]]:
    """(needed value nodes, runs to execute, sweeps to run), following refs back from the Saves."""
    nodes = checked.nodes
    writes: dict[int, list[ir.Write | ir.GradWrite]] = defaultdict(list)
    for n in nodes.values():
        if isinstance(n, (ir.Write, ir.GradWrite)):
            writes[n.run].append(n)
    needed: set[int] = set()
    executed: set[int] = set()
    sweeps: set[int] = set()
    stack: list[int] = [n.id for n in nodes.values() if isinstance(n, ir.Save)]

    def execute_run(rid: int) -> None:
        if rid not in executed:
            executed.add(rid)
            stack.extend(r for _, r in value_refs(nodes[rid]))
            for w in writes[rid]:
                stack.extend(r for _, r in value_refs(w))

    for n in nodes.values():
        if isinstance(n, ir.CodeHook):
            execute_run(n.run)
    while stack:
        nid = stack.pop()
        if nid in needed or nid not in nodes:
            continue
        needed.add(nid)
        node = nodes[nid]
        stack.extend(r for _, r in value_refs(node))
        if isinstance(node, ir.Read):
            execute_run(node.run)
        elif isinstance(node, ir.Sweep):
            sweeps.add(nid)
            execute_run(node.clean)
            stack.extend(r for _, r in value_refs(nodes[node.corrupted]))
            stack.extend(r for _, _, r in metric_outer_refs(node))
    return needed, executed, sweeps


def _member(
    checked: CheckedGraph, rid: int, hooked: list[HookOp], sweeps: set[int], grad_reads: set[int]
) -> Member:
    run = checked.nodes[rid]
    assert isinstance(run, ir.Run)
    m = Member(run=run, shape=checked.runs[rid], grad_reads=set(grad_reads))
    for n in hooked:
        assert not isinstance(n, Capture)
        if isinstance(n, BACKWARD_NODES) and not grad_reads:
            continue  # no gradient of this run is asked for: no backward pass goes through it
        m.ops.setdefault(n.hook, []).append(n)
        m.has_code = m.has_code or isinstance(n, (ir.CodeHook, ir.GradCodeHook))
    for sid in sorted(sweeps):
        sweep = checked.nodes[sid]
        assert isinstance(sweep, ir.Sweep)
        if sweep.clean == rid:
            for layer, hook in enumerate(checked.sweeps[sid].hooks):
                m.ops.setdefault(hook, []).append(Capture(sid, layer))
    return m


_ENTRY = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


def _start_late(checked: CheckedGraph, m: Member, d_model: int) -> None:
    """Find where ``m``'s pass can start (see the module doc); drop the ops that then never fire."""
    table = checked.table
    assert table is not None
    m.start = _entry_write(checked, m, (m.shape.batch, m.shape.pos, d_model))
    if m.start is None:
        return
    hook = m.start.write.hook
    entry = table.order[hook]
    kept = {h: ops for h, ops in m.ops.items() if table.order[h] > entry}
    if hook.endswith("hook_resid_pre"):  # fires with the start value: what follows the write still applies
        ops = m.ops[hook]
        kept[hook] = ops[ops.index(m.start.write) + 1 :]
    m.ops = {h: ops for h, ops in kept.items() if ops}


def _entry_write(checked: CheckedGraph, m: Member, whole: tuple[int, int, int]) -> StartAt | None:
    table = checked.table
    assert table is not None
    for hook in sorted(m.ops, key=lambda h: table.order[h], reverse=True):  # the latest entry wins
        match = _ENTRY.match(hook)
        if match is None:
            continue
        ops = m.ops[hook]
        for i, op in enumerate(ops):
            if not isinstance(op, ir.Write):
                break  # something sees the computed value first
            value = checked.meta.get(op.value.node) if isinstance(op.value, ir.Ref) else None
            if op.mode != "set" or op.index or value is None or tuple(value.shape) != whole:
                continue
            if match.group(2) == "post" and i != len(ops) - 1:
                continue  # nothing may follow at resid_post: that hook will not fire
            entry = table.order[hook]
            earlier = (o for h, hook_ops in m.ops.items() if table.order[h] < entry for o in hook_ops)
            if all(isinstance(o, ir.Write) for o in earlier):
                return StartAt(int(match.group(1)) + (match.group(2) == "post"), op)
    return None


def _levels(units: set[int], needs: dict[int, set[int]]) -> dict[int, int]:
    """Longest-path level of every unit (validation has ruled out cycles)."""
    level: dict[int, int] = {}
    remaining = set(units)
    while remaining:
        ready = [u for u in remaining if all(v in level for v in needs[u] if v != u)]
        if not ready:
            raise RuntimeError(
                f"dependency cycle among units {sorted(remaining)} (validation should have refused it)"
            )
        for u in ready:
            level[u] = 1 + max((level[v] for v in needs[u] if v != u), default=-1)
        remaining -= set(ready)
    return level


def _group(model: HookedTransformer, checked: CheckedGraph, members: list[Member]) -> RunGroup:
    assert checked.table is not None
    start = 0
    for m in members:
        m.rows = slice(start, start + m.shape.batch)
        start += m.shape.batch
    # A write after the last value anyone needs changes nothing anyone sees: it does not extend the pass.
    table = checked.table
    last = max(
        (
            table.layer(h)
            for m in members
            for h, ops in m.ops.items()
            if any(not isinstance(o, (ir.Write, *BACKWARD_NODES)) for o in ops)
        ),
        default=-1,
    )
    stop = None if last >= model.cfg.n_layers else last + 1
    first = members[0].start  # batched members share their start (see make_plan)
    return RunGroup(members, stop, None if first is None else first.layer)
