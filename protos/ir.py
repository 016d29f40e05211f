"""The intervention graph as plain Python values: the contract between builder and executor.

A graph is a small SSA program: a tuple of nodes, each with an id larger than every id it
refers to (so a graph cannot have a cycle). The client builds these objects, the codec
(``telelens.protos.codec``) turns them into ``telelens.v1.Graph`` protobuf messages and
back, and the executor (``telelens.core.graph``) runs them. This module imports neither
torch nor protobuf, so every layer can depend on it.

Nodes:

- ``Run``: a forward pass over token ids (a ``Constant``) or texts the server tokenizes.
- ``Read(run, hook)``: an activation (``hook="logits"`` is the model output).
- ``Write(run, hook, value, index, mode)``: replace (``set``), ``add`` to or ``mul`` part of one.
- ``Constant``, ``Weight(name)``: uploaded tensors and model weights (``W_U``, ``blocks.3.attn.W_O``).
- ``Index``, ``Binary``, ``Unary``, ``Reduce``, ``Gather``, ``Reshape``, ``Transpose``: tensor ops.
- ``Save(input, name, dtype)``: the only values that come back.
- ``CodeHook(run, hook, payload)``: a cloudpickled ``fn(tensor, hook=...)``, run only where allowed.
- ``Sweep``: an activation-patching grid over layers x positions (x heads) with a metric sub-graph.
- ``Grad(of, wrt)``: the gradient of a scalar node with respect to the activation a Read reads.
- ``GradWrite``, ``GradCodeHook``: change the gradient flowing back through a hook (backward hooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GRAPH_VERSION = 1
"""Bumped only for changes an old executor cannot run; fields are only ever added."""

ITEMSIZE: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "bool": 1,
}
"""The one dtype table: every dtype a tensor may travel in, with its bytes per element. The wire
enum (``codec.WIRE_DTYPES``) and the torch mapping (``torch_tensors.torch_dtypes``) derive from it."""
DTYPES: tuple[str, ...] = tuple(ITEMSIZE)
DType = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "bool"]

BINARY_OPS = ("add", "sub", "mul", "div", "pow", "matmul", "maximum", "minimum")
UNARY_OPS = (
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "relu",
    "sigmoid",
    "tanh",
    "softmax",
    "log_softmax",
    "clamp",
    "float",
)
REDUCE_OPS = ("sum", "mean", "max", "min", "argmax", "argmin", "norm", "logsumexp")
WRITE_MODES = ("set", "add", "mul")
LOGITS = "logits"
"""Pseudo hook name: the model's output logits [batch, pos, d_vocab_out]."""


@dataclass(frozen=True)
class Ref:
    """A reference to an earlier node's value."""

    node: int


@dataclass(frozen=True)
class SliceItem:
    """``start:stop:step`` on one dimension."""

    start: int | None = None
    stop: int | None = None
    step: int | None = None


class _EllipsisItem:
    """``...`` in an index (a singleton, compared by identity)."""

    _instance: _EllipsisItem | None = None

    def __new__(cls) -> _EllipsisItem:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ELLIPSIS"


class _NewAxisItem:
    """``None`` in an index: insert a dimension of size 1."""

    _instance: _NewAxisItem | None = None

    def __new__(cls) -> _NewAxisItem:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEW_AXIS"


ELLIPSIS = _EllipsisItem()
NEW_AXIS = _NewAxisItem()

IndexItem = int | SliceItem | _EllipsisItem | _NewAxisItem | Ref
"""One item of an index: an int, a slice, ``...``, a new axis, or a node holding int/bool indices."""
Operand = Ref | float
"""A node's value or a Python scalar."""


