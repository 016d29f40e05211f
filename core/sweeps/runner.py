"""The one sweep runner: the cells of a patching sweep, on the batched engine or one pass per cell.

Both front ends call it: TransformerLens's patching helpers (:mod:`telelens.core.patching`)
and the graph's ``Sweep`` node (:mod:`telelens.core.graph.sweep`). Each cell is a
:class:`~telelens.core.sweeps.sites.PatchSite`: copy the clean activation into the
corrupted run at one layer and index. :func:`~telelens.core.sweeps.engine.sweep_sites`
runs the cells on the batched engine; :func:`run_naive` is the reference, one full forward
pass of the corrupted tokens per cell; :func:`run_cells` picks one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from telelens.core.sweeps.engine import CleanSource, SweepOptions, sweep_sites
from telelens.core.sweeps.metric import Metric
from telelens.core.sweeps.setters import PatchSetter
from telelens.core.sweeps.sites import PatchSite, SweepUnsupported, hook_index

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

Method = Literal["auto", "fast", "naive"]
"""``"auto"``: the engine, or one pass per cell where it cannot run; ``"fast"``: the engine or
:class:`SweepUnsupported`; ``"naive"``: one pass per cell."""
Progress = Callable[[int], Any]
"""Called with the number of cells just finished."""


def run_cells(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hook_of: Callable[[int], str],
    sites: Sequence[PatchSite],
    clean: CleanSource,
    metric: Metric,
    *,
    attention_mask: torch.Tensor | None = None,
    setter: PatchSetter | None = None,
    method: Method = "auto",
    options: SweepOptions | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """The metric of every patched variant: float32 [len(sites)].

    Args:
        model: The model.
        tokens: Corrupted tokens [batch, pos].
        hook_of: Layer -> the hook patched at that layer.
        sites: The cells.
        clean: Hook name -> the clean run's activation there (with the batch dim).
        metric: Logits [batch, pos, d_vocab_out] -> scalar.
        attention_mask: The corrupted run's mask ([batch, pos]).
        setter: A patch setter the engine cannot read, called with ``site.raw`` for each cell.
        method: See :data:`Method`.
        options: The engine's knobs.
        progress: See :data:`Progress`.
    """
    if method not in ("auto", "fast", "naive"):
        raise ValueError(f"method must be 'auto', 'fast' or 'naive', got {method!r}")
    if method != "naive":
        try:
            return sweep_sites(  # on the unembed's device; raises SweepUnsupported before any pass
                model, tokens, hook_of, sites, clean, metric,
                attention_mask=attention_mask, setter=setter, options=options, progress=progress,
            )  # fmt: skip
        except SweepUnsupported:
            if method == "fast":
                raise
    return run_naive(
        model, tokens, hook_of, sites, clean, metric,
        attention_mask=attention_mask, setter=setter, progress=progress,
    )  # fmt: skip


def run_naive(
    model: HookedTransformer,
    tokens: torch.Tensor,
    hook_of: Callable[[int], str],
    sites: Sequence[PatchSite],
    clean: CleanSource,
    metric: Metric,
    *,
    attention_mask: torch.Tensor | None = None,
    setter: PatchSetter | None = None,
    progress: Progress | None = None,
) -> torch.Tensor:
    """One full forward pass of the corrupted tokens per cell: the reference implementation."""
    values: list[float] = []
    with torch.inference_mode():
        for site in sites:
            name = hook_of(site.layer)
            patch = _patch_hook(name, site, clean(name), setter)
            with model.hooks(fwd_hooks=[(name, patch)]):
                logits = model(tokens, attention_mask=attention_mask)
            values.append(float(metric(logits)))
            if progress is not None:
                progress(1)
    return torch.tensor(values, dtype=torch.float32, device=model.W_E.device)


def _patch_hook(
    name: str, site: PatchSite, src: torch.Tensor, setter: PatchSetter | None
) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """A hook writing ``site``'s slice of the clean activation ``src`` into the corrupted one."""
    index = None if setter is not None else hook_index(name, site.index, 0)

    def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # Clone: the hooked tensor may be a view into a buffer the model still reads (e.g. the fused QKV output).
        act = act.clone()
        if setter is not None:
            assert site.raw is not None
            return setter(act, list(site.raw), src.to(act.device))
        act[index] = src[index].to(act.device, act.dtype)
        return act

    return patch
