"""Traced values: :class:`ValueProxy` (any node of the graph being built) and :class:`Saved`.

A :class:`ValueProxy` can be indexed, combined with numbers, tensors and other proxies (its
torch-like methods live in :mod:`telelens.trace.tensor_methods`) and saved; ``save`` returns a
:class:`Saved` whose ``.value`` is filled once the graph ran. This module also turns Python
operands and indices into IR (``to_operand``, ``to_index``) and keeps the bookkeeping that folds
``act[idx] += v`` into one in-place write. Runs, hooks and weights are in :mod:`telelens.trace.proxies`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from telelens.protos import ir
from telelens.protos.torch_tensors import torch_dtype_names
from telelens.trace.graph import GraphBuilder
from telelens.trace.tensor_methods import TensorMethods

if TYPE_CHECKING:
    from telelens.trace.proxies import HookProxy


# ---------------------------------------------------------------------- conversions
def dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """``torch.float16`` or ``"float16"`` -> ``"float16"`` (checked against ir.DTYPES)."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        name = torch_dtype_names().get(dtype)
        if name is None:
            raise ValueError(f"cannot save as {dtype}: use one of {ir.DTYPES}")
        return name
    if dtype not in ir.DTYPES:
        raise ValueError(f"dtype must be one of {ir.DTYPES} or a torch dtype, got {dtype!r}")
    return dtype


def _as_tensor(x: Any) -> torch.Tensor | None:
    """A torch tensor for tensors, numpy arrays and (nested) lists; None for anything else."""
    if isinstance(x, torch.Tensor):
        return x
    if type(x).__module__ == "numpy" and hasattr(x, "shape") and hasattr(x, "dtype"):
        return torch.as_tensor(x)
    if isinstance(x, list):
        return torch.tensor(x)
    return None


def to_operand(builder: GraphBuilder, x: Any) -> ir.Operand:
    """A proxy, Python number or tensor -> an operand (tensors become Constant nodes)."""
    if isinstance(x, ValueProxy):
        x._check_builder(builder)
        return ir.Ref(x._ref())
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, numbers.Real):
        return float(x)
    tensor = _as_tensor(x)
    if tensor is not None:
        return ir.Ref(builder.constant(tensor))
    hint = getattr(type(x), "_NOT_A_VALUE_HINT", None)  # RunProxy, Saved
    if hint is not None:
        raise TypeError(f"a {type(x).__name__} is not a value in a trace: {hint}")
    raise TypeError(f"cannot use a {type(x).__name__} in a trace: expected a proxy, a number or a tensor")


def _opt_int(x: Any, what: str) -> int | None:
    if x is None:
        return None
    if isinstance(x, ValueProxy):
        raise TypeError(f"slice {what} must be a Python int while tracing (got a proxy)")
    try:
        return int(x.__index__())
    except AttributeError:
        raise TypeError(f"slice {what} must be an int or None, got {type(x).__name__}") from None


def to_index(builder: GraphBuilder, idx: Any) -> tuple[ir.IndexItem, ...]:
    """A Python index (``[:, -1]``, ``[..., None]``, ``[tokens]``) -> IR index items."""
    items = idx if isinstance(idx, tuple) else (idx,)
    out: list[ir.IndexItem] = []
    for item in items:
        if item is Ellipsis:
            out.append(ir.ELLIPSIS)
        elif item is None:
            out.append(ir.NEW_AXIS)
        elif isinstance(item, slice):
            out.append(
                ir.SliceItem(
                    _opt_int(item.start, "start"), _opt_int(item.stop, "stop"), _opt_int(item.step, "step")
                )
            )
        elif isinstance(item, ValueProxy):
            item._check_builder(builder)
            out.append(ir.Ref(item._ref()))
        elif isinstance(item, bool):
            raise TypeError("a bool is not an index here: use a bool tensor as a mask")
        elif isinstance(item, numbers.Integral):
            out.append(int(item))
        else:
            tensor = _as_tensor(item)
            if tensor is None:
                raise TypeError(f"cannot index with a {type(item).__name__}")
            if tensor.is_floating_point():
                raise TypeError(f"index tensors hold ints or bools, got {tensor.dtype}")
            out.append(ir.Ref(builder.constant(tensor)))
    return () if out == [ir.ELLIPSIS] else tuple(out)


# ---------------------------------------------------------------------- in-place bookkeeping
@dataclass
class _Origin:
    """Where a value indexed straight out of an activation came from (for ``a[i] += v``)."""

    hook: HookProxy
    raw_index: Any  # the Python index object; ``a[i] += v`` passes the same object twice
    index: tuple[ir.IndexItem, ...]
    read: int
    fresh_read: bool  # the Read was made for this indexing (not reused from the cache)
    created: set[int] = field(default_factory=set)  # the Index node (constants stay)


@dataclass
class _InPlace:
    """``a[i] op= v`` in progress: fold into one Write(mode) if the result goes back to ``a[i]``."""

    origin: _Origin
    mode: str  # "add" or "mul"
    operand: ir.Operand
    negate: bool  # -= becomes an additive write of -v
    source: ValueProxy  # the indexed value, dead once folded
    created: set[int]


_WHOLE = object()  # raw_index of ``run[hook] += v``


