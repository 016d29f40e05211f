"""Graph-wide checks that need the model, run after every node's shape is known."""

from __future__ import annotations

from typing import TYPE_CHECKING

from telelens.core.graph.refs import kind, value_refs
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.graph.validate import CheckedGraph


def _add(errors: list[ir.GraphError], node_id: int | None, field: str, reason: str) -> None:
    errors.append(ir.GraphError(node_id, field, reason))


def order_errors(out: CheckedGraph) -> list[ir.GraphError]:
    """A run fed by its own activations, a write using a later hook of its run, cross-run cycles."""
    errors: list[ir.GraphError] = []
    nodes, deps, table = out.nodes, out.deps, out.table
    assert table is not None
    for n in nodes.values():
        if isinstance(n, ir.Run):
            own = [r for r in deps.reads_of(value_refs(n)) if getattr(nodes[r], "run", None) == n.id]
            if own:
                _add(
                    errors, n.id, "tokens", f"the run's inputs depend on its own activations (node {own[0]})"
                )
        elif isinstance(n, (ir.Write, ir.GradWrite)) and table.fires(n.hook):
            for r in sorted(deps.reads_of(value_refs(n))):
                read = nodes[r]
                assert isinstance(read, ir.Read)
                if (
                    read.run == n.run
                    and table.fires(read.hook)
                    and table.order[read.hook] > table.order[n.hook]
                ):
                    _add(
                        errors, n.id, "value",
                        f"depends on {read.hook} (node {r}), which run {n.run} computes after {n.hook}: "
                        "a write may only use earlier hooks of its own run",
                    )  # fmt: skip
                    break
    reported: set[int] = set()
    for unit, needs in deps.needs.items():
        for other, witness in needs.items():
            if other != unit and witness not in reported and deps.reaches(other, unit):
                reported.add(witness)
                _add(
                    errors, witness, "",
                    f"cross-run cycle: {kind(nodes[unit]).lower()} {unit} needs {kind(nodes[other]).lower()} "
                    f"{other}, which itself needs {unit}",
                )  # fmt: skip
    return errors


def total_errors(out: CheckedGraph, limits: ir.Limits) -> list[ir.GraphError]:
    """The limits on tokens over all runs, saved result bytes and sweep cells."""
    errors: list[ir.GraphError] = []
    tokens = sum(r.batch * r.pos for r in out.runs.values())
    if tokens > limits.max_tokens:
        _add(
            errors,
            None,
            "tokens",
            f"the runs total {tokens} tokens, more than the limit of {limits.max_tokens}",
        )
    result = 0
    for n in out.nodes.values():
        m = out.meta.get(n.id)
        if isinstance(n, ir.Save) and m is not None:
            result += m.numel() * m.element_size()
            if result > limits.max_result_bytes:
                _add(
                    errors, n.id, "",
                    f"saved results would total {result} bytes, more than the limit of {limits.max_result_bytes}",
                )  # fmt: skip
                break
    cells = 0
    for sid, geometry in sorted(out.sweeps.items()):
        cells += geometry.n_cells
        if cells > limits.max_sweep_cells:
            _add(
                errors,
                sid,
                "axes",
                f"sweeps total {cells} cells, more than the limit of {limits.max_sweep_cells}",
            )
            break
    return errors
