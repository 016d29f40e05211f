"""``generic_activation_patch``: TransformerLens's patching entry point, on the one sweep runner.

Run the model on corrupted tokens, replace one slice of one activation (a "cell": a layer,
maybe a position, a head, ...) with its value from a clean run, and record
``patching_metric(logits)``, for every cell of the axes given (or of an explicit table).

Unlike TransformerLens, pandas is optional: the cells are enumerated with
``itertools.product``; ``index_df`` may be a pandas DataFrame, a 2-D tensor or array, or a
list of index tuples (columns = axes, layer first).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

from telelens.core.sweeps.engine import SweepOptions
from telelens.core.sweeps.metric import LogitPositions
from telelens.core.sweeps.runner import Method, run_cells
from telelens.core.sweeps.setters import PatchSetter, site_of
from telelens.core.sweeps.sites import PatchSite
from telelens.lens.utils import get_act_name

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
AXIS_NAMES: tuple[str, ...] = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")

PatchingMetric = Callable[[torch.Tensor], torch.Tensor | float]
"""``metric(logits [batch, pos, d_vocab_out]) -> scalar``."""
IndexTable = Any
"""A pandas DataFrame, a 2-D tensor/array, or a list of index tuples: one row per cell."""


# Hook points whose head axis counts key/value heads (fewer than query heads under GQA).
_KV_HEAD_SUFFIXES = (".hook_k", ".hook_v", ".hook_rot_k", ".hook_k_input", ".hook_v_input")


# ---------------------------------------------------------------------------- cells
def _n_heads_for(model: HookedTransformer, activation_name: str) -> int:
    """Size of the head axis of ``activation_name``: key/value heads for K and V under GQA."""
    if get_act_name(activation_name, 0).endswith(_KV_HEAD_SUFFIXES):
        return int(model.cfg.n_key_value_heads or model.cfg.n_heads)
    return model.cfg.n_heads


def _axis_sizes(
    model: HookedTransformer, corrupted_tokens: torch.Tensor, activation_name: str, axes: Sequence[str]
) -> list[int]:
    n_pos = int(corrupted_tokens.shape[-1])
    n_heads = _n_heads_for(model, activation_name)
    size = {"layer": model.cfg.n_layers, "pos": n_pos, "src_pos": n_pos, "dest_pos": n_pos}
    size["head_index"] = size["head"] = n_heads
    unknown = [a for a in axes if a not in size]
    if unknown:
        raise ValueError(f"unknown index axis name(s) {unknown}; valid names: {list(AXIS_NAMES)}")
    return [size[a] for a in axes]


def _rows_of(index_df: IndexTable) -> list[list[int]]:
    """Rows of an index table as lists of ints (pandas is used only if the caller passed a DataFrame)."""
    if hasattr(index_df, "itertuples"):  # a pandas DataFrame
        return [[int(v) for v in row] for row in index_df.itertuples(index=False, name=None)]
    table = torch.as_tensor(index_df)
    if table.dim() != 2:
        raise ValueError(
            f"index_df must be 2-D (one row per cell, layer first), got shape {tuple(table.shape)}"
        )
    return table.long().tolist()


def _index_table(rows: list[list[int]], axes: Sequence[str]) -> IndexTable:
    """The cells as TransformerLens returns them: a DataFrame when pandas is installed, else a LongTensor."""
    try:
        import pandas as pd
    except ImportError:
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), len(axes))
    return pd.DataFrame(rows, columns=list(axes))


# ---------------------------------------------------------------------------- generic patch
def generic_activation_patch(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    patching_metric: PatchingMetric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisNames] | None = None,
    index_df: IndexTable | None = None,
    return_index_df: bool = False,
    *,
    method: Method = "auto",
    logit_positions: LogitPositions = "auto",
    memory_budget: int | None = None,
    progress: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, IndexTable]:
    """Patch each cell of one activation from the clean run into the corrupted run; return the metric.

    Args:
        model: The model.
        corrupted_tokens: Tokens of the corrupted run, [batch, pos].
        clean_cache: Activations of the clean run (an ActivationCache or a dict of hook name ->
            tensor, with the batch dimension), indexed by full hook name.
        patching_metric: Logits [batch, pos, d_vocab_out] -> scalar (a tensor or a float).
        patch_setter: ``setter(corrupted_activation, index, clean_activation)`` writes the clean
            slice named by ``index`` into the (already cloned) corrupted activation and returns it.
        activation_name: Short activation name (``"resid_pre"``, ``"z"``, ``"k"``, ``"pattern"``, ...);
            the hook is ``get_act_name(activation_name, layer)``.
        index_axis_names: Axes to iterate over completely, layer first (``"layer"``, ``"pos"``,
            ``"head_index"``/``"head"``, ``"src_pos"``, ``"dest_pos"``). The head axis of K/V counts
            key/value heads.
        index_df: Explicit cells instead (pandas DataFrame, 2-D tensor/array or list of tuples,
            layer first); the output is then flat, one value per row. Give this or
            ``index_axis_names``, not both.
        return_index_df: Also return the cells (the ``index_df`` passed in; otherwise a pandas
            DataFrame if pandas is installed, else a LongTensor [n_cells, n_axes]).
        method: ``"auto"`` (the batched engine, or the plain loop where it cannot run),
            ``"fast"`` (the engine or an error), ``"naive"`` (one forward pass per cell).
        logit_positions: Engine only: the positions of the logits the metric reads
            (``"auto"``: found by probing the metric; ``"all"``; or a list).
        memory_budget: Engine only: bytes one block of patched variants may use.
        progress: Show a progress bar (updated per block of cells).

    Returns:
        The metric for each cell, shaped like the axes (e.g. [n_layers, pos]) or [n_cells] with
        ``index_df``; with ``return_index_df`` a tuple (metric, cells).
    """
    if (index_df is None) == (index_axis_names is None):
        raise ValueError("pass exactly one of index_axis_names and index_df")
    if index_df is None:
        assert index_axis_names is not None
        sizes = _axis_sizes(model, corrupted_tokens, activation_name, index_axis_names)
        rows = [list(r) for r in itertools.product(*(range(s) for s in sizes))]
        out_shape: list[int] = sizes
    else:
        rows = _rows_of(index_df)
        out_shape = [len(rows)]

    sites = []
    custom = None  # a setter the engine cannot read: it gets the raw index
    for index in rows:
        site = site_of(patch_setter, index)
        if site is None:
            site, custom = PatchSite(int(index[0]), (), raw=tuple(int(i) for i in index)), patch_setter
        sites.append(site)
    options = SweepOptions(logit_positions=logit_positions, memory_budget=memory_budget)
    with tqdm(total=len(sites), disable=not progress) as bar:
        flat = run_cells(
            model, corrupted_tokens, lambda layer: get_act_name(activation_name, layer), sites,
            lambda name: clean_cache[name], patching_metric,
            setter=custom, method=method, options=options, progress=bar.update,
        )  # fmt: skip
    result = flat.to(model.cfg.device).reshape(out_shape)

    if return_index_df:
        table = index_df if index_df is not None else _index_table(rows, list(index_axis_names or ()))
        return result, table
    return result
