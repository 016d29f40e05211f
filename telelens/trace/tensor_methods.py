"""The torch-like methods of a traced value: arithmetic, elementwise ops, reductions, shape ops.

:class:`TensorMethods` is a mixin of :class:`~telelens.trace.values.ValueProxy`: each method
appends one IR node (``Binary``, ``Unary``, ``Reduce``, ``Gather``, ``Reshape``, ``Transpose``)
through the proxy's ``_new`` and turns operands into IR through its ``_operand``. Kept apart from
the proxy's bookkeeping (reads, writes, in-place folding) so that each file has one job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.trace.graph import GraphBuilder
    from telelens.trace.values import ValueProxy


def _dims(dim: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if dim is None:
        return None
    if isinstance(dim, int):
        return (dim,)
    dims = tuple(int(d) for d in dim)
    if not dims:
        raise ValueError("dim=() is ambiguous: pass None to reduce over every dimension")
    return dims


class TensorMethods:
    """Arithmetic, elementwise, reduction and shape methods that build graph nodes."""

    if TYPE_CHECKING:  # provided by ValueProxy
        _builder: GraphBuilder

        def _ref(self) -> int: ...
        def _new(self, cls: type[ir.Node], **fields: Any) -> ValueProxy: ...
        def _operand(self, x: Any) -> ir.Operand: ...
        def __getitem__(self, idx: Any) -> ValueProxy: ...

    # -- arithmetic
    def _binary(self, op: str, other: Any, reverse: bool = False) -> tuple[ValueProxy, ir.Operand]:
        mine = ir.Ref(self._ref())
        theirs = self._operand(other)
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

    # -- elementwise
    def _unary(
        self, op: str, dim: int | None = None, min: float | None = None, max: float | None = None
    ) -> ValueProxy:
        return self._new(ir.Unary, op=op, input=ir.Ref(self._ref()), dim=dim, min=min, max=max)

    def __neg__(self) -> ValueProxy:
        return self._unary("neg")

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
        idx = self._operand(index)
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

    # Last in the class body: from here on, ``float`` in an annotation would mean this method.
    def float(self) -> ValueProxy:
        """Cast to float32 (as ``tensor.float()``)."""
        return self._unary("float")
