"""Proxies: Python objects that stand for values of an intervention graph while it is built.

- :class:`RunProxy` is a forward pass: ``run["blocks.3.hook_resid_post"]``, ``run.logits``.
- :class:`HookProxy` is one activation of one run. Using it as a value appends an
  ``ir.Read`` at that point of the program (a read after a write sees the written value);
  assigning into it (``hook[:, -1] = v``, ``hook[:, -1] += v``) appends an ``ir.Write``.
- :class:`ValueProxy` is any other node: index it, do arithmetic on it, reduce it, save it.
- :class:`Saved` is what ``save`` returns; its ``.value`` is filled once the graph ran.

Proxies are values, not views: ``x = run[h][:, -1]; x += 1`` makes a new value and leaves the
activation alone. Only an assignment through ``run[h]`` or ``run[h][idx]`` changes the model.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from telelens.protos import ir
from telelens.protos.torch_tensors import torch_dtype_names
from telelens.trace.graph import GraphBuilder

# Stacked weights ([n_layers, ...] like TransformerLens's model.W_O) and where their per-layer
# copy lives: t.W_O[3] becomes Weight("blocks.3.attn.W_O"), which the executor reads without
# stacking every layer.
STACKED_WEIGHTS: dict[str, str] = {
    **{n: "attn" for n in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")},
    **{n: "mlp" for n in ("W_in", "W_gate", "W_out", "b_in", "b_out")},
}
MODEL_WEIGHTS = ("W_U", "b_U", "W_E", "W_pos", "W_E_pos")


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
    if isinstance(x, (RunProxy, Saved)):
        hint = "use run.logits or run[hook]" if isinstance(x, RunProxy) else "read .value after the block"
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


def _dims(dim: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if dim is None:
        return None
    if isinstance(dim, int):
        return (dim,)
    dims = tuple(int(d) for d in dim)
    if not dims:
        raise ValueError("dim=() is ambiguous: pass None to reduce over every dimension")
    return dims


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
class ValueProxy:
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

    # -- arithmetic
    def _binary(self, op: str, other: Any, reverse: bool = False) -> tuple[ValueProxy, ir.Operand]:
        mine = ir.Ref(self._ref())
        theirs = to_operand(self._builder, other)
        a, b = (theirs, mine) if reverse else (mine, theirs)
        return self._new(ir.Binary, op=op, a=a, b=b), theirs

    def __add__(self, other: Any) -> ValueProxy:
        return self._binary("add", other)[0]

    def __radd__(self, other: Any) -> ValueProxy:
        return self._binary("add", other, reverse=True)[0]

    def __sub__(self, other: Any) -> ValueProxy:
        return self._binary("sub", other)[0]

    def __rsub__(self, other: Any) -> ValueProxy:
        return self._binary("sub", other, reverse=True)[0]

    def __mul__(self, other: Any) -> ValueProxy:
        return self._binary("mul", other)[0]

    def __rmul__(self, other: Any) -> ValueProxy:
        return self._binary("mul", other, reverse=True)[0]

    def __truediv__(self, other: Any) -> ValueProxy:
        return self._binary("div", other)[0]

    def __rtruediv__(self, other: Any) -> ValueProxy:
        return self._binary("div", other, reverse=True)[0]

    def __pow__(self, other: Any) -> ValueProxy:
        return self._binary("pow", other)[0]

    def __rpow__(self, other: Any) -> ValueProxy:
        return self._binary("pow", other, reverse=True)[0]

    def __matmul__(self, other: Any) -> ValueProxy:
        return self._binary("matmul", other)[0]

    def __rmatmul__(self, other: Any) -> ValueProxy:
        return self._binary("matmul", other, reverse=True)[0]

    def maximum(self, other: Any) -> ValueProxy:
        """Elementwise maximum with a proxy, tensor or number."""
        return self._binary("maximum", other)[0]

    def minimum(self, other: Any) -> ValueProxy:
        """Elementwise minimum with a proxy, tensor or number."""
        return self._binary("minimum", other)[0]

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

    # -- elementwise
    def _unary(
        self, op: str, dim: int | None = None, min: float | None = None, max: float | None = None
    ) -> ValueProxy:
        return self._new(ir.Unary, op=op, input=ir.Ref(self._ref()), dim=dim, min=min, max=max)

    def __neg__(self) -> ValueProxy:
        return self._unary("neg")

    def __pos__(self) -> ValueProxy:
        return self

    def __abs__(self) -> ValueProxy:
        return self._unary("abs")

    def abs(self) -> ValueProxy:
        return self._unary("abs")

    def neg(self) -> ValueProxy:
        return self._unary("neg")

    def exp(self) -> ValueProxy:
        return self._unary("exp")

    def log(self) -> ValueProxy:
        return self._unary("log")

    def sqrt(self) -> ValueProxy:
        return self._unary("sqrt")

    def relu(self) -> ValueProxy:
        return self._unary("relu")

    def sigmoid(self) -> ValueProxy:
        return self._unary("sigmoid")

    def tanh(self) -> ValueProxy:
        return self._unary("tanh")

    def softmax(self, dim: int) -> ValueProxy:
        return self._unary("softmax", dim=int(dim))

    def log_softmax(self, dim: int) -> ValueProxy:
        return self._unary("log_softmax", dim=int(dim))

    def clamp(self, min: float | None = None, max: float | None = None) -> ValueProxy:
        if min is None and max is None:
            raise ValueError("clamp needs min, max or both")
        return self._unary(
            "clamp", min=None if min is None else float(min), max=None if max is None else float(max)
        )

    # -- reductions (max/min return values only, like torch.amax/amin)
    def _reduce(self, op: str, dim: int | Sequence[int] | None, keepdim: bool) -> ValueProxy:
        return self._new(ir.Reduce, op=op, input=ir.Ref(self._ref()), dims=_dims(dim), keepdim=bool(keepdim))

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ValueProxy:
        return self._reduce("sum", dim, keepdim)

    def mean(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ValueProxy:
        return self._reduce("mean", dim, keepdim)

    def max(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ValueProxy:
        """Maximum values (not the (values, indices) pair torch returns with a dim)."""
        return self._reduce("max", dim, keepdim)

    def min(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ValueProxy:
        """Minimum values (not the (values, indices) pair torch returns with a dim)."""
        return self._reduce("min", dim, keepdim)

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> ValueProxy:
        return self._reduce("argmax", dim, keepdim)

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> ValueProxy:
        return self._reduce("argmin", dim, keepdim)

    def norm(self, p: Any = 2, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> ValueProxy:
        """The 2-norm (``p=2`` or ``"fro"`` only)."""
        if p not in (2, 2.0, "fro"):
            raise ValueError(f"only the 2-norm is supported in a trace, got p={p!r}")
        return self._reduce("norm", dim, keepdim)

    def logsumexp(self, dim: int | Sequence[int], keepdim: bool = False) -> ValueProxy:
        return self._reduce("logsumexp", dim, keepdim)

    # -- shape ops
    def gather(self, dim: int, index: Any) -> ValueProxy:
        idx = to_operand(self._builder, index)
        if not isinstance(idx, ir.Ref):
            raise TypeError("gather needs an index tensor or proxy, not a number")
        return self._new(ir.Gather, input=ir.Ref(self._ref()), dim=int(dim), index=idx)

    def reshape(self, *shape: int | Sequence[int]) -> ValueProxy:
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return self._new(ir.Reshape, input=ir.Ref(self._ref()), shape=tuple(int(d) for d in dims))  # type: ignore[arg-type]

    view = reshape

    def transpose(self, dim0: int, dim1: int) -> ValueProxy:
        return self._new(ir.Transpose, input=ir.Ref(self._ref()), dim0=int(dim0), dim1=int(dim1))

    @property
    def mT(self) -> ValueProxy:
        """Swap the last two dimensions (``transpose(-2, -1)``)."""
        return self.transpose(-2, -1)

    @property
    def T(self) -> ValueProxy:
        raise AttributeError(
            ".T depends on the number of dimensions, which is unknown while tracing: "
            "use .transpose(0, 1) or .mT"
        )

    def unsqueeze(self, dim: int) -> ValueProxy:
        """Insert a size-1 dimension at ``dim`` (``dim >= 0``, or ``-1`` for last)."""
        if dim == -1:
            return self[..., None]
        if dim < 0:
            raise ValueError(
                "unsqueeze with a negative dim other than -1 needs the rank, unknown while tracing"
            )
        return self[(slice(None),) * dim + (None,)]

    # -- results
    def save(self, name: str | None = None, dtype: str | torch.dtype | None = None) -> Saved:
        """Same as ``t.save(self, name, dtype)``."""
        return save(self._builder, self, name, dtype)

    # Last in the class body: from here on, ``float`` in an annotation would mean this method.
    def float(self) -> ValueProxy:
        """Cast to float32 (as ``tensor.float()``)."""
        return self._unary("float")


class WeightProxy(ValueProxy):
    """A model weight by name; its node is added on first use."""

    def __init__(self, builder: GraphBuilder, name: str) -> None:
        super().__init__(builder, None)
        self.name = name

    def _ref(self) -> int:
        return self._builder.weight(self.name)

    def __repr__(self) -> str:
        return f"<WeightProxy {self.name}>"


class StackedWeightProxy(WeightProxy):
    """A weight stacked over layers (``W_O`` is [n_layers, n_heads, d_head, d_model]).

    Indexing the layer with an int (``t.W_O[3]``, ``t.W_O[3, 0]``) fetches the per-layer
    weight ``blocks.3.attn.W_O`` instead of stacking all layers on the server.
    """

    def __init__(self, builder: GraphBuilder, name: str, module: str) -> None:
        super().__init__(builder, name)
        self.module = module

    def __getitem__(self, idx: Any) -> ValueProxy:
        items = idx if isinstance(idx, tuple) else (idx,)
        layer = items[0] if items else None
        if isinstance(layer, int) and not isinstance(layer, bool):
            n_layers = getattr(self._builder.cfg, "n_layers", None)
            if layer < 0 and n_layers is not None:
                layer += n_layers
            if layer >= 0 and (n_layers is None or layer < n_layers):
                per_layer = WeightProxy(self._builder, f"blocks.{layer}.{self.module}.{self.name}")
                return per_layer[items[1:]] if len(items) > 1 else per_layer
            if n_layers is not None:
                raise IndexError(f"layer {items[0]} out of range for {self.name} with {n_layers} layers")
        return super().__getitem__(idx)


def weight_proxy(builder: GraphBuilder, name: str) -> WeightProxy:
    """``W_O`` -> a stacked proxy (per-layer on int index); anything else -> a plain one."""
    if name in STACKED_WEIGHTS:
        return StackedWeightProxy(builder, name, STACKED_WEIGHTS[name])
    return WeightProxy(builder, name)


class HookProxy(ValueProxy):
    """One activation of one run. Reading appends a Read; assigning into it appends a Write."""

    def __init__(self, run: RunProxy, hook: str) -> None:
        run._builder.check_hook(hook)
        super().__init__(run._builder, None)
        self.run = run
        self.hook = hook

    def _ref(self) -> int:
        return self._builder.read(self.run.id, self.hook)

    def __repr__(self) -> str:
        return f"<HookProxy run {self.run.id} {self.hook!r}>"

    def __getitem__(self, idx: Any) -> ValueProxy:
        b = self._builder
        mark = b.next_id
        read = self._ref()
        index = to_index(b, idx)  # constants made here stay: a folded write reuses the index
        out = ValueProxy(b, b.add(ir.Index, input=ir.Ref(read), index=index) if index else read)
        out._origin = _Origin(self, idx, index, read, read >= mark, {out._ref()} if index else set())
        return out

    def _origin_for_inplace(self) -> _Origin | None:
        # ``run[hook] += v``: the whole activation.
        mark = self._builder.next_id
        read = self._ref()
        return _Origin(self, _WHOLE, (), read, read >= mark)

    def __setitem__(self, idx: Any, value: Any) -> None:
        _assign(self, idx, value)

    def apply(self, op: Any) -> None:
        """Apply a declarative hook op here: ``run[hook].apply(ops.zero_ablate(head=3))``."""
        op.to_nodes(self._builder, self.run, self.hook)


def _assign(target: HookProxy, raw_index: Any, value: Any) -> None:
    """``target[raw_index] = value``: one Write, folded to add/mul for ``+=``, ``-=``, ``*=``."""
    b = target._builder
    run, hook = target.run.id, target.hook
    inplace = value._inplace if isinstance(value, ValueProxy) else None
    if inplace is not None:
        origin = inplace.origin
        same_target = (
            origin.hook.run.id == run
            and origin.hook.hook == hook
            and origin.raw_index is raw_index
            and b._reads.get((run, hook)) == origin.read  # no write to this activation since
        )
        if same_target and b.drop_if_unused(inplace.created):
            value._dead = inplace.source._dead = True
            if origin.fresh_read:  # unless the right-hand side reads it too
                b.drop_if_unused({origin.read})
            operand = inplace.operand
            if inplace.negate:
                operand = (
                    -operand
                    if isinstance(operand, float)
                    else ir.Ref(b.add(ir.Unary, op="neg", input=operand))
                )
            b.write(run, hook, operand, origin.index, inplace.mode)
            return
    operand = to_operand(b, value)
    index = () if raw_index is _WHOLE else to_index(b, raw_index)
    b.write(run, hook, operand, index, "set")


class RunProxy:
    """A forward pass: ``run[hook]`` is an activation, ``run.logits`` the output logits."""

    def __init__(self, builder: GraphBuilder, run_id: int, batch_size: int | None) -> None:
        self._builder = builder
        self.id = run_id
        self.batch_size = batch_size
        """Number of sequences (known from the tokens or the list of texts)."""

    def __getitem__(self, hook: str) -> HookProxy:
        return HookProxy(self, hook)

    def __setitem__(self, hook: str, value: Any) -> None:
        """Replace a whole activation: ``run[hook] = value`` (``run[hook] += v`` adds)."""
        _assign(HookProxy(self, hook), _WHOLE, value)

    @property
    def logits(self) -> HookProxy:
        """The output logits [batch, pos, d_vocab_out]."""
        return HookProxy(self, ir.LOGITS)

    def __repr__(self) -> str:
        return f"<RunProxy {self.id} batch={self.batch_size}>"


def make_run(
    builder: GraphBuilder,
    input: str | Sequence[str] | torch.Tensor | Sequence[int] | Sequence[Sequence[int]],
    prepend_bos: bool | None = None,
    attention_mask: torch.Tensor | None = None,
) -> RunProxy:
    """A Run node over texts (tokenized by the executor) or token ids ([pos] or [batch, pos])."""
    if isinstance(input, str):
        texts: tuple[str, ...] = (input,)
    elif isinstance(input, (list, tuple)) and input and all(isinstance(s, str) for s in input):
        texts = tuple(input)
    else:
        texts = ()
    mask = None
    if attention_mask is not None:
        m = _as_tensor(attention_mask)
        if m is None:
            raise TypeError("attention_mask must be a tensor")
        mask = ir.Ref(builder.constant(m[None] if m.dim() == 1 else m))
    if texts:
        run_id = builder.add(ir.Run, text=texts, prepend_bos=prepend_bos, attention_mask=mask)
        return RunProxy(builder, run_id, len(texts))
    tokens = _as_tensor(input)
    if tokens is None or tokens.numel() == 0:
        raise TypeError(
            "a run takes a string, a list of strings, or token ids (a [pos] or [batch, pos] int tensor)"
        )
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise TypeError(f"token ids must be integers, got {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens[None]  # [pos] -> [1, pos]
    if tokens.dim() != 2:
        raise ValueError(f"token ids must be [pos] or [batch, pos], got shape {tuple(tokens.shape)}")
    # prepend_bos only applies to text (TransformerLens ignores it for token ids too)
    run_id = builder.add(ir.Run, tokens=ir.Ref(builder.constant(tokens)), attention_mask=mask)
    return RunProxy(builder, run_id, int(tokens.shape[0]))


# ---------------------------------------------------------------------- results
class Saved:
    """A handle on a saved value; ``.value`` is the tensor once the graph has run."""

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