# ---------------------------------------------------------------------- values
class ValueProxy(TensorMethods):
    """A value of the graph: supports indexing, arithmetic, reductions and ``save``.

    Shapes are not known while tracing; read ``saved.value.shape`` after the block.
    """

    __array_priority__ = 1000  # numpy arrays on the left defer to our reflected operators

    def __init__(self, builder: GraphBuilder, node_id: int | None) -> None:
        self._builder = builder
        self._node_id = node_id
        self._origin: _Origin | None = None
        self._inplace: _InPlace | None = None
        self._dead = False

    # -- plumbing
    def _ref(self) -> int:
        if self._dead:
            raise RuntimeError(
                "this value was folded into an in-place write (`act[idx] += v`) and no longer "
                "exists; compute it again (before the write) if you need it"
            )
        assert self._node_id is not None
        return self._node_id

    def _check_builder(self, builder: GraphBuilder) -> None:
        if builder is not self._builder:
            raise ValueError("this proxy belongs to another trace: values cannot cross traces")

    def _new(self, cls: type[ir.Node], **fields: Any) -> ValueProxy:
        return ValueProxy(self._builder, self._builder.add(cls, **fields))

    def _operand(self, x: Any) -> ir.Operand:
        return to_operand(self._builder, x)

    @property
    def node_id(self) -> int:
        """The id of the node holding this value (creates the Read of a hook proxy)."""
        return self._ref()

    def __repr__(self) -> str:
        if self._dead:
            return "<ValueProxy (folded into an in-place write)>"
        node = self._builder.node(self._ref())
        return f"<ValueProxy node {node.id}: {type(node).__name__}>"

    # -- misuse guards: a proxy has no concrete value while tracing
    def _no_value(self, what: str) -> TypeError:
        return TypeError(
            f"{what} of a traced value is not known while the graph is being built: "
            "save it (t.save(x)) and use saved.value after the `with` block"
        )

    def __bool__(self) -> bool:
        raise self._no_value("the truth value")

    def __iter__(self) -> Any:
        raise self._no_value("iteration")

    def __len__(self) -> int:
        raise self._no_value("the length")

    def __float__(self) -> float:
        raise self._no_value("the number")

    def __int__(self) -> int:
        raise self._no_value("the number")

    def __index__(self) -> int:
        raise self._no_value("the integer value")

    @property
    def shape(self) -> Any:
        raise self._no_value("the shape")

    def __setitem__(self, idx: Any, value: Any) -> None:
        raise TypeError(
            "traced values are immutable; to change an activation assign through the run: "
            "run[hook][idx] = value"
        )

    # -- indexing
    def __getitem__(self, idx: Any) -> ValueProxy:
        source = ir.Ref(self._ref())
        index = to_index(self._builder, idx)
        return self._new(ir.Index, input=source, index=index) if index else self  # x[...] is x

    def __pos__(self) -> ValueProxy:
        return self

    # In-place operators make a new value (proxies are not views) and remember that it came
    # from ``act[idx]``; if Python then stores it back (``act[idx] += v``), the pair folds
    # into one ``Write(mode="add"|"mul")``. Division and powers fall back to read-op-write.
    def _inplace_op(self, op: str, mode: str, other: Any, negate: bool = False) -> ValueProxy:
        origin = self._origin_for_inplace()
        out, operand = self._binary(op, other)
        if origin is not None:
            created = {*origin.created, out._ref()}
            out._inplace = _InPlace(origin, mode, operand, negate, self, created)
        return out

    def _origin_for_inplace(self) -> _Origin | None:
        return self._origin

    def __iadd__(self, other: Any) -> ValueProxy:
        return self._inplace_op("add", "add", other)

    def __isub__(self, other: Any) -> ValueProxy:
        return self._inplace_op("sub", "add", other, negate=True)

    def __imul__(self, other: Any) -> ValueProxy:
        return self._inplace_op("mul", "mul", other)

    # -- gradients
    def backward(self) -> Any:
        """nnsight style: this scalar becomes the metric that later ``run[hook].grad`` differentiate.

        Nothing runs now: the executor runs the backward pass (see :mod:`telelens.trace.backward`).
        """
        from telelens.trace.backward import start_backward

        return start_backward(self)

    # -- results
    def save(self, name: str | None = None, dtype: str | torch.dtype | None = None) -> Saved:
        """Same as ``t.save(self, name, dtype)``."""
        return save(self._builder, self, name, dtype)


# ---------------------------------------------------------------------- results


class Saved:
    """A handle on a saved value; ``.value`` is the tensor once the graph has run."""

    _NOT_A_VALUE_HINT = "read .value after the block"

    def __init__(self, name: str) -> None:
        self.name = name
        self._value: torch.Tensor | None = None
        self._state = "pending"  # -> "done" | "failed"

    @property
    def value(self) -> torch.Tensor:
        if self._state == "done":
            assert self._value is not None
            return self._value
        if self._state == "failed":
            raise RuntimeError(f"{self.name!r} has no value: the trace raised before it ran")
        raise RuntimeError(
            f"{self.name!r} has no value yet: the graph runs when the `with Tracer(...)` block exits; "
            "read .value after the block"
        )

    def _fill(self, value: torch.Tensor) -> None:
        self._value, self._state = value, "done"

    def _fail(self) -> None:
        self._state = "failed"

    def __repr__(self) -> str:
        return f"<Saved {self.name!r} {self._state}>"


def save(
    builder: GraphBuilder, value: Any, name: str | None = None, dtype: str | torch.dtype | None = None
) -> Saved:
    """Append a Save of ``value`` and return its handle (registered in ``builder.handles``)."""
    operand = to_operand(builder, value)
    if not isinstance(operand, ir.Ref):
        operand = ir.Ref(builder.constant(torch.tensor(operand)))
    handle = Saved(builder.save(operand, name, dtype_name(dtype)))
    builder.handles.append(handle)
    return handle
