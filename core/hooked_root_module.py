"""The root module of a hooked model: its hook points by name, hooks, and caching runs.

TransformerLens 3.9's ``HookedRootModule`` API (``add_hook``, ``hooks``, ``run_with_hooks``,
``run_with_cache``, ``get_caching_hooks``, ``list_hooks``, ...). The hook points themselves
are in :mod:`telelens.core.hook_points`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from telelens.core.hook_points import (
    Direction,
    HookFunction,
    HookPoint,
    NamesFilter,
    resolve_names_filter,
)
from telelens.lens.hook_management import RootHooks

logger = logging.getLogger(__name__)


class HookedRootModule(RootHooks[HookPoint], nn.Module):
    """Root module that knows its hook points by name and runs with hooks or a cache.

    Hook management (``list_hooks``, ``reset_hooks``, ``hooks()``, ...) is the shared
    :class:`~telelens.lens.hook_management.RootHooks`; this class adds the module tree and caching.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__()
        self.mod_dict: dict[str, nn.Module] = {}
        self.hook_dict: dict[str, HookPoint] = {}
        self.context_level = 0
        self.is_caching = False

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
            self.check_and_add_hook(hp, name, hook, dir, is_permanent, level, prepend)
        else:
            for hook_name, hp in self.hook_dict.items():
                if name(hook_name) and not self.disabled_hook_reason(hook_name):
                    self.check_and_add_hook(hp, hook_name, hook, dir, is_permanent, level, prepend)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks (not permanent ones unless asked) and clear hook contexts; caching stops."""
        super().reset_hooks(clear_contexts, direction, including_permanent, level)
        self.is_caching = False

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

    def add_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Add (removable) caching hooks on the points ``names_filter`` accepts; returns the cache
        they fill on every forward pass (the model is not run)."""
        cache, fwd, bwd = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim, cache)
        for name, fn in fwd:
            self.add_hook(name, fn, dir="fwd")
        for name, fn in bwd:
            self.add_hook(name, fn, dir="bwd")
        self.is_caching = True
        return cache

    def cache_all(
        self,
        cache: dict[str, torch.Tensor] | None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> None:
        """Deprecated in TransformerLens: :meth:`add_caching_hooks` on every point."""
        self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(
        self,
        cache: dict[str, torch.Tensor] | None,
        names: NamesFilter,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> None:
        """Deprecated in TransformerLens: :meth:`add_caching_hooks` on the points ``names`` accepts."""
        self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)


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
