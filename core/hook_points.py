"""Hook points and the module that manages them (TransformerLens's HookPoint/HookedRootModule API).

A :class:`HookPoint` is an identity module placed on every activation; its name is its
module path, set once by :meth:`HookedRootModule.setup`, so hook names cannot drift from
the module tree. A hook point with no hook costs one attribute check: components look
at :attr:`HookPoint.active` before deciding, e.g., whether attention may use the fused
kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from telelens.lens.hook_management import (
    Direction,
    HookPointHooks,
    LensHandle,
    NamesFilter,
)

if TYPE_CHECKING:
    from telelens.core.hooked_root_module import HookedRootModule as HookedRootModule

__all__ = ["Direction", "HookFunction", "HookPoint", "LensHandle", "NamesFilter", "resolve_names_filter"]

HookFunction = Callable[..., Any]
"""``fn(tensor, *, hook: HookPoint) -> tensor | None``."""


class HookPoint(HookPointHooks[RemovableHandle], nn.Module):
    """Identity module that gives a name (and a place for hooks) to one activation.

    Its hooks are torch module hooks; the rules for listing and removing them are the shared
    :class:`~telelens.lens.hook_management.HookPointHooks`'.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fwd_hooks: list[LensHandle[RemovableHandle]] = []
        self.bwd_hooks: list[LensHandle[RemovableHandle]] = []
        self.ctx: dict[Any, Any] = {}
        self.name: str | None = None

    def __repr__(self) -> str:
        bits = [f"name={self.name!r}"] if self.name is not None else []
        return f"HookPoint({', '.join(bits + self._hook_counts())})"

    @property
    def active(self) -> bool:
        """True when a forward hook listens here (the component must produce this activation)."""
        return bool(self._forward_hooks)

    def _attach(self, hook: HookFunction, dir: Literal["fwd", "bwd"], prepend: bool) -> RemovableHandle:
        """Wrap ``hook`` as a torch forward or full backward hook on this module."""
        if dir == "fwd":

            def full_fwd(module: nn.Module, inputs: Any, output: torch.Tensor) -> Any:
                return hook(output, hook=self)

            full_fwd.__name__ = _hook_label(hook)
            return self.register_forward_hook(full_fwd, prepend=prepend)

        def full_bwd(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
            out = hook(grad_output[0], hook=self)
            return None if out is None else (out if isinstance(out, tuple) else (out,))

        full_bwd.__name__ = _hook_label(hook)
        return self.register_full_backward_hook(full_bwd, prepend=prepend)

    def _detach(self, handle: LensHandle[RemovableHandle]) -> None:
        handle.hook.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


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
