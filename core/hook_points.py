"""Hook points and the module that manages them (TransformerLens's HookPoint/HookedRootModule API).

A :class:`HookPoint` is an identity module placed on every activation; its name is its
module path, set once by :meth:`HookedRootModule.setup`, so hook names cannot drift from
the module tree. A hook point with no hook costs one attribute check: components look
at :attr:`HookPoint.active` before deciding, e.g., whether attention may use the fused
kernel.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

logger = logging.getLogger(__name__)

HookFunction = Callable[..., Any]
"""``fn(tensor, *, hook: HookPoint) -> tensor | None``."""
NamesFilter = Callable[[str], bool] | Sequence[str] | str | None
Direction = Literal["fwd", "bwd", "both"]


@dataclass
class LensHandle:
    """A registered hook: its torch handle, whether it survives ``reset_hooks``, and its context level."""

    hook: RemovableHandle
    is_permanent: bool = False
    context_level: int | None = None


class HookPoint(nn.Module):
    """Identity module that gives a name (and a place for hooks) to one activation."""

    def __init__(self) -> None:
        super().__init__()
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []
        self.ctx: dict[Any, Any] = {}
        self.name: str | None = None

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
        """Register ``hook(tensor, hook=self)``; a returned tensor replaces the activation."""
        if dir == "fwd":

            def full_fwd(module: nn.Module, inputs: Any, output: torch.Tensor) -> Any:
                return hook(output, hook=self)

            full_fwd.__name__ = getattr(hook, "__name__", repr(hook))
            handle = self.register_forward_hook(full_fwd, prepend=prepend)
            self.fwd_hooks.append(LensHandle(handle, is_permanent, level))
        elif dir == "bwd":

            def full_bwd(module: nn.Module, grad_input: Any, grad_output: Any) -> Any:
                out = hook(grad_output[0], hook=self)
                return None if out is None else (out,)

            full_bwd.__name__ = getattr(hook, "__name__", repr(hook))
            handle = self.register_full_backward_hook(full_bwd)
            self.bwd_hooks.append(LensHandle(handle, is_permanent, level))
        else:
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")

    def remove_hooks(
        self, dir: Direction = "fwd", including_permanent: bool = False, level: int | None = None
    ) -> None:
        """Remove this point's hooks in one direction (permanent ones only when asked)."""

        def keep(handles: list[LensHandle]) -> list[LensHandle]:
            kept = []
            for h in handles:
                if (including_permanent or not h.is_permanent) and (
                    level is None or h.context_level == level
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


class HookedRootModule(nn.Module):
    """Root module that knows its hook points by name and runs with hooks or a cache."""

    def __init__(self) -> None:
        super().__init__()
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}
        self.context_level = 0

    def setup(self) -> None:
        """Name every hook point after its module path and index them. Call at the end of __init__."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        """All hook points, in module order."""
        return list(self.hook_dict.values())

    def _check_hook_name(self, name: str) -> HookPoint:
        try:
            return self.hook_dict[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self.hook_dict), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"unknown hook point {name!r}{hint}") from None

    def disabled_hook_reason(self, name: str) -> str | None:
        """Why the hook point ``name`` never fires under the current settings (None if it does)."""
        return None

    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Add ``hook`` to the hook point ``name`` (or to every point a filter callable accepts)."""
        if isinstance(name, str):
            hp = self._check_hook_name(name)
            reason = self.disabled_hook_reason(name)
            if reason:
                raise ValueError(f"hook point {name!r} never fires: {reason}")
            hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)
        else:
            for hook_name, hp in self.hook_dict.items():
                if name(hook_name) and not self.disabled_hook_reason(hook_name):
                    hp.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd"
    ) -> None:
        """Add a hook that survives ``reset_hooks()``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(
        self, direction: Direction = "both", including_permanent: bool = False, level: int | None = None
    ) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

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
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Context manager: the hooks are active inside the block and removed after it."""
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

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model with temporary hooks; ``fwd_hooks=[(name_or_filter, fn), ...]``."""
        if bwd_hooks and reset_hooks_end:
            logger.warning(
                "bwd_hooks with reset_hooks_end=True are removed before you can call backward(); "
                "pass reset_hooks_end=False and call reset_hooks() yourself"
            )
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict[str, torch.Tensor], list[tuple[str, HookFunction]], list[tuple[str, HookFunction]]]:
        """Hooks that store activations (detached, optionally moved) into ``cache``."""
        cache = {} if cache is None else cache
        accept = resolve_names_filter(names_filter)
        explicit = [names_filter] if isinstance(names_filter, str) else names_filter
        if isinstance(explicit, (list, tuple)):
            for n in explicit:
                self._check_hook_name(n)
                reason = self.disabled_hook_reason(n)
                if reason:
                    raise ValueError(f"hook point {n!r} never fires: {reason}")

        def save(tensor: torch.Tensor, hook: HookPoint, is_backward: bool) -> None:
            assert hook.name is not None
            name = hook.name + ("_grad" if is_backward else "")
            t = tensor.detach()
            if device is not None:
                t = t.to(device)
            if remove_batch_dim:
                t = t[0]
            if pos_slice is not None:
                t = _apply_pos_slice(t, hook.name, pos_slice, remove_batch_dim)
            cache[name] = t

        fwd, bwd = [], []
        for name in self.hook_dict:
            if accept(name) and not self.disabled_hook_reason(name):
                fwd.append((name, lambda t, hook: save(t, hook, False)))
                if incl_bwd:
                    bwd.append((name, lambda t, hook: save(t, hook, True)))
        return cache, fwd, bwd

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return ``(output, cache)`` holding the activations ``names_filter`` accepts."""
        cache_dict, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim=remove_batch_dim, pos_slice=pos_slice
        )
        with self.hooks(fwd, bwd, reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts):
            out = self(*model_args, **model_kwargs)
            if incl_bwd:
                out.backward()
        if return_cache_object:
            return out, self._make_cache(cache_dict, has_batch_dim=not remove_batch_dim)
        return out, cache_dict

    def _make_cache(self, cache_dict: dict[str, torch.Tensor], has_batch_dim: bool) -> Any:
        """Wrap a cache dict; the transformer returns an ActivationCache."""
        return cache_dict

    def cache_all(self, cache: dict[str, torch.Tensor], incl_bwd: bool = False, device: Any = None) -> None:
        """Add (removable) caching hooks on every point, filling ``cache`` on every forward."""
        self.cache_some(cache, None, incl_bwd=incl_bwd, device=device)

    def cache_some(
        self, cache: dict[str, torch.Tensor], names: NamesFilter, incl_bwd: bool = False, device: Any = None
    ) -> None:
        """Add caching hooks on the points ``names`` accepts, filling ``cache`` on every forward."""
        _, fwd, bwd = self.get_caching_hooks(names, incl_bwd, device, cache=cache)
        for name, fn in fwd:
            self.add_hook(name, fn, dir="fwd")
        for name, fn in bwd:
            self.add_hook(name, fn, dir="bwd")


def _apply_pos_slice(t: torch.Tensor, name: str, pos_slice: Any, batchless: bool) -> torch.Tensor:
    """Slice the position dimension the way TransformerLens does (patterns/scores: the query dim)."""
    if isinstance(pos_slice, int):
        pos_slice = [pos_slice]
    # Patterns and scores are [batch, head, query_pos, key_pos]: slice the query position.
    is_attn = name.endswith(("hook_pattern", "hook_attn_scores"))
    dim = -2 if is_attn else (0 if batchless else 1)
    idx: list[Any] = [slice(None)] * t.dim()
    idx[dim] = torch.as_tensor(pos_slice) if isinstance(pos_slice, list) else pos_slice
    return t[tuple(idx)]
