"""Activation patching (TransformerLens's ``patching`` module: same names, signatures and shapes).

Run the model on corrupted tokens, replace one slice of one activation (a "cell": a
layer, maybe a position, a head, ...) with its value from a clean run, and record
``patching_metric(logits)``. :func:`generic_activation_patch` does this for every cell
of the axes it is given; the ``get_act_patch_*`` helpers fix the activation, the patch
setter and the axes for the common cases.

Two implementations give the same grids (fp32: within ~1e-6):

- the engine of :mod:`telelens.core.sweeps` (``method="fast"``) runs many patched variants
  per forward pass, each resumed from the corrupted run at the patched layer and position,
  and unembeds only the positions the metric reads;
- ``method="naive"``: one full forward pass per cell, as TransformerLens does.

The default ``method="auto"`` uses the engine and falls back to the loop where the engine
cannot run (hook functions attached to the model, an activation outside the blocks).
See docs/patching.md.

Besides the TransformerLens helpers: :func:`attribution_patch` (the gradient approximation,
one forward and one backward) and :func:`ablation_sweep` (zero/mean ablation of every head or
neuron, batched).

Unlike TransformerLens, pandas is optional: the cells are enumerated with
``itertools.product``; ``index_df`` may be a pandas DataFrame, a 2-D tensor or array, or a
list of index tuples (columns = axes, layer first).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from telelens.core.sweeps import PatchSite, SweepOptions, SweepUnsupported, sweep_sites
from telelens.core.sweeps.ablation import AblationKind, AblationOver, ablation_sweep
from telelens.core.sweeps.attribution import AttributionResult, attribution_patch
from telelens.core.sweeps.metric import LogitPositions
from telelens.lens.utils import get_act_name

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
AXIS_NAMES: tuple[str, ...] = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")

PatchSetter = Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]
"""``setter(corrupted_activation, index, clean_activation) -> patched_activation``."""
PatchingMetric = Callable[[torch.Tensor], torch.Tensor | float]
"""``metric(logits [batch, pos, d_vocab_out]) -> scalar``."""
IndexTable = Any
"""A pandas DataFrame, a 2-D tensor/array, or a list of index tuples: one row per cell."""
Method = Literal["auto", "fast", "naive"]

__all__ = [
    "AblationKind",
    "AblationOver",
    "AttributionResult",
    "ablation_sweep",
    "attribution_patch",
    "generic_activation_patch",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_block_every",
    "get_act_patch_mlp_out",
    "get_act_patch_resid_mid",
    "get_act_patch_resid_pre",
    "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter",
    "layer_head_pos_pattern_patch_setter",
    "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter",
    "layer_pos_patch_setter",
]

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

    if method not in ("auto", "fast", "naive"):
        raise ValueError(f"method must be 'auto', 'fast' or 'naive', got {method!r}")
    result = None
    if method != "naive":
        options = SweepOptions(logit_positions=logit_positions, memory_budget=memory_budget)
        try:
            flat = _fast_patch(
                model, corrupted_tokens, clean_cache, patching_metric, patch_setter, activation_name, rows,
                options, progress,
            )  # fmt: skip
            result = flat.to(model.cfg.device).reshape(out_shape)
        except SweepUnsupported:
            if method == "fast":
                raise
    if result is None:
        result = _naive_patch(
            model,
            corrupted_tokens,
            clean_cache,
            patching_metric,
            patch_setter,
            activation_name,
            rows,
            progress,
        ).reshape(out_shape)

    if return_index_df:
        table = index_df if index_df is not None else _index_table(rows, list(index_axis_names or ()))
        return result, table
    return result


def _naive_patch(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    patching_metric: PatchingMetric,
    patch_setter: PatchSetter,
    activation_name: str,
    rows: list[list[int]],
    progress: bool = True,
) -> torch.Tensor:
    """One full forward pass of the corrupted tokens per cell: the reference implementation."""

    def patch_hook(
        activation: torch.Tensor, hook: Any, index: list[int], clean: torch.Tensor
    ) -> torch.Tensor:
        # Clone: the hooked tensor may be a view into a buffer the model still reads (e.g. the fused QKV output).
        return patch_setter(activation.clone(), index, clean.to(activation.device))

    values: list[float] = []
    with torch.inference_mode():
        for index in tqdm(rows, disable=not progress):
            name = get_act_name(activation_name, index[0])
            hook = partial(patch_hook, index=index, clean=clean_cache[name])
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])
            values.append(float(patching_metric(logits)))
    return torch.tensor(values, dtype=torch.float32, device=model.cfg.device)


def _site_index(patch_setter: PatchSetter, index: Sequence[int]) -> tuple[int | None, ...] | None:
    """What a known setter writes, as an index over the activation's dims after the batch dim."""
    if patch_setter is layer_head_vector_patch_setter:
        return (None, int(index[1]))  # act[:, :, head]
    if patch_setter in _POSITIONAL_SETTERS:
        return tuple(int(i) for i in index[1:])  # act[:, i1, i2, ...]
    return None


