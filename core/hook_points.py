"""Hook points and the module that manages them (TransformerLens's HookPoint/HookedRootModule API).

A :class:`HookPoint` is an identity module placed on every activation; its name is its
module path, set once by :meth:`HookedRootModule.setup`, so hook names cannot drift from
the module tree. A hook point with no hook costs one attribute check: components look
at :attr:`HookPoint.active` before deciding, e.g., whether attention may use the fused
kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from telelens.core.hooked_root_module import HookedRootModule as HookedRootModule

HookFunction = Callable[..., Any]
"""``fn(tensor, *, hook: HookPoint) -> tensor | None``."""
NamesFilter = Callable[[str], bool] | Sequence[str] | str | None
Direction = Literal["fwd", "bwd", "both"]


@dataclass
class LensHandle:
    """A registered hook: its torch handle, whether it survives ``reset_hooks``, and its context level."""

    hook: RemovableHandle
    """The torch handle (``hook.remove()`` detaches it)."""
    is_permanent: bool = False
    """Whether ``reset_hooks()`` keeps it (unless asked to remove permanent hooks)."""
    context_level: int | None = None
    """The ``hooks()`` context level that added it (None outside any context)."""
    user_hook: Callable[..., Any] | None = None
    """The hook function as given to ``add_hook``, before it is wrapped for torch."""


class HookPoint(nn.Module):
    """Identity module that gives a name (and a place for hooks) to one activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict[Any, Any] = {}
        self.name: str | None = None

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}"] if self.name is not None else []
        if self.fwd_hooks:
            bits.append(f"{len(self.fwd_hooks)} fwd")
        if self.bwd_hooks:
            bits.append(f"{len(self.bwd_hooks)} bwd")
        return f"HookPoint({', '.join(bits)})"

    @property
    def active(self) -> bool:
        """True when a forward hook listens here (the component must produce this activation)."""
        return bool(self._forward_hooks)

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> None:
        """Add a hook that ``reset_hooks`` keeps unless asked to remove permanent hooks."""
        self.add_hook(hook, dir=dir, is_permanent=True)

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Register ``hook(tensor, hook=self)``; a returned tensor replaces the activation.

        ``prepend=True`` makes it fire before the hooks already here; ``fwd_hooks`` /
        ``bwd_hooks`` list the handles in firing order either way.
        """
        if dir == "fwd":

            def full_fwd(module: nn.Module, inputs: Any, output: torch.Tensor) -> Any:
                return hook(output, hook=self)

            full_fwd.__name__ = _hook_label(hook)
            handle = self.register_forward_hook(full_fwd, prepend=prepend)
            handles = self.fwd_hooks
        elif dir == "bwd":

            def full_bwd(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
                out = hook(grad_output[0], hook=self)
                return None if out is None else (out if isinstance(out, tuple) else (out,))

            full_bwd.__name__ = _hook_label(hook)
            handle = self.register_full_backward_hook(full_bwd, prepend=prepend)
            handles = self.bwd_hooks
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        lens_handle = LensHandle(handle, is_permanent, level, user_hook=hook)
        handles.insert(0, lens_handle) if prepend else handles.append(lens_handle)

    def has_hooks(
        self, dir: Direction = "both", including_permanent: bool = True, level: int | None = None
    ) -> bool:
        """Whether any hook matches: in direction ``dir``, permanent ones counted unless excluded,
        only those of context ``level`` when given."""
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"Invalid direction {dir}")
        handles = (self.fwd_hooks if dir != "bwd" else []) + (self.bwd_hooks if dir != "fwd" else [])
        return any(
            (including_permanent or not h.is_permanent) and (level is None or h.context_level == level)
            for h in handles
        )

    def remove_hooks(
        self, dir: Direction = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove this point's hooks in one direction (permanent ones only when asked)."""

        def keep(handles: list[LensHandle]) -> list[LensHandle]:
            kept = []
            for h in handles:
                # As in TransformerLens: including_permanent removes every hook, whatever its level.
                if including_permanent or (
                    not h.is_permanent and (level is None or h.context_level == level)
                ):
                    h.hook.remove()
                else:
                    kept.append(h)
            return kept

        if dir in ("fwd", "both"):
            self.fwd_hooks = keep(self.fwd_hooks)
        if dir in ("bwd", "both"):
            self.bwd_hooks = keep(self.bwd_hooks)
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")

    def clear_context(self) -> None:
        """Empty the scratch dict hooks can use to pass values between calls."""
        self.ctx = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def layer(self) -> int:
        """The block index in this point's name (``blocks.3.attn.hook_z`` -> 3)."""
        if self.name is None:
            raise ValueError("this hook point has no name yet")
        parts = self.name.split(".")
        if len(parts) < 2 or parts[0] != "blocks":
            raise ValueError(f"{self.name} is not inside a block")
        return int(parts[1])


def _hook_label(hook: HookFunction) -> str:
    """The name torch shows for a wrapped hook (a partial's repr can be huge: name its function)."""
    if isinstance(hook, partial):
        return f"partial({hook.func!r},...)"
    return repr(hook)


def resolve_names_filter(names_filter: NamesFilter) -> Callable[[str], bool]:
    """Turn a TransformerLens names filter (None, str, list of str, callable) into a predicate."""
    if names_filter is None:
        return lambda name: True
    if isinstance(names_filter, str):
        wanted = names_filter
        return lambda name: name == wanted
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, Sequence):
        wanted_set = set(names_filter)
        if not all(isinstance(n, str) for n in wanted_set):
            raise TypeError("names_filter list must hold hook names (str)")
        return lambda name: name in wanted_set
    raise TypeError(
        f"names_filter must be None, a str, a list of str or a callable, got {type(names_filter)}"
    )


def __getattr__(name: str) -> Any:
    # HookedRootModule lives in its own module (as in TransformerLens 3.9); this keeps
    # ``from telelens.core.hook_points import HookedRootModule`` working without an import cycle.
    if name == "HookedRootModule":
        from telelens.core.hooked_root_module import HookedRootModule

        return HookedRootModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
