"""Declarative hook ops: one object, two uses.

Each op is a plain TransformerLens hook function, so it works on a local model::

    model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ops.zero_ablate(head=3))])

and it compiles to intervention-graph nodes (``op.to_nodes(builder, run, hook)``), so the
same call runs on a remote model without sending code. Both paths run the same code:
each op is written once against the operations that torch tensors and trace proxies
share, so local hooks and compiled graphs compute the same numbers.

``head=`` and ``pos=`` restrict an op to some heads / positions. They take an int, a slice,
or a list/1-D tensor of ints (head and pos lists combine as an outer product). Which
dimension they index depends on the hook: ``hook_pattern``/``hook_attn_scores`` are
[batch, head, query_pos, key_pos] (head is dim 1, pos the query dim 2); per-head hooks
(``hook_q``/``k``/``v``/``z``/``result``, ...) are [batch, pos, head, d] (pos dim 1, head dim 2);
every other hook is [batch, pos, ...] and has no head. On ``hook_k``/``hook_v`` of a
grouped-query model, head counts key/value heads.

Metrics (``logit_diff``, ``logit``, ``log_prob``) take logits (a tensor, ``run.logits``, or a run)
and return the mean over the batch, as in TransformerLens's tutorials (``per_prompt=True``
keeps one value per sequence).

This module is the public face; the hook ops live in :mod:`telelens.trace.hook_ops`, the metrics
in :mod:`telelens.trace.metrics`.
"""

from __future__ import annotations

from telelens.trace.hook_ops import (
    ATTN_MAP_HOOKS,
    HEAD_HOOKS,
    Add,
    Clamp,
    HookOp,
    MeanAblate,
    Patch,
    Python,
    ResampleAblate,
    Scale,
    Selector,
    ZeroAblate,
    add,
    clamp,
    derangement,
    hook_index,
    mean_ablate,
    patch,
    python,
    resample_ablate,
    scale,
    zero_ablate,
)
from telelens.trace.metrics import Logit, LogitDiff, LogProb, Metric, log_prob, logit, logit_diff

__all__ = [
    "ATTN_MAP_HOOKS",
    "HEAD_HOOKS",
    "Add",
    "Clamp",
    "HookOp",
    "LogProb",
    "Logit",
    "LogitDiff",
    "MeanAblate",
    "Metric",
    "Patch",
    "Python",
    "ResampleAblate",
    "Scale",
    "Selector",
    "ZeroAblate",
    "add",
    "clamp",
    "derangement",
    "hook_index",
    "log_prob",
    "logit",
    "logit_diff",
    "mean_ablate",
    "patch",
    "python",
    "resample_ablate",
    "scale",
    "zero_ablate",
]
