"""GraphBuilder: the node store behind a trace or a TransformerLens-style call.

It hands out node ids in program order, deduplicates constants and weights, caches the
latest ``Read`` of each activation (invalidated by every write to it), checks hook names
against the model's list, and freezes the nodes into an :class:`ir.Graph`. It knows
nothing about proxies; those live in :mod:`telelens.trace.proxies`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from telelens.protos import ir


def hook_suggestions(name: str, hook_names: Sequence[str], n: int = 3) -> str:
    """``"; did you mean a, b?"`` for an unknown hook name (empty when nothing is close)."""
    close = difflib.get_close_matches(name, list(hook_names), n=n)
    return f"; did you mean {', '.join(close)}?" if close else ""


def referenced_ids(node: ir.Node) -> Iterator[int]:
    """Every node id ``node`` depends on: its Refs, and the runs it reads or writes."""
    for f in dataclasses.fields(node):
        if f.name == "id":
            continue
        value = getattr(node, f.name)
        if isinstance(value, ir.Ref):
            yield value.node
        elif isinstance(value, tuple):
            for item in value:
                if isinstance(item, ir.Ref):
                    yield item.node
        elif f.name in ("run", "clean", "corrupted") and isinstance(value, int):
            yield value


class UnknownHookError(KeyError):
    """A hook name the model does not have (the message suggests close names)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GraphBuilder:
    """Appends intervention-graph nodes in program order.

    ``hook_names`` (the model's hooks, forward order) makes unknown hook names fail at
    build time, with suggestions; ``None`` skips that check (the executor checks again).
    """

    def __init__(
        self, hook_names: Sequence[str] | None = None, cfg: Any = None, allow_code: bool = False
    ) -> None:
        self.hook_names: list[str] | None = list(hook_names) if hook_names is not None else None
        self._hook_set = set(self.hook_names) if self.hook_names is not None else None
        self.cfg = cfg
        self.allow_code = allow_code
        self.nodes: list[ir.Node] = []
        self._ids = [0]  # the next id, in a list so that child builders share the counter
        self._constants: dict[int, tuple[object, int]] = {}  # id(tensor) -> (tensor, node id)
        self._weights: dict[str, int] = {}
        self._reads: dict[tuple[int, str], int] = {}  # (run, hook) -> latest Read still valid
        self._save_names: set[str] = set()
        self.handles: list[Any] = []  # Saved handles, filled after execution
        self.backward_of: int | None = None  # the metric of the latest ``metric.backward()``
        self.run_hooks: list[tuple[str, Any]] = []
        """``(hook name, op)`` applied to every run as it is added (a model's registered hooks)."""
        self.frozen = False

    # ------------------------------------------------------------------ nodes
    def add(self, cls: type[ir.Node], **fields: Any) -> int:
        """Append ``cls(id=<next>, **fields)`` and return its id."""
        if self.frozen:
            raise RuntimeError("this trace is closed: build a new one to add more nodes")
        node_id = self._ids[0]
        self._ids[0] += 1
        self.nodes.append(cls(id=node_id, **fields))
        return node_id

    def node(self, node_id: int) -> ir.Node:
        for n in reversed(self.nodes):
            if n.id == node_id:
                return n
        raise KeyError(f"no node {node_id} in this graph")

    def constant(self, value: object) -> int:
        """A Constant node holding ``value`` (a torch tensor), one node per tensor object."""
        hit = self._constants.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        node_id = self.add(ir.Constant, value=value)
        self._constants[id(value)] = (value, node_id)  # keeps value alive, so id() stays unique
        return node_id

    def weight(self, name: str) -> int:
        """A Weight node (one per name: weights never change during a request)."""
        if name not in self._weights:
            self._weights[name] = self.add(ir.Weight, name=name)
        return self._weights[name]

    # ------------------------------------------------------------------ activations
    def check_hook(self, hook: str) -> None:
        """Raise KeyError for a hook the model does not have ("logits" is always fine)."""
        if not isinstance(hook, str):
            raise TypeError(f"hook names are strings, got {type(hook).__name__}: {hook!r}")
        if hook == ir.LOGITS or self._hook_set is None or hook in self._hook_set:
            return
        assert self.hook_names is not None
        raise UnknownHookError(f"unknown hook point {hook!r}{hook_suggestions(hook, self.hook_names)}")

    def read(self, run: int, hook: str) -> int:
        """The activation ``hook`` of ``run`` as it stands at this point of the program."""
        key = (run, hook)
        if key not in self._reads:
            self.check_hook(hook)
            self._reads[key] = self.add(ir.Read, run=run, hook=hook)
        return self._reads[key]

    def write(
        self, run: int, hook: str, value: ir.Operand, index: tuple[ir.IndexItem, ...], mode: str
    ) -> int:
        if mode not in ir.WRITE_MODES:
            raise ValueError(f"write mode must be one of {ir.WRITE_MODES}, got {mode!r}")
        self.check_hook(hook)
        node_id = self.add(ir.Write, run=run, hook=hook, value=value, index=index, mode=mode)
        self._reads.pop((run, hook), None)  # later reads must see this write
        return node_id

    def code_hook(self, run: int, hook: str, fn: Any) -> int:
        """A CodeHook running ``fn(tensor, hook=...)`` at ``hook``; needs ``allow_code=True``."""
        if not self.allow_code:
            raise PermissionError(
                "Python hook functions run as code on the server and are off by default: "
                "use a declarative op from telelens.trace.ops, or pass allow_code=True "
                "(the server and your API key must allow code too)"
            )
        if not callable(fn):
            raise TypeError(f"code hooks must be callable, got {type(fn).__name__}")
        self.check_hook(hook)
        from telelens.trace.code_payload import dumps  # cloudpickle: only code hooks need it

        node_id = self.add(ir.CodeHook, run=run, hook=hook, payload=dumps(fn))
        self._reads.pop((run, hook), None)
        return node_id

    # ------------------------------------------------------------------ gradients
    def grad(self, of: ir.Ref, wrt_read: int) -> int:
        """A Grad node: the gradient of scalar ``of`` with respect to what Read ``wrt_read`` reads."""
        if not isinstance(self.node(wrt_read), ir.Read):
            raise TypeError("a gradient is taken with respect to an activation: run[hook] (a Read)")
        return self.add(ir.Grad, of=of, wrt=ir.Ref(wrt_read))

    def grad_write(
        self, run: int, hook: str, value: ir.Operand, index: tuple[ir.IndexItem, ...], mode: str
    ) -> int:
        """A backward hook writing into the gradient that flows back through ``hook``."""
        if mode not in ir.WRITE_MODES:
            raise ValueError(f"write mode must be one of {ir.WRITE_MODES}, got {mode!r}")
        self.check_hook(hook)
        node_id = self.add(ir.GradWrite, run=run, hook=hook, value=value, index=index, mode=mode)
        self._reads.pop((run, hook), None)  # a later gradient of this hook must see this write
        return node_id

    def grad_code_hook(self, run: int, hook: str, fn: Any) -> int:
        """A backward hook running ``fn(grad, hook=...)``; needs ``allow_code=True``."""
        node_id = self.code_hook(run, hook, fn)  # the same permission and checks as a forward one
        node = self.nodes.pop()
        assert isinstance(node, ir.CodeHook) and node.id == node_id
        self.nodes.append(ir.GradCodeHook(id=node_id, run=run, hook=hook, payload=node.payload))
        return node_id

    def save(self, value: ir.Ref, name: str | None, dtype: str | None) -> str:
        """A Save node; ``name`` defaults to ``save_{n}``. Returns the name."""
        if name is None:
            n = len(self._save_names)
            while f"save_{n}" in self._save_names:
                n += 1
            name = f"save_{n}"
        elif not isinstance(name, str) or not name:
            raise ValueError(f"save names are non-empty strings, got {name!r}")
        if name in self._save_names:
            raise ValueError(f"a value is already saved as {name!r}: pick another name")
        if dtype is not None and dtype not in ir.DTYPES:
            raise ValueError(f"dtype must be one of {ir.DTYPES}, got {dtype!r}")
        self._save_names.add(name)
        self.add(ir.Save, input=value, name=name, dtype=dtype)
        return name

    # ------------------------------------------------------------------ edits
    def drop_if_unused(self, ids: Iterable[int]) -> bool:
        """Remove the nodes ``ids`` if no other node refers to them; True if removed.

        Used to turn ``a[i] += v`` (Python: read, add, write back) into one additive write.
        """
        ids = set(ids)
        for n in self.nodes:
            if n.id not in ids and ids.intersection(referenced_ids(n)):
                return False
        self.nodes = [n for n in self.nodes if n.id not in ids]
        self._reads = {k: v for k, v in self._reads.items() if v not in ids}
        self._constants = {k: v for k, v in self._constants.items() if v[1] not in ids}
        self._weights = {k: v for k, v in self._weights.items() if v not in ids}
        return True

    @property
    def next_id(self) -> int:
        """The id the next node will get (ids only grow, even after a drop)."""
        return self._ids[0]

    def child(self) -> GraphBuilder:
        """A builder for a sub-graph (a sweep's metric): its own nodes, ids from this builder's
        counter, so that its nodes and this graph's never share an id."""
        sub = GraphBuilder(None, self.cfg, self.allow_code)
        sub._ids = self._ids
        return sub

    def graph(self) -> ir.Graph:
        """The nodes so far as an immutable graph."""
        return ir.Graph(nodes=tuple(self.nodes))