@dataclass(frozen=True)
class TensorData:
    """A tensor as raw little-endian bytes: what travels on the wire."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Node:
    id: int


@dataclass(frozen=True)
class Run(Node):
    """A forward pass. Exactly one of ``tokens`` (a node with int ids [batch, pos]) or ``text``."""

    tokens: Ref | None = None
    text: tuple[str, ...] = ()
    prepend_bos: bool | None = None
    attention_mask: Ref | None = None


@dataclass(frozen=True)
class Read(Node):
    run: int
    hook: str


@dataclass(frozen=True)
class Write(Node):
    run: int
    hook: str
    value: Operand
    index: tuple[IndexItem, ...] = ()
    mode: str = "set"


@dataclass(frozen=True)
class Constant(Node):
    """An uploaded tensor. ``value`` is TensorData on the wire; local mode may hold a torch tensor."""

    value: object


@dataclass(frozen=True)
class Weight(Node):
    """A model weight by name: ``W_U``, ``W_E``, ``W_O`` (stacked), ``blocks.3.attn.W_O``, ..."""

    name: str


@dataclass(frozen=True)
class Index(Node):
    input: Ref
    index: tuple[IndexItem, ...]


@dataclass(frozen=True)
class Binary(Node):
    op: str
    a: Operand
    b: Operand


@dataclass(frozen=True)
class Unary(Node):
    op: str
    input: Ref
    dim: int | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Reduce(Node):
    op: str
    input: Ref
    dims: tuple[int, ...] | None = None
    keepdim: bool = False


@dataclass(frozen=True)
class Gather(Node):
    input: Ref
    dim: int
    index: Ref


@dataclass(frozen=True)
class Reshape(Node):
    input: Ref
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Transpose(Node):
    input: Ref
    dim0: int
    dim1: int


@dataclass(frozen=True)
class Save(Node):
    input: Ref
    name: str
    dtype: str | None = None


@dataclass(frozen=True)
class CodeHook(Node):
    """A cloudpickled ``fn(tensor, *, hook) -> tensor | None`` installed at ``hook`` of ``run``."""

    run: int
    hook: str
    payload: bytes


@dataclass(frozen=True)
class Sweep(Node):
    """Activation patching over a grid, executed by the server as one operation.

    For every cell of ``axes`` (a subset of "layer", "pos", "head", in that order), the
    ``activation`` (a TransformerLens short name like "resid_pre", "attn_out", "z") of the
    ``clean`` run is patched into the ``corrupted`` run at that cell, and ``metric`` is
    evaluated. ``metric`` is a sub-graph: its node ``metric_input`` is a placeholder
    (``SweepLogits``) for the patched run's logits and ``metric_output`` is a scalar.
    The node's value is the grid, shaped by ``axes``.
    """

    corrupted: int
    clean: int
    activation: str
    axes: tuple[str, ...]
    metric: tuple[Node, ...]
    metric_input: int
    metric_output: int


@dataclass(frozen=True)
class SweepLogits(Node):
    """Placeholder inside a sweep's metric sub-graph: the patched run's logits."""


@dataclass(frozen=True)
class Grad(Node):
    """The gradient of ``of`` (a scalar node) with respect to the activation the Read ``wrt`` reads.

    Shaped like that activation. Every Grad of one ``of`` comes from ONE backward pass; only the
    runs holding a ``wrt`` run with autograd. A Grad's value is detached (no second order).
    """

    of: Ref
    wrt: Ref


@dataclass(frozen=True)
class GradWrite(Node):
    """A backward hook: ``set``/``add``/``mul`` part of the gradient flowing back through ``hook``.

    The backward ops of a hook form a chain in node order: each sees the gradient as the ones
    before it left it, and a Grad of a Read that comes after one of them sees its result (as
    TransformerLens's in-place backward hooks do); the end of the chain flows to earlier hooks.
    """

    run: int
    hook: str
    value: Operand
    index: tuple[IndexItem, ...] = ()
    mode: str = "set"


@dataclass(frozen=True)
class GradCodeHook(Node):
    """A cloudpickled backward hook ``fn(grad, *, hook) -> grad | None`` at ``hook`` of ``run``."""

    run: int
    hook: str
    payload: bytes


NODE_TYPES: tuple[type[Node], ...] = (
    Run, Read, Write, Constant, Weight, Index, Binary, Unary, Reduce, Gather, Reshape, Transpose, Save,
    CodeHook, Sweep, SweepLogits, Grad, GradWrite, GradCodeHook,
)  # fmt: skip


@dataclass(frozen=True)
class Graph:
    nodes: tuple[Node, ...]
    version: int = GRAPH_VERSION

    def node(self, node_id: int) -> Node:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def saves(self) -> list[Save]:
        return [n for n in self.nodes if isinstance(n, Save)]


@dataclass(frozen=True)
class GraphError:
    """One reason a graph was refused: which node, which field, why."""

    node_id: int | None
    field: str
    reason: str

    def __str__(self) -> str:
        where = "graph" if self.node_id is None else f"node {self.node_id}"
        return f"{where}, {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"


class GraphValidationError(ValueError):
    """A graph was refused before any forward pass; ``errors`` names every offending node."""

    def __init__(self, errors: list[GraphError]) -> None:
        self.errors = list(errors)
        lines = "\n  ".join(str(e) for e in self.errors)
        super().__init__(f"invalid intervention graph ({len(self.errors)} error(s)):\n  {lines}")


UNBOUNDED = 1 << 62
"""A ceiling no graph reaches (what :meth:`Limits.unbounded` sets)."""


@dataclass(frozen=True)
class Limits:
    """The one limits type: ceilings on a graph, checked before any forward pass, and the code permission.

    Local runs use these defaults; a server starts from them (its config's ``limits:`` and each API
    key override them field by field) and sends them to its workers as ``worker.proto``'s ``Limits``
    message, field by field. Going over a ceiling is RESOURCE_EXHAUSTED on a server.
    """

    max_nodes: int = 10_000
    """Nodes in one graph, sweep sub-graphs included."""
    max_tokens: int = 65_536
    """Tokens over all runs of one graph."""
    max_constant_bytes: int = 256 << 20
    """Bytes of uploaded constants in one graph (256 MiB)."""
    max_result_bytes: int = 4 << 30
    """Bytes of saved results one graph may bring back (4 GiB)."""
    max_sweep_cells: int = 100_000
    """Cells over all patching sweeps of one graph."""
    allow_code: bool = False
    """Whether ``python(fn)`` code hooks may run (a permission, not a size)."""

    @classmethod
    def ceilings(cls) -> tuple[str, ...]:
        """The names of the size ceilings (every field but ``allow_code``)."""
        import dataclasses

        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "allow_code")

    def unbounded(self) -> Limits:
        """These limits with every ceiling lifted (``allow_code`` kept: a permission, not a size).

        A graph refused under ``self`` that passes under ``self.unbounded()`` was only too big.
        """
        import dataclasses
        import typing

        ceilings: dict[str, typing.Any] = dict.fromkeys(self.ceilings(), UNBOUNDED)
        return dataclasses.replace(self, **ceilings)


@dataclass
class ExecutionResult:
    """What comes back: saved values by name (torch tensors in core, TensorData on the wire)."""

    values: dict[str, object] = field(default_factory=dict)
