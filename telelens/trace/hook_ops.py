"""Hook ops: patching, ablation, steering and clamping, each one TransformerLens hook function.

Each op runs locally as a hook (``op(tensor, hook=hook_point)``) and compiles to graph nodes
(``op.to_nodes(builder, run, hook)``) through the same ``_apply``, written against what torch
tensors and trace proxies share. ``head=``/``pos=`` restrict an op (see :func:`hook_index`).
Users reach these through :mod:`telelens.trace.ops` (``ops.zero_ablate(head=3)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from telelens.trace.graph import GraphBuilder
from telelens.trace.proxies import HookProxy, RunProxy, ValueProxy

Selector = int | slice | Sequence[int] | torch.Tensor | None

ATTN_MAP_HOOKS = ("hook_pattern", "hook_attn_scores")
"""[batch, head_index, query_pos, key_pos]"""
HEAD_HOOKS = (
    "hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_rot_k", "hook_z", "hook_result",
    "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input",
)  # fmt: skip
"""[batch, pos, head_index, d]"""


def _selector(x: Selector, what: str) -> int | slice | torch.Tensor | None:
    """int / slice / None as is; lists and tensors -> 1-D int64 tensor."""
    if x is None or isinstance(x, slice):
        return x
    if isinstance(x, bool):
        raise TypeError(f"{what} must be an int, a slice or a list of ints, not a bool")
    if isinstance(x, int):
        return x
    t = torch.as_tensor(x)
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"{what} must hold ints, got {t.dtype}")
    if t.dim() == 0:
        return int(t)
    if t.dim() != 1:
        raise ValueError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.long)


def hook_index(
    hook_name: str,
    head: int | slice | torch.Tensor | None = None,
    pos: int | slice | torch.Tensor | None = None,
) -> tuple[Any, ...] | Any:
    """The index selecting ``head``/``pos`` in activation ``hook_name`` (``...`` for everything).

    ``hook_index("blocks.0.attn.hook_z", head=3)`` -> ``(slice(None), slice(None), 3)``.
    """
    suffix = hook_name.rsplit(".", 1)[-1]
    if suffix in ATTN_MAP_HOOKS:
        dims = {1: head, 2: pos}
    elif suffix in HEAD_HOOKS:
        dims = {1: pos, 2: head}
    else:
        if head is not None:
            raise ValueError(
                f"{hook_name or 'this hook'} has no head dimension: head= only applies to per-head hooks"
            )
        dims = {1: pos}
    # Two index lists would be zipped by torch; reshape the first to a column for an outer product.
    if isinstance(dims[1], torch.Tensor) and isinstance(dims.get(2), torch.Tensor):
        dims[1] = dims[1][:, None]
    last = max((d for d, sel in dims.items() if sel is not None), default=0)
    if last == 0:
        return ...
    return tuple(slice(None) if dims.get(d) is None else dims[d] for d in range(last + 1))


def _whole(idx: Any) -> bool:
    return idx is ...


def _here(t: torch.Tensor, act: Any) -> torch.Tensor:
    """A tensor on the activation's device (local hooks); untouched in a trace."""
    return t.to(act.device) if isinstance(act, torch.Tensor) else t


def _as_run(builder: GraphBuilder, run: Any) -> RunProxy:
    if isinstance(run, RunProxy):
        if run._builder is not builder:
            raise ValueError("this run belongs to another graph")
        return run
    raise TypeError(f"to_nodes needs the RunProxy of this graph, got {type(run).__name__}")


