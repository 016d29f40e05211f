"""Declarative patching sweeps: one ``Sweep`` node, run locally or on a remote worker.

    from telelens.client import ops, patching
    grid = patching.sweep(
        backend, corrupted_tokens, clean_tokens, activation="resid_pre",
        metric=ops.logit_diff(paris, rome), normalize=True,
    )  # [n_layers, pos]

The metric is a graph expression over the patched run's logits (an ``ops`` metric, or any
function of a logits proxy built from proxy operations), so the worker evaluates it for
every patched variant and only the grid travels back. ``backend`` is anything with
``execute(graph)``: ``LocalBackend(model)`` in-process, or a remote model. With
``normalize=True`` the grid is ``(m - m_corrupted) / (m_clean - m_corrupted)``, the
baselines computed on the worker from the same runs (0: no effect, 1: full recovery).

Inside a trace, :func:`add_sweep` appends the node and returns its value proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from telelens.protos import ir
from telelens.trace.graph import GraphBuilder
from telelens.trace.helper_grids import HELPER_AXES
from telelens.trace.proxies import RunProxy, ValueProxy
from telelens.trace.tracing import Tracer

__all__ = ["HELPER_AXES", "add_sweep", "sweep"]

SWEEP_AXES = ("layer", "pos", "head")

MetricFn = Callable[[ValueProxy], ValueProxy]


def _metric_value(metric: Any, logits: ValueProxy) -> ValueProxy:
    out = metric(logits)
    if not isinstance(out, ValueProxy):
        raise TypeError(
            "a sweep metric must build a graph value from the logits proxy (an ops metric such as "
            f"ops.logit_diff(a, b), or a function of proxy operations), got {type(out).__name__}"
        )
    return out


def add_sweep(
    builder: GraphBuilder,
    corrupted: RunProxy,
    clean: RunProxy,
    activation: str,
    axes: Sequence[str],
    metric: MetricFn | Any,
    normalize: bool = False,
) -> ValueProxy:
    """Append a Sweep node patching ``activation`` of ``clean`` into ``corrupted`` over ``axes``.

    ``metric(logits)`` is called once on a placeholder for the patched run's logits
    [batch, pos, d_vocab_out] and must return a scalar value. Returns the grid's proxy.
    """
    axes = tuple(axes)
    if not axes or axes[0] != "layer" or any(a not in SWEEP_AXES for a in axes):
        raise ValueError(
            f"axes must start with 'layer' and be a subset of {list(SWEEP_AXES)}, got {list(axes)}"
        )
    for run in (corrupted, clean):
        if not isinstance(run, RunProxy) or run._builder is not builder:
            raise TypeError("corrupted and clean must be runs of this trace (t.run(...))")
    baselines = None
    if normalize:  # main-graph values, computed from the runs' own logits
        clean_value = _metric_value(metric, clean.logits)
        corrupted_value = _metric_value(metric, corrupted.logits)
        baselines = (clean_value._ref(), corrupted_value._ref())

    sub = builder.child()  # the metric's sub-graph: its own nodes, ids that never clash
    placeholder = sub.add(ir.SweepLogits)
    value = _metric_value(metric, ValueProxy(sub, placeholder))
    if baselines is not None:
        clean_ref, corrupted_ref = (ValueProxy(sub, r) for r in baselines)  # outer nodes, by id
        value = (value - corrupted_ref) / (clean_ref - corrupted_ref)
    output = value._ref()
    sweep_id = builder.add(
        ir.Sweep,
        corrupted=corrupted.id,
        clean=clean.id,
        activation=activation,
        axes=axes,
        metric=tuple(sub.nodes),
        metric_input=placeholder,
        metric_output=output,
    )
    return ValueProxy(builder, sweep_id)


def sweep(
    backend: Any,
    corrupted: Any,
    clean: Any,
    activation: str = "resid_pre",
    axes: Sequence[str] | None = None,
    metric: MetricFn | Any = None,
    *,
    normalize: bool = False,
    prepend_bos: bool | None = None,
) -> torch.Tensor:
    """Run one patching sweep on ``backend`` and return the grid (float32, shaped by the axes).

    Args:
        backend: A graph backend (``LocalBackend(model)``, a remote model).
        corrupted: Corrupted text(s) or token ids [batch, pos].
        clean: Clean text(s) or token ids, the same shape.
        activation: TransformerLens short name (``"resid_pre"``, ``"attn_out"``, ``"z"``, ...),
            or a helper name from :data:`HELPER_AXES` (``"attn_head_out_all_pos"``), which
            also fixes the axes.
        axes: Swept axes, ``"layer"`` first (default ``("layer", "pos")``).
        metric: The metric of the patched logits (e.g. ``ops.logit_diff(a, b)``); required.
        normalize: Return ``(m - m_corrupted) / (m_clean - m_corrupted)``.
        prepend_bos: For text inputs.
    """
    if metric is None:
        raise TypeError("sweep needs a metric, e.g. metric=ops.logit_diff(answer, wrong_answer)")
    if activation in HELPER_AXES:
        activation, helper_axes = HELPER_AXES[activation]
        if axes is not None and tuple(axes) != helper_axes:
            raise ValueError(f"{activation!r} sweeps axes {list(helper_axes)}, got {list(axes)}")
        axes = helper_axes
    with Tracer(backend) as t:
        clean_run = t.run(clean, prepend_bos=prepend_bos)
        corrupted_run = t.run(corrupted, prepend_bos=prepend_bos)
        grid = add_sweep(
            t.builder, corrupted_run, clean_run, activation, axes or ("layer", "pos"), metric, normalize
        )
        saved = t.save(grid, "sweep", dtype="float32")
    return saved.value
