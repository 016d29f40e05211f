"""Dependency analysis: which reads and sweeps a value needs, and which units wait for which.

A *unit* is something the executor runs as a whole: a Run (one forward pass) or a Sweep
(a grid of them). Unit U needs unit V when U's inputs (tokens, mask, written values,
indices, a sweep's metric) depend on a Read of V or on the grid of V, or when U is a sweep
patching from the clean run V. Reads of a run by that run's own writes are not edges: they
are ordered by the hook order inside one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from telelens.core.graph.refs import metric_outer_refs, value_refs
from telelens.protos import ir


@dataclass
class Dependencies:
    reads: dict[int, frozenset[int]] = field(default_factory=dict)
    """Value node id -> the Read nodes it depends on (transitively)."""
    sweeps: dict[int, frozenset[int]] = field(default_factory=dict)
    """Value node id -> the Sweep nodes it depends on (transitively)."""
    needs: dict[int, dict[int, int]] = field(default_factory=dict)
    """Unit id -> {unit id it needs: the node that makes it need it}."""

    def reads_of(self, refs: list[tuple[str, int]]) -> frozenset[int]:
        return frozenset().union(*(self.reads.get(r, frozenset()) for _, r in refs))

    def sweeps_of(self, refs: list[tuple[str, int]]) -> frozenset[int]:
        return frozenset().union(*(self.sweeps.get(r, frozenset()) for _, r in refs))

    def reaches(self, start: int, target: int) -> bool:
        """True when unit ``start`` needs ``target``, directly or through other units."""
        seen, stack = set(), [start]
        while stack:
            u = stack.pop()
            if u == target:
                return True
            if u not in seen:
                seen.add(u)
                stack.extend(self.needs.get(u, {}))
        return False


def analyze(nodes: dict[int, ir.Node]) -> Dependencies:
    """Sources of every value and the needs of every unit (missing refs are skipped)."""
    deps = Dependencies()
    for nid in sorted(nodes):
        node = nodes[nid]
        refs = value_refs(node)
        if isinstance(node, ir.Read):
            deps.reads[nid], deps.sweeps[nid] = frozenset({nid}), frozenset()
        elif isinstance(node, ir.Sweep):
            deps.reads[nid], deps.sweeps[nid] = frozenset(), frozenset({nid})
        else:
            deps.reads[nid] = deps.reads_of(refs)
            deps.sweeps[nid] = deps.sweeps_of(refs)

    def add(unit: int, refs: list[tuple[str, int]], witness: int, own_run: int | None) -> None:
        needs = deps.needs.setdefault(unit, {})
        for rid in deps.reads_of(refs):
            run = getattr(nodes[rid], "run", None)
            if run is not None and run != own_run:
                needs.setdefault(run, witness)
        for sid in deps.sweeps_of(refs):
            needs.setdefault(sid, witness)

    for nid in sorted(nodes):
        node = nodes[nid]
        if isinstance(node, ir.Run):
            add(nid, value_refs(node), nid, own_run=None)  # its own reads: a cycle, reported by validation
        elif isinstance(node, (ir.Write, ir.GradWrite)) and isinstance(nodes.get(node.run), ir.Run):
            add(node.run, value_refs(node), nid, own_run=node.run)
        elif isinstance(node, ir.Sweep):
            deps.needs.setdefault(nid, {})
            if isinstance(nodes.get(node.clean), ir.Run):
                deps.needs[nid].setdefault(node.clean, nid)
            corrupted = nodes.get(node.corrupted)
            if isinstance(corrupted, ir.Run):
                add(nid, value_refs(corrupted), nid, own_run=None)
            outer = [("metric", r) for _, _, r in metric_outer_refs(node) if r in nodes]
            add(nid, outer, nid, own_run=None)
    return deps