class HookOp:
    """Base class: a TransformerLens hook function that also compiles to graph nodes.

    Subclasses implement ``_apply(act, hook_name, batch_size)`` once, using only operations
    that both a torch tensor and a :class:`HookProxy` support (index, assign, ``+=``, ``mean``...).
    """

    needs_code = False

    def __call__(self, tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
        """The local hook: ``fn(tensor, hook=hook_point) -> tensor`` (modifies ``tensor`` in place)."""
        name = getattr(hook, "name", None) or ""
        out = self._apply(tensor, name, int(tensor.shape[0]) if tensor.dim() else None)
        return tensor if out is None else out

    def to_nodes(self, builder: GraphBuilder, run: RunProxy, hook: str) -> None:
        """Append this op's nodes for activation ``hook`` of ``run``."""
        run = _as_run(builder, run)
        self._apply(HookProxy(run, hook), hook, run.batch_size)

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        def short(v: Any) -> str:  # tensors by shape: a patch source can be large
            return f"tensor{list(v.shape)}" if isinstance(v, torch.Tensor) and v.numel() > 8 else repr(v)

        fields = ", ".join(f"{k}={short(v)}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _Selective(HookOp):
    """An op restricted to some heads / positions."""

    def __init__(self, head: Selector = None, pos: Selector = None) -> None:
        self.head = _selector(head, "head")
        self.pos = _selector(pos, "pos")

    def _index(self, act: Any, hook_name: str) -> Any:
        idx = hook_index(hook_name, self.head, self.pos)
        if _whole(idx) or isinstance(act, ValueProxy):
            return idx
        return tuple(_here(i, act) if isinstance(i, torch.Tensor) else i for i in idx)


class Patch(_Selective):
    def __init__(self, source: Any, head: Selector = None, pos: Selector = None) -> None:
        super().__init__(head, pos)
        self.source = source

    def _source(self, act: Any, hook_name: str) -> Any:
        src = self.source
        if isinstance(src, RunProxy):  # the same hook of another run
            src = src[hook_name]
        elif isinstance(src, Mapping) or hasattr(src, "cache_dict"):  # a cache (dict or ActivationCache)
            if hook_name not in src:
                raise KeyError(f"patch source has no activation {hook_name!r}")
            src = src[hook_name]
        if isinstance(src, ValueProxy) and isinstance(act, torch.Tensor):
            raise TypeError(
                "this patch's source is a trace value: use the op inside a trace, not as a local hook"
            )
        return _here(src, act) if isinstance(src, torch.Tensor) else src

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        src = self._source(act, hook_name)
        idx = self._index(act, hook_name)
        act[idx] = src if _whole(idx) else src[idx]
        return act


class ZeroAblate(_Selective):
    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        act[self._index(act, hook_name)] = 0.0
        return act


class MeanAblate(_Selective):
    def __init__(self, head: Selector = None, pos: Selector = None, over: str = "batch") -> None:
        super().__init__(head, pos)
        if over != "batch":
            raise ValueError(f"mean_ablate averages over the batch (over='batch'), got over={over!r}")
        self.over = over

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        mean = act.mean(0, keepdim=True)  # [1, ...]: the batch mean, taken before any change
        idx = self._index(act, hook_name)
        act[idx] = mean if _whole(idx) else mean[idx]
        return act


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of ``range(n)`` with no fixed point (every row gets another's)."""
    if n < 2:
        raise ValueError(f"resampling needs a batch of at least 2 sequences, got {n}")
    gen = torch.Generator().manual_seed(seed)
    while True:  # rejection sampling: about e tries on average
        perm = torch.randperm(n, generator=gen)
        if not bool((perm == torch.arange(n)).any()):
            return perm


class ResampleAblate(_Selective):
    def __init__(
        self, permutation: Sequence[int] | torch.Tensor | None = None, seed: int = 0,
        head: Selector = None, pos: Selector = None,
    ) -> None:  # fmt: skip
        super().__init__(head, pos)
        self.permutation = None if permutation is None else torch.as_tensor(permutation, dtype=torch.long)
        if self.permutation is not None and self.permutation.dim() != 1:
            raise ValueError("permutation must be 1-D: one source row per batch row")
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, batch_size: int | None) -> torch.Tensor:
        if self.permutation is not None:
            if batch_size is not None and len(self.permutation) != batch_size:
                raise ValueError(
                    f"permutation has {len(self.permutation)} entries for a batch of {batch_size}"
                )
            return self.permutation
        if batch_size is None:
            raise ValueError("resample_ablate needs the batch size: pass permutation=")
        if batch_size not in self._perms:  # one tensor per size, so a graph uploads it once
            self._perms[batch_size] = derangement(batch_size, self.seed)
        return self._perms[batch_size]

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        src = act[_here(self._perm(batch_size), act)]  # row b <- row perm[b]
        idx = self._index(act, hook_name)
        act[idx] = src if _whole(idx) else src[idx]
        return act


class Add(_Selective):
    def __init__(self, vector: Any, scale: float = 1.0, pos: Selector = None, head: Selector = None) -> None:
        super().__init__(head, pos)
        self.vector = vector
        self.scale = scale
        # A tensor is scaled once here, so local hooks and graphs add the very same values.
        if isinstance(vector, torch.Tensor) or not isinstance(vector, ValueProxy):
            t = torch.as_tensor(vector)
            self._value: Any = t * scale if scale != 1.0 else t
        else:
            self._value = None

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        if self._value is None:
            if isinstance(act, torch.Tensor):
                raise TypeError("this steering vector is a trace value: use the op inside a trace")
            value = self.vector * self.scale if self.scale != 1.0 else self.vector
        else:
            value = _here(self._value, act)
        act[self._index(act, hook_name)] += value
        return act


class Scale(_Selective):
    def __init__(self, factor: Any, head: Selector = None, pos: Selector = None) -> None:
        super().__init__(head, pos)
        self.factor = factor

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        factor = _here(self.factor, act) if isinstance(self.factor, torch.Tensor) else self.factor
        act[self._index(act, hook_name)] *= factor
        return act


class Clamp(_Selective):
    def __init__(
        self, min: float | None = None, max: float | None = None, head: Selector = None, pos: Selector = None
    ) -> None:
        super().__init__(head, pos)
        if min is None and max is None:
            raise ValueError("clamp needs min, max or both")
        self.min, self.max = min, max

    def _apply(self, act: Any, hook_name: str, batch_size: int | None) -> Any:
        idx = self._index(act, hook_name)
        act[idx] = act[idx].clamp(min=self.min, max=self.max)
        return act


class Python(HookOp):
    """An arbitrary ``fn(tensor, hook=...)``: runs as code, so the executor must allow it."""

    needs_code = True

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"ops.python needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return self.fn(tensor, hook=hook)

    def to_nodes(self, builder: GraphBuilder, run: RunProxy, hook: str) -> None:
        builder.code_hook(_as_run(builder, run).id, hook, self.fn)


# ---------------------------------------------------------------------- constructors
def patch(source: Any, pos: Selector = None, head: Selector = None) -> Patch:
    """Replace the activation by ``source`` (a tensor of the activation's shape, a trace value,
    a run in a trace (same hook of that run), or a cache mapping hook names to tensors).
    With ``pos``/``head`` only those positions/heads are copied: ``act[idx] = source[idx]``."""
    return Patch(source, head=head, pos=pos)


def zero_ablate(head: Selector = None, pos: Selector = None) -> ZeroAblate:
    """Set the activation (or the chosen heads/positions) to zero."""
    return ZeroAblate(head=head, pos=pos)


def mean_ablate(head: Selector = None, pos: Selector = None, over: str = "batch") -> MeanAblate:
    """Replace by the mean over the batch of this same activation (TransformerLens style)."""
    return MeanAblate(head=head, pos=pos, over=over)


def resample_ablate(
    permutation: Sequence[int] | torch.Tensor | None = None,
    seed: int = 0,
    head: Selector = None,
    pos: Selector = None,
) -> ResampleAblate:
    """Replace each batch row by row ``permutation[row]`` (default: a seeded derangement)."""
    return ResampleAblate(permutation=permutation, seed=seed, head=head, pos=pos)


def add(vector: Any, scale: float = 1.0, pos: Selector = None, head: Selector = None) -> Add:
    """Steering: add ``scale * vector`` (broadcast against the activation) at ``pos``."""
    return Add(vector, scale=scale, pos=pos, head=head)


def scale(factor: Any, head: Selector = None, pos: Selector = None) -> Scale:
    """Multiply the activation (or the chosen heads/positions) by ``factor``."""
    return Scale(factor, head=head, pos=pos)


def clamp(
    min: float | None = None, max: float | None = None, head: Selector = None, pos: Selector = None
) -> Clamp:
    """Clamp the activation's values into ``[min, max]``."""
    return Clamp(min=min, max=max, head=head, pos=pos)


def python(fn: Callable[..., Any]) -> Python:
    """A Python hook function as an op; compiles to a CodeHook (needs ``allow_code=True``)."""
    return Python(fn)
