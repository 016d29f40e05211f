"""Hooks registered on a remote model: TransformerLens's hook management, applied to every later run.

``model.add_hook(name, ops.zero_ablate())`` stores the op on ``model.hook_dict[name]`` (a
:class:`RemoteHookPoint`); every later call that runs the model (``model(...)``,
``run_with_cache``, ``run_with_hooks``, ``generate``'s steps, each run of ``model.trace()``) compiles
the registered ops into its graph, before the call's own ``fwd_hooks`` (TransformerLens's order;
``prepend=True`` puts a hook first at its point). ``reset_hooks()``, ``hooks(...)``,
``add_perma_hook`` and ``list_hooks`` work as on a local ``HookedRootModule``.

A hook is a declarative op from :mod:`telelens.trace.ops` or a Python function, which runs as code
on the server: it needs ``telelens.connect(..., allow_code=True)`` (``model.allow_code``), and a
server and API key that allow code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from telelens.trace.builders import resolve_names_filter
from telelens.trace.hook_ops import HookOp
from telelens.trace.ops import python as python_op

Direction = Literal["fwd", "bwd", "both"]
HookTarget = str | Callable[[str], bool]
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


@dataclass
class RemoteLensHandle:
    """A registered hook (TransformerLens's ``LensHandle`` fields): ``hook`` is the op compiled into
    each graph, ``user_hook`` what was passed (an op, or a function wrapped in ``ops.python``)."""

    hook: HookOp
    is_permanent: bool = False
    context_level: int | None = None
    user_hook: Any = None


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


def _keep(handle: RemoteLensHandle, including_permanent: bool, level: int | None) -> bool:
    """Whether ``remove_hooks``/``reset_hooks`` leaves ``handle`` (as the local ``HookPoint`` does)."""
    removed = (including_permanent or not handle.is_permanent) and (
        level is None or handle.context_level == level
    )
    return not removed


def _check_dir(dir: str, allowed: tuple[str, ...]) -> None:
    if dir not in allowed:
        raise ValueError(f"dir must be one of {allowed}, got {dir!r}")


class RemoteHookPoint:
    """A hook point of the server model: its name, dimension names and registered hooks."""

    def __init__(self, name: str, shape: tuple[str, ...], allow_code: Callable[[], bool] = lambda: False):
        self.name = name
        self.shape = shape
        self.fwd_hooks: list[RemoteLensHandle] = []
        self.bwd_hooks: list[RemoteLensHandle] = []
        self.ctx: dict[Any, Any] = {}
        """Scratch space kept on this side (a code hook's ``hook.ctx`` is the worker's)."""
        self._allow_code = allow_code

    def add_hook(
        self,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Register ``hook`` (an op, or a function when code is allowed) for every later run."""
        self._register(
            RemoteLensHandle(as_hook_op(hook, self._allow_code()), is_permanent, level, hook), dir, prepend
        )

    def _register(self, handle: RemoteLensHandle, dir: str, prepend: bool) -> None:
        _check_dir(dir, ("fwd", "bwd"))
        handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if prepend:
            handles.insert(0, handle)
        else:
            handles.append(handle)

    def add_perma_hook(self, hook: Any, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """A hook that ``reset_hooks`` keeps unless asked to remove permanent hooks."""
        self.add_hook(hook, dir=dir, is_permanent=True)

    def remove_hooks(
        self, dir: Direction = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove this point's hooks in one direction (permanent ones only when asked)."""
        _check_dir(dir, ("fwd", "bwd", "both"))
        if dir in ("fwd", "both"):
            self.fwd_hooks = [h for h in self.fwd_hooks if _keep(h, including_permanent, level)]
        if dir in ("bwd", "both"):
            self.bwd_hooks = [h for h in self.bwd_hooks if _keep(h, including_permanent, level)]

    def has_hooks(
        self, dir: Direction = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        """Whether hooks are registered here (in ``dir``, at context ``level`` if given)."""
        _check_dir(dir, ("fwd", "bwd", "both"))
        handles = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for h in handles
        )

    def clear_context(self) -> None:
        """Empty ``ctx``."""
        self.ctx = {}

    def layer(self) -> int:
        """The block index in this point's name (``blocks.3.attn.hook_z`` -> 3)."""
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block")
        return int(parts[1])

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}", f"[{', '.join(self.shape)}]"]
        if self.fwd_hooks:
            bits.append(f"{len(self.fwd_hooks)} fwd")
        if self.bwd_hooks:
            bits.append(f"{len(self.bwd_hooks)} bwd")
        return f"RemoteHookPoint({', '.join(bits)})"


class RemoteHooks:
    """TransformerLens's ``HookedRootModule`` hook management for a model without modules.

    The host sets ``hook_names`` (forward order), ``_hook_shapes`` and ``allow_code``.
    """

    hook_names: list[str]
    _hook_shapes: dict[str, tuple[str, ...]]
    allow_code: bool
    context_level: int = 0

    @property
    def hook_dict(self) -> dict[str, RemoteHookPoint]:
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

    def hook_points(self) -> list[RemoteHookPoint]:
        """All hook points, in forward order."""
        return list(self.hook_dict.values())

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
        _check_dir(dir, ("fwd", "bwd"))
        points = self._points(name)
        op = as_hook_op(hook, self._code_allowed())  # checked once, even when the filter selects nothing
        for point in points:
            self.check_hooks_to_add(
                point, point.name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend
            )
            point._register(RemoteLensHandle(op, is_permanent, level, hook), dir, prepend)

    def check_and_add_hook(
        self,
        hook_point: RemoteHookPoint,
        hook_point_name: str,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Run :meth:`check_hooks_to_add`, then register the hook at the point (TransformerLens's API)."""
        self.check_hooks_to_add(
            hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend
        )
        hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def check_hooks_to_add(
        self,
        hook_point: RemoteHookPoint,
        hook_point_name: str,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Override to refuse some hooks (raise); the default accepts every hook."""

    def add_perma_hook(self, name: HookTarget, hook: Any, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """Register a hook that survives ``reset_hooks()``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(
        self, direction: Direction = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove the registered hooks (permanent ones only when asked; one context level if given)."""
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """Empty every hook point's ``ctx``."""
        for point in self.hook_dict.values():
            point.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove registered hooks (not permanent ones unless asked) and clear the contexts."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[HookTarget, Any]] = (),
        bwd_hooks: Sequence[tuple[HookTarget, Any]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[Any]:
        """Context manager: the hooks apply to every run inside the block and are removed after it."""
        self.context_level += 1
        level = self.context_level
        try:
            for name, fn in fwd_hooks:
                self.add_hook(name, fn, dir="fwd", level=level)
            for name, fn in bwd_hooks:
                self.add_hook(name, fn, dir="bwd", level=level)
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            self.context_level -= 1

    def list_hooks(
        self, name_filter: NamesFilter = None, dir: Direction = "both", including_permanent: bool = True
    ) -> dict[str, list[RemoteLensHandle]]:
        """Registered hooks by hook point name (points without hooks are left out)."""
        _check_dir(dir, ("fwd", "bwd", "both"))
        if name_filter is None or callable(name_filter):
            accept = name_filter or (lambda _: True)
        else:
            wanted = {name_filter} if isinstance(name_filter, str) else set(name_filter)
            accept = wanted.__contains__
        out: dict[str, list[RemoteLensHandle]] = {}
        for name, point in self.hook_dict.items():
            if not accept(name):
                continue
            handles = (point.fwd_hooks if dir != "bwd" else []) + (point.bwd_hooks if dir != "fwd" else [])
            handles = [h for h in handles if including_permanent or not h.is_permanent]
            if handles:
                out[name] = handles
        return out

    def _registered_hooks(self, dir: Literal["fwd", "bwd"] = "fwd") -> list[tuple[str, HookOp]]:
        """``(hook name, op)`` of every registered hook in ``dir``: points in forward order, each
        point's hooks in the order they run there."""
        return [
            (name, handle.hook)
            for name, point in self.hook_dict.items()
            for handle in (point.fwd_hooks if dir == "fwd" else point.bwd_hooks)
        ]
