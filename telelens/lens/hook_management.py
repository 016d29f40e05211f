"""TransformerLens 3.9's hook management, written once for the local and the remote model.

A hook point keeps its hooks as :class:`LensHandle` lists (``fwd_hooks``, ``bwd_hooks``, in
firing order); a root keeps its hook points in ``hook_dict``. What differs between the two sides
is how a hook is attached and detached: the local :class:`~telelens.core.hook_points.HookPoint`
wraps it as a torch module hook, the remote one stores a graph op that every later run compiles.
Each side therefore writes the root's ``add_hook`` and the point's ``_attach``/``_detach``; the
rules for listing, removing, resetting and scoping hooks are these, TransformerLens's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Direction = Literal["fwd", "bwd", "both"]
HookTarget = str | Callable[[str], bool]
"""A hook point name, or a filter on hook point names."""
NamesFilter = Callable[[str], bool] | Sequence[str] | str | None

H = TypeVar("H")
"""What a handle holds: a torch ``RemovableHandle`` locally, a graph op remotely."""


@dataclass
class LensHandle(Generic[H]):
    """A registered hook (TransformerLens's ``LensHandle`` fields)."""

    hook: H
    """The attached hook: a torch handle locally (``hook.remove()`` detaches it), the op compiled
    into each graph remotely."""
    is_permanent: bool = False
    """Whether ``reset_hooks()`` keeps it (unless asked to remove permanent hooks)."""
    context_level: int | None = None
    """The ``hooks()`` context level that added it (None outside any context)."""
    user_hook: Any = None
    """The hook as given to ``add_hook`` (before it is wrapped for torch or as a code op)."""


def check_direction(dir: str, allowed: tuple[str, ...] = ("fwd", "bwd", "both")) -> None:
    """Raise ``ValueError`` unless ``dir`` is one of ``allowed``."""
    if dir not in allowed:
        raise ValueError(f"Invalid direction {dir!r}: expected one of {allowed}")


class HookPointHooks(Generic[H]):
    """A hook point's hook lists and TransformerLens's rules for them.

    The host sets ``name``, ``fwd_hooks``, ``bwd_hooks`` and ``ctx``, and writes how a hook is
    attached and detached (:meth:`_attach`, :meth:`_detach`).
    """

    name: str | None
    fwd_hooks: list[LensHandle[H]]
    bwd_hooks: list[LensHandle[H]]
    ctx: dict[Any, Any]

    def add_hook(
        self,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Register ``hook``: it is called as ``hook(activation, hook=self)`` (``bwd``: with the
        activation's gradient), and a tensor it returns replaces the activation.

        ``prepend=True`` makes it fire before the hooks already here; ``fwd_hooks`` /
        ``bwd_hooks`` list the handles in firing order either way.
        """
        check_direction(dir, ("fwd", "bwd"))
        attached = self._attach(hook, dir, prepend)
        self._push(LensHandle(attached, is_permanent, level, user_hook=hook), dir, prepend)

    def _attach(self, hook: Any, dir: Literal["fwd", "bwd"], prepend: bool) -> H:
        """Make ``hook`` fire here (first among this point's hooks when ``prepend``); return what
        its handle holds."""
        raise NotImplementedError

    def _detach(self, handle: LensHandle[H]) -> None:
        """Stop ``handle``'s hook from firing (it is being removed from the lists)."""
        raise NotImplementedError

    def _push(self, handle: LensHandle[H], dir: Literal["fwd", "bwd"], prepend: bool) -> None:
        """Put ``handle`` in the list of ``dir``, in firing order (first when ``prepend``)."""
        handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        if prepend:
            handles.insert(0, handle)
        else:
            handles.append(handle)

    def _handles(self, dir: Direction) -> list[LensHandle[H]]:
        return (self.fwd_hooks if dir in ("fwd", "both") else []) + (
            self.bwd_hooks if dir in ("bwd", "both") else []
        )

    def add_perma_hook(self, hook: Any, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """Add a hook that ``reset_hooks`` keeps unless asked to remove permanent hooks."""
        self.add_hook(hook, dir=dir, is_permanent=True)

    def has_hooks(
        self, dir: Direction = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        """Whether any hook matches: in direction ``dir``, permanent ones counted unless excluded,
        only those of context ``level`` when given."""
        check_direction(dir)
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for h in self._handles(dir)
        )

    def remove_hooks(
        self, dir: Direction = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove this point's hooks in one direction: with ``including_permanent`` every hook,
        whatever its level (as in TransformerLens); else the non-permanent ones of ``level``
        (all levels when None)."""
        check_direction(dir)

        def keep(handles: list[LensHandle[H]]) -> list[LensHandle[H]]:
            kept = []
            for h in handles:
                if including_permanent or (
                    not h.is_permanent and (level is None or h.context_level == level)
                ):
                    self._detach(h)
                else:
                    kept.append(h)
            return kept

        if dir in ("fwd", "both"):
            self.fwd_hooks = keep(self.fwd_hooks)
        if dir in ("bwd", "both"):
            self.bwd_hooks = keep(self.bwd_hooks)

    def clear_context(self) -> None:
        """Empty the scratch dict hooks can use to pass values between calls."""
        self.ctx = {}

    def layer(self) -> int:
        """The block index in this point's name (``blocks.3.attn.hook_z`` -> 3)."""
        if self.name is None:
            raise ValueError("this hook point has no name yet")
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block")
        return int(parts[1])

    def _hook_counts(self) -> list[str]:
        """``["2 fwd", "1 bwd"]``-style pieces for ``repr``."""
        return [
            f"{len(handles)} {dir}"
            for dir, handles in (("fwd", self.fwd_hooks), ("bwd", self.bwd_hooks))
            if handles
        ]


def _accept_all(name: str) -> bool:
    return True


P = TypeVar("P", bound=HookPointHooks[Any])
R = TypeVar("R", bound="RootHooks[Any]")


class RootHooks(Generic[P]):
    """TransformerLens's ``HookedRootModule`` hook management over ``hook_dict``.

    The host provides ``hook_dict`` (hook points by name, in forward order) and writes
    ``add_hook`` (name checks, then :meth:`check_and_add_hook` or its own registration).
    """

    hook_dict: dict[str, P]
    """Hook points by name, in forward order (an attribute locally, a property remotely)."""
    context_level: int = 0
    """How many ``hooks()`` contexts are open."""

    def add_hook(
        self,
        name: HookTarget,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Add ``hook`` to the hook point ``name`` (or to every point a filter callable accepts)."""
        raise NotImplementedError

    def hook_points(self) -> list[P]:
        """All hook points, in forward order."""
        return list(self.hook_dict.values())

    def list_hooks(
        self, name_filter: NamesFilter = None, dir: Direction = "both", including_permanent: bool = True
    ) -> dict[str, list[LensHandle[Any]]]:
        """The attached hooks by hook point name (points without hooks are left out)."""
        accept: Callable[[str], bool]
        if name_filter is None:
            accept = _accept_all
        elif callable(name_filter):
            accept = name_filter
        elif isinstance(name_filter, str):
            accept = name_filter.__eq__
        else:
            accept = set(name_filter).__contains__
        out: dict[str, list[LensHandle[Any]]] = {}
        for name, point in self.hook_dict.items():
            if not accept(name):
                continue
            handles = [h for h in point._handles(dir) if including_permanent or not h.is_permanent]
            if handles:
                out[name] = handles
        return out

    def check_and_add_hook(
        self,
        hook_point: P,
        hook_point_name: str,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Run :meth:`check_hooks_to_add`, then add the hook to the point."""
        self.check_hooks_to_add(
            hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend
        )
        hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def check_hooks_to_add(
        self,
        hook_point: P,
        hook_point_name: str,
        hook: Any,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Override to refuse some hooks (raise); the default accepts every hook."""

    def add_perma_hook(self, name: HookTarget, hook: Any, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """Add a hook that survives ``reset_hooks()``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(
        self, direction: Direction = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove the hooks of every point (see :meth:`HookPointHooks.remove_hooks`)."""
        for point in self.hook_dict.values():
            point.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        """Empty every hook point's ``ctx`` dict."""
        for point in self.hook_dict.values():
            point.clear_context()

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks (not permanent ones unless asked) and clear hook contexts."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level=level)

    @contextmanager
    def hooks(
        self: R,
        fwd_hooks: Sequence[tuple[HookTarget, Any]] = (),
        bwd_hooks: Sequence[tuple[HookTarget, Any]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[R]:
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