def _fast_patch(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    patching_metric: PatchingMetric,
    patch_setter: PatchSetter,
    activation_name: str,
    rows: list[list[int]],
    options: SweepOptions,
    progress: bool,
) -> torch.Tensor:
    """The batched engine over the same cells (raises SweepUnsupported when it cannot run them)."""
    known = patch_setter in _POSITIONAL_SETTERS or patch_setter is layer_head_vector_patch_setter
    sites = []
    for index in rows:
        if not index:
            raise ValueError("every cell needs at least a layer index")
        layer = int(index[0])
        if known:
            sites.append(PatchSite(layer, _site_index(patch_setter, index) or ()))
        else:
            sites.append(PatchSite(layer, (), raw=tuple(int(i) for i in index)))
    with tqdm(total=len(sites), disable=not progress) as bar:
        return sweep_sites(
            model,
            corrupted_tokens,
            lambda layer: get_act_name(activation_name, layer),
            sites,
            lambda name: clean_cache[name],
            patching_metric,
            setter=None if known else patch_setter,
            options=options,
            progress=bar.update,
        )


# ---------------------------------------------------------------------------- patch setters
def layer_pos_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, pos]; activation [batch, pos, ...] (anything but attention patterns/scores)."""
    assert len(index) == 2, f"expected [layer, pos], got {index}"
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, pos, head_index]; activation [batch, pos, head_index, ...] (q, k, v, z, result)."""
    assert len(index) == 3, f"expected [layer, pos, head_index], got {index}"
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index]; activation [batch, pos, head_index, ...]; every position."""
    assert len(index) == 2, f"expected [layer, head_index], got {index}"
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index]; activation [batch, head_index, dest_pos, src_pos] (pattern, scores)."""
    assert len(index) == 2, f"expected [layer, head_index], got {index}"
    _, head = index
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos]; activation [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 3, f"expected [layer, head_index, dest_pos], got {index}"
    _, head, dest = index
    corrupted_activation[:, head, dest, :] = clean_activation[:, head, dest, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos, src_pos]; activation [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 4, f"expected [layer, head_index, dest_pos, src_pos], got {index}"
    _, head, dest, src = index
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


_POSITIONAL_SETTERS = (
    layer_pos_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_dest_src_pos_pattern_patch_setter,
)
"""Setters writing ``act[:, index[1], index[2], ...]``: the engine reads the index as is."""


# ---------------------------------------------------------------------------- specialised patches
_ARGS_DOC = """

    Args:
        model: The model.
        corrupted_tokens: Tokens of the corrupted run, [batch, pos].
        clean_cache: Activations of the clean run (ActivationCache or dict, with batch dim).
        patching_metric: Logits [batch, pos, d_vocab_out] -> scalar.

    See :func:`generic_activation_patch`.
    """


def _specialise(setter: PatchSetter, activation_name: str, axes: Sequence[AxisNames], doc: str) -> Any:
    """A ``generic_activation_patch`` partial (as in TransformerLens), with its own docstring."""
    fn = partial(
        generic_activation_patch, patch_setter=setter, activation_name=activation_name, index_axis_names=axes
    )
    fn.__doc__ = doc + _ARGS_DOC
    return fn


_LP: tuple[AxisNames, ...] = ("layer", "pos")
_LH: tuple[AxisNames, ...] = ("layer", "head")
_LPH: tuple[AxisNames, ...] = ("layer", "pos", "head")

get_act_patch_resid_pre = _specialise(
    layer_pos_patch_setter,
    "resid_pre",
    _LP,
    "Patch the residual stream entering each block, by position: [n_layers, pos].",
)
get_act_patch_resid_mid = _specialise(
    layer_pos_patch_setter,
    "resid_mid",
    _LP,
    "Patch the residual stream between attention and MLP, by position: [n_layers, pos].",
)
get_act_patch_attn_out = _specialise(
    layer_pos_patch_setter,
    "attn_out",
    _LP,
    "Patch each attention layer's output, by position: [n_layers, pos].",
)
get_act_patch_mlp_out = _specialise(
    layer_pos_patch_setter, "mlp_out", _LP, "Patch each MLP layer's output, by position: [n_layers, pos]."
)

get_act_patch_attn_head_out_by_pos = _specialise(
    layer_pos_head_vector_patch_setter,
    "z",
    _LPH,
    "Patch each head's output (z), by position: [n_layers, pos, n_heads].",
)
get_act_patch_attn_head_q_by_pos = _specialise(
    layer_pos_head_vector_patch_setter,
    "q",
    _LPH,
    "Patch each head's queries, by position: [n_layers, pos, n_heads].",
)
get_act_patch_attn_head_k_by_pos = _specialise(
    layer_pos_head_vector_patch_setter,
    "k",
    _LPH,
    "Patch each key head's keys, by position: [n_layers, pos, n_key_value_heads] (= n_heads without GQA).",
)
get_act_patch_attn_head_v_by_pos = _specialise(
    layer_pos_head_vector_patch_setter,
    "v",
    _LPH,
    "Patch each value head's values, by position: [n_layers, pos, n_key_value_heads] (= n_heads without GQA).",
)
get_act_patch_attn_head_pattern_by_pos = _specialise(
    layer_head_pos_pattern_patch_setter,
    "pattern",
    ("layer", "head_index", "dest_pos"),
    "Patch each head's attention pattern row, by destination position: [n_layers, n_heads, dest_pos].",
)
get_act_patch_attn_head_pattern_dest_src_pos = _specialise(
    layer_head_dest_src_pos_pattern_patch_setter,
    "pattern",
    ("layer", "head_index", "dest_pos", "src_pos"),
    "Patch each single attention pattern entry: [n_layers, n_heads, dest_pos, src_pos].",
)

get_act_patch_attn_head_out_all_pos = _specialise(
    layer_head_vector_patch_setter,
    "z",
    _LH,
    "Patch each head's output (z) at every position: [n_layers, n_heads].",
)
get_act_patch_attn_head_q_all_pos = _specialise(
    layer_head_vector_patch_setter,
    "q",
    _LH,
    "Patch each head's queries at every position: [n_layers, n_heads].",
)
get_act_patch_attn_head_k_all_pos = _specialise(
    layer_head_vector_patch_setter,
    "k",
    _LH,
    "Patch each key head's keys at every position: [n_layers, n_key_value_heads] (= n_heads without GQA).",
)
get_act_patch_attn_head_v_all_pos = _specialise(
    layer_head_vector_patch_setter,
    "v",
    _LH,
    "Patch each value head's values at every position: [n_layers, n_key_value_heads] (= n_heads without GQA).",
)
get_act_patch_attn_head_pattern_all_pos = _specialise(
    layer_head_pattern_patch_setter,
    "pattern",
    ("layer", "head_index"),
    "Patch each head's whole attention pattern: [n_layers, n_heads].",
)


def _pad_heads(result: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Zero-pad a key/value-head axis (last) to n_heads so GQA results stack with the others."""
    return F.pad(result, (0, n_heads - result.shape[-1]))


def get_act_patch_block_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """resid_pre, attn_out and mlp_out patching stacked: [3, n_layers, pos].

    Keyword arguments (``method``, ``logit_positions``, ...) go to each helper.
    """
    return torch.stack(
        [
            get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_out(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_mlp_out(model, corrupted_tokens, clean_cache, metric, **kwargs),
        ]
    )


def get_act_patch_attn_head_all_pos_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-head patching at every position of output, q, k, v and pattern, stacked: [5, n_layers, n_heads].

    Under GQA the k and v rows hold n_key_value_heads values, zero-padded to n_heads. Keyword
    arguments (``method``, ``logit_positions``, ...) go to each helper.
    """
    n_heads = model.cfg.n_heads
    return torch.stack(
        [
            get_act_patch_attn_head_out_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_head_q_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            _pad_heads(
                get_act_patch_attn_head_k_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            _pad_heads(
                get_act_patch_attn_head_v_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            get_act_patch_attn_head_pattern_all_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
        ]
    )


def get_act_patch_attn_head_by_pos_every(
    model: HookedTransformer,
    corrupted_tokens: torch.Tensor,
    clean_cache: Any,
    metric: PatchingMetric,
    **kwargs: Any,
) -> torch.Tensor:
    """Per-head, per-position patching of output, q, k, v and pattern, stacked: [5, n_layers, pos, n_heads].

    The pattern row is patched per destination position. Under GQA the k and v rows hold
    n_key_value_heads values, zero-padded to n_heads. Keyword arguments (``method``, ...) go to
    each helper.
    """
    n_heads = model.cfg.n_heads
    return torch.stack(
        [
            get_act_patch_attn_head_out_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            get_act_patch_attn_head_q_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
            _pad_heads(
                get_act_patch_attn_head_k_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            _pad_heads(
                get_act_patch_attn_head_v_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs),
                n_heads,
            ),
            # [n_layers, n_heads, dest_pos] -> [n_layers, pos, n_heads]
            get_act_patch_attn_head_pattern_by_pos(
                model, corrupted_tokens, clean_cache, metric, **kwargs
            ).permute(0, 2, 1),
        ]
    )
