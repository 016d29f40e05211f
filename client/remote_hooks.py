"""Hooks registered on a remote model: TransformerLens's hook management, applied to every later run.

``model.add_hook(name, ops.zero_ablate())`` stores the op on ``model.hook_dict[name]`` (a
:class:`RemoteHookPoint`); every later call that runs the model (``model(...)``,
``run_with_cache``, ``run_with_hooks``, ``generate``'s steps, each run of ``model.trace()``) compiles
the registered ops into its graph, before the call's own ``fwd_hooks`` (TransformerLens's order;
``prepend=True`` puts a hook first at its point). ``reset_hooks()``, ``hooks(...)``,
``add_perma_hook`` and ``list_hooks`` are the local ``HookedRootModule``'s, written once in
:mod:`telelens.lens.hook_management`.

A hook is a declarative op from :mod:`telelens.trace.ops` or a Python function, which runs as code
on the server: it needs ``telelens.connect(..., allow_code=True)`` (``model.allow_code``), and a
server and API key that allow code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from telelens.lens.hook_management import (
    HookPointHooks,
    HookTarget,
    LensHandle,
    RootHooks,
    check_direction,
)
from telelens.trace.builders import resolve_names_filter
from telelens.trace.hook_ops import HookOp
from telelens.trace.ops import python as python_op


def as_hook_op(hook: Any, allow_code: bool) -> HookOp:
    """An op from ``telelens.trace.ops`` as is; a function as a code op, if code is allowed."""
    if isinstance(hook, HookOp):
        return hook
    if callable(hook):
        if not allow_code:
            raise PermissionError(
                f"{getattr(hook, '__name__', hook)!r} is a Python hook function: it would run as code on "
                "the server. Use a declarative op from telelens.trace.ops (patch, zero_ablate, "
                "mean_ablate, add, ...), or allow code for this model: telelens.connect(..., "
                "allow_code=True) or model.allow_code = True (the server and your key must allow code too)"
            )
        return python_op(hook)
    raise TypeError(f"a hook must be an op from telelens.trace.ops or a function, got {type(hook).__name__}")


class RemoteHookPoint(HookPointHooks[HookOp]):
    """A hook point of the server model: its name, dimension names and registered hooks.

    A handle's ``hook`` is the op compiled into each graph, its ``user_hook`` what was passed (an
    op, or a function wrapped in ``ops.python``); the rules for listing and removing hooks are the
    shared :class:`~telelens.lens.hook_management.HookPointHooks`'.
    """

    def __init__(self, name: str, shape: tuple[str, ...], allow_code: Callable[[], bool] = lambda: False):
        self.name: str = name
        self.shape = shape
        self.fwd_hooks: list[LensHandle[HookOp]] = []
        self.bwd_hooks: list[LensHandle[HookOp]] = []
        self.ctx: dict[Any, Any] = {}
        """Scratch space kept on this side (a code hook's ``hook.ctx`` is the worker's)."""
        self._allow_code = allow_code

    def _attach(self, hook: Any, dir: Literal["fwd", "bwd"], prepend: bool) -> HookOp:
        """The op every later graph compiles at this point (an op, or a function when code is allowed)."""
        return as_hook_op(hook, self._allow_code())

    def _detach(self, handle: LensHandle[HookOp]) -> None:
        """Nothing to detach: a hook removed from the lists is left out of the next graph."""

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}", f"[{', '.join(self.shape)}]"]
        return f"RemoteHookPoint({', '.join(bits + self._hook_counts())})"


class RemoteHooks(RootHooks[RemoteHookPoint]):
    """TransformerLens's ``HookedRootModule`` hook management for a model without modules.

    The host sets ``hook_names`` (forward order), ``_hook_shapes`` and ``allow_code``.
    """

    hook_names: list[str]
    _hook_shapes: dict[str, tuple[str, ...]]
    allow_code: bool

    @property  # read-only here; RootHooks only reads it
    def hook_dict(self) -> dict[str, RemoteHookPoint]:  # type: ignore[override]
        """Hook points in forward order, with their dimension names and registered hooks."""
        points: dict[str, RemoteHookPoint] | None = self.__dict__.get("_hook_points")
        if points is None:
            points = {
                n: RemoteHookPoint(n, self._hook_shapes[n], self._code_allowed) for n in self.hook_names
            }
            self.__dict__["_hook_points"] = points
        return points

    def _code_allowed(self) -> bool:
        return bool(self.allow_code)

    def _points(self, name: HookTarget) -> list[RemoteHookPoint]:
        """The points ``name`` selects: a hook name (unknown names raise ``UnknownHookError``) or a filter."""
        if not isinstance(name, str) and not callable(name):
            raise TypeError(f"a hook target is a hook name or a filter function, got {type(name).__name__}")
        return [self.hook_dict[n] for n in resolve_names_filter(name, self.hook_names)]

    def add_hook(
        self,
        name: HookTarget,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Register ``hook`` at the hook point ``name`` (or every point a filter accepts) for every
        later run. ``hook`` is an op from ``telelens.trace.ops``, or a function if ``allow_code``."""
        check_direction(dir, ("fwd", "bwd"))
        points = self._points(name)
        op = as_hook_op(hook, self._code_allowed())  # checked once, even when the filter selects nothing
        for point in points:
            self.check_hooks_to_add(
                point, point.name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend
            )
            point._push(LensHandle(op, is_permanent, level, hook), dir, prepend)

    def _registered_hooks(self, dir: Literal["fwd", "bwd"] = "fwd") -> list[tuple[str, HookOp]]:
        """``(hook name, op)`` of every registered hook in ``dir``: points in forward order, each
        point's hooks in the order they run there."""
        return [
            (name, handle.hook)
            for name, point in self.hook_dict.items()
            for handle in (point.fwd_hooks if dir == "fwd" else point.bwd_hooks)
        ]
