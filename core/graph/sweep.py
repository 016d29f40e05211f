"""Sweep nodes: the grid's geometry, and the plain one-forward-pass-per-cell execution.

Conventions follow ``telelens.core.patching`` (TransformerLens's patching helpers): every
cell copies the clean activation into the corrupted run at one layer, and at one position
and/or head when those axes are swept, for every batch row; the grid is shaped by the axes
in order ``layer, pos, head``. For attention patterns and scores ``pos`` is the destination
(query) position.

:func:`run_sweep` hands the cells to the sweep runner (:mod:`telelens.core.sweeps.runner`,
shared with TransformerLens's patching helpers): the batched engine (many patched variants
per forward pass, resumed from the corrupted run, the metric sub-graph evaluated per variant
here on the worker, only the grid returned), or one full forward pass per cell where the
engine cannot run.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from telelens.core.graph.hooks import HookTable, hook_dims, hook_error
from telelens.core.sweeps import PatchSite
from telelens.core.sweeps.runner import Method, run_cells
from telelens.lens.utils import get_act_name
from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

SWEEP_AXES = ("layer", "pos", "head")


@dataclass(frozen=True)
class SweepGeometry:
    """Where each cell of a sweep patches: hook per layer, axes and their sizes, the swept dims."""

    hooks: tuple[str, ...]
    axes: tuple[str, ...]
    sizes: tuple[int, ...]
    n_dims: int
    pos_dim: int | None
    head_dim: int | None

    @property
    def n_cells(self) -> int:
        return math.prod(self.sizes)

    def cells(self) -> Iterator[tuple[int, ...]]:
        return itertools.product(*(range(s) for s in self.sizes))

    def site(self, cell: tuple[int, ...]) -> PatchSite:
        """A cell as the engine's patch site (an index over the dims after the batch dim)."""
        layer, where = self.where(cell)
        return PatchSite(layer, tuple(i if isinstance(i, int) else None for i in where[1:]))

    def where(self, cell: tuple[int, ...]) -> tuple[int, tuple[Any, ...]]:
        """A cell -> (layer, index into that layer's activation [batch, ...])."""
        index: list[Any] = [slice(None)] * self.n_dims
        layer = cell[0]
        for axis, i in zip(self.axes[1:], cell[1:]):
            index[self.pos_dim if axis == "pos" else self.head_dim] = i  # type: ignore[index]
        return layer, tuple(index)


def sweep_geometry(
    model: HookedTransformer, table: HookTable, sweep: ir.Sweep, pos: int
) -> SweepGeometry | tuple[str, str]:
    """The geometry of a sweep over runs of ``pos`` positions, or ``(field, reason)`` if it has none."""
    axes = tuple(sweep.axes)
    if not axes or axes[0] != "layer":
        return (
            "axes",
            f"axes must start with 'layer' (a subset of {list(SWEEP_AXES)} in that order), got {list(axes)}",
        )
    if (
        any(a not in SWEEP_AXES for a in axes)
        or list(axes) != sorted(axes, key=SWEEP_AXES.index)
        or len(set(axes)) != len(axes)
    ):
        return "axes", f"axes must be a subset of {list(SWEEP_AXES)} in that order, got {list(axes)}"
    hooks = []
    for layer in range(model.cfg.n_layers):
        try:
            name = get_act_name(sweep.activation, layer)
        except Exception:
            return (
                "activation",
                f"{sweep.activation!r} is not an activation short name (like 'resid_pre' or 'z')",
            )
        reason = hook_error(model, table, name)
        if reason:
            return "activation", f"{sweep.activation!r} at layer {layer}: {reason}"
        hooks.append(name)
    dims = hook_dims(hooks[0])
    pos_dim = next((i for i, d in enumerate(dims) if d in ("pos", "query_pos")), None)
    head_dim = next((i for i, d in enumerate(dims) if d in ("head_index", "kv_head_index")), None)
    sizes = [model.cfg.n_layers]
    if "pos" in axes:
        if pos_dim is None:
            return "axes", f"{hooks[0]} has no position dimension to sweep"
        sizes.append(pos)
    if "head" in axes:
        if head_dim is None:
            return "axes", f"{hooks[0]} has no head dimension to sweep"
        heads = model.cfg.n_heads if dims[head_dim] == "head_index" else int(model.cfg.n_key_value_heads or 0)
        sizes.append(heads)
    return SweepGeometry(tuple(hooks), axes, tuple(sizes), len(dims), pos_dim, head_dim)


def run_sweep(
    model: HookedTransformer,
    geometry: SweepGeometry,
    clean: dict[int, torch.Tensor],
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None,
    metric: Callable[[torch.Tensor], torch.Tensor],
    on_cell: Callable[[], None] = lambda: None,
    method: Method = "auto",
) -> torch.Tensor:
    """The metric grid (float32, shaped by the axes), on the sweep runner (the batched engine where
    it can run, else one forward pass per cell; ``method`` as in :data:`~telelens.core.sweeps.runner.Method`).

    ``clean[layer]`` is the clean run's activation at ``geometry.hooks[layer]``. ``on_cell``
    is called once per cell, in bursts as each block of cells finishes.
    """
    by_hook = {geometry.hooks[layer]: act for layer, act in clean.items()}
    sites = [geometry.site(cell) for cell in geometry.cells()]

    def done(n: int) -> None:
        for _ in range(n):
            on_cell()

    flat = run_cells(
        model, tokens, geometry.hooks.__getitem__, sites, by_hook.__getitem__, metric,
        attention_mask=attention_mask, method=method, progress=done,
    )  # fmt: skip
    return flat.to(model.W_E.device).reshape(geometry.sizes)
