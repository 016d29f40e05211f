# Regenerate with `python -m telelens.protos.generate`; do not edit.
from . import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WriteMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WRITE_MODE_UNSPECIFIED: _ClassVar[WriteMode]
    WRITE_MODE_SET: _ClassVar[WriteMode]
    WRITE_MODE_ADD: _ClassVar[WriteMode]
    WRITE_MODE_MUL: _ClassVar[WriteMode]

class BinaryOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BINARY_OP_UNSPECIFIED: _ClassVar[BinaryOp]
    BINARY_OP_ADD: _ClassVar[BinaryOp]
    BINARY_OP_SUB: _ClassVar[BinaryOp]
    BINARY_OP_MUL: _ClassVar[BinaryOp]
    BINARY_OP_DIV: _ClassVar[BinaryOp]
    BINARY_OP_POW: _ClassVar[BinaryOp]
    BINARY_OP_MATMUL: _ClassVar[BinaryOp]
    BINARY_OP_MAXIMUM: _ClassVar[BinaryOp]
    BINARY_OP_MINIMUM: _ClassVar[BinaryOp]

class UnaryOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNARY_OP_UNSPECIFIED: _ClassVar[UnaryOp]
    UNARY_OP_NEG: _ClassVar[UnaryOp]
    UNARY_OP_ABS: _ClassVar[UnaryOp]
    UNARY_OP_EXP: _ClassVar[UnaryOp]
    UNARY_OP_LOG: _ClassVar[UnaryOp]
    UNARY_OP_SQRT: _ClassVar[UnaryOp]
    UNARY_OP_RELU: _ClassVar[UnaryOp]
    UNARY_OP_SIGMOID: _ClassVar[UnaryOp]
    UNARY_OP_TANH: _ClassVar[UnaryOp]
    UNARY_OP_SOFTMAX: _ClassVar[UnaryOp]
    UNARY_OP_LOG_SOFTMAX: _ClassVar[UnaryOp]
    UNARY_OP_CLAMP: _ClassVar[UnaryOp]
    UNARY_OP_FLOAT: _ClassVar[UnaryOp]

class ReduceOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDUCE_OP_UNSPECIFIED: _ClassVar[ReduceOp]
    REDUCE_OP_SUM: _ClassVar[ReduceOp]
    REDUCE_OP_MEAN: _ClassVar[ReduceOp]
    REDUCE_OP_MAX: _ClassVar[ReduceOp]
    REDUCE_OP_MIN: _ClassVar[ReduceOp]
    REDUCE_OP_ARGMAX: _ClassVar[ReduceOp]
    REDUCE_OP_ARGMIN: _ClassVar[ReduceOp]
    REDUCE_OP_NORM: _ClassVar[ReduceOp]
    REDUCE_OP_LOGSUMEXP: _ClassVar[ReduceOp]

class SweepAxis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SWEEP_AXIS_UNSPECIFIED: _ClassVar[SweepAxis]
    SWEEP_AXIS_LAYER: _ClassVar[SweepAxis]
    SWEEP_AXIS_POS: _ClassVar[SweepAxis]
    SWEEP_AXIS_HEAD: _ClassVar[SweepAxis]
WRITE_MODE_UNSPECIFIED: WriteMode
WRITE_MODE_SET: WriteMode
WRITE_MODE_ADD: WriteMode
WRITE_MODE_MUL: WriteMode
BINARY_OP_UNSPECIFIED: BinaryOp
BINARY_OP_ADD: BinaryOp
BINARY_OP_SUB: BinaryOp
BINARY_OP_MUL: BinaryOp
BINARY_OP_DIV: BinaryOp
BINARY_OP_POW: BinaryOp
BINARY_OP_MATMUL: BinaryOp
BINARY_OP_MAXIMUM: BinaryOp
BINARY_OP_MINIMUM: BinaryOp
UNARY_OP_UNSPECIFIED: UnaryOp
UNARY_OP_NEG: UnaryOp
UNARY_OP_ABS: UnaryOp
UNARY_OP_EXP: UnaryOp
UNARY_OP_LOG: UnaryOp
UNARY_OP_SQRT: UnaryOp
UNARY_OP_RELU: UnaryOp
UNARY_OP_SIGMOID: UnaryOp
UNARY_OP_TANH: UnaryOp
UNARY_OP_SOFTMAX: UnaryOp
UNARY_OP_LOG_SOFTMAX: UnaryOp
UNARY_OP_CLAMP: UnaryOp
UNARY_OP_FLOAT: UnaryOp
REDUCE_OP_UNSPECIFIED: ReduceOp
REDUCE_OP_SUM: ReduceOp
REDUCE_OP_MEAN: ReduceOp
REDUCE_OP_MAX: ReduceOp
REDUCE_OP_MIN: ReduceOp
REDUCE_OP_ARGMAX: ReduceOp
REDUCE_OP_ARGMIN: ReduceOp
REDUCE_OP_NORM: ReduceOp
REDUCE_OP_LOGSUMEXP: ReduceOp
SWEEP_AXIS_UNSPECIFIED: SweepAxis
SWEEP_AXIS_LAYER: SweepAxis
SWEEP_AXIS_POS: SweepAxis
SWEEP_AXIS_HEAD: SweepAxis

class Graph(_message.Message):
    __slots__ = ("version", "nodes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    version: int
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, version: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class IndexItem(_message.Message):
    __slots__ = ("integer", "slice", "ellipsis", "new_axis", "tensor")
    class Slice(_message.Message):
        __slots__ = ("start", "stop", "step")
        START_FIELD_NUMBER: _ClassVar[int]
        STOP_FIELD_NUMBER: _ClassVar[int]
        STEP_FIELD_NUMBER: _ClassVar[int]
        start: int
        stop: int
        step: int
        def __init__(self, start: _Optional[int] = ..., stop: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...
    class Ellipsis(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class NewAxis(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    ELLIPSIS_FIELD_NUMBER: _ClassVar[int]
    NEW_AXIS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    integer: int
    slice: IndexItem.Slice
    ellipsis: IndexItem.Ellipsis
    new_axis: IndexItem.NewAxis
    tensor: int
    def __init__(self, integer: _Optional[int] = ..., slice: _Optional[_Union[IndexItem.Slice, _Mapping]] = ..., ellipsis: _Optional[_Union[IndexItem.Ellipsis, _Mapping]] = ..., new_axis: _Optional[_Union[IndexItem.NewAxis, _Mapping]] = ..., tensor: _Optional[int] = ...) -> None: ...

class Operand(_message.Message):
    __slots__ = ("node", "scalar")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SCALAR_FIELD_NUMBER: _ClassVar[int]
    node: int
    scalar: float
    def __init__(self, node: _Optional[int] = ..., scalar: _Optional[float] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("id", "run", "read", "write", "constant", "weight", "index", "binary", "unary", "reduce", "gather", "reshape", "transpose", "save", "code_hook", "sweep", "sweep_logits", "grad", "grad_write", "grad_code_hook")
    class Run(_message.Message):
        __slots__ = ("tokens", "text", "prepend_bos", "attention_mask")
        TOKENS_FIELD_NUMBER: _ClassVar[int]
        TEXT_FIELD_NUMBER: _ClassVar[int]
        PREPEND_BOS_FIELD_NUMBER: _ClassVar[int]
        ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
        tokens: int
        text: _containers.RepeatedScalarFieldContainer[str]
        prepend_bos: bool
        attention_mask: int
        def __init__(self, tokens: _Optional[int] = ..., text: _Optional[_Iterable[str]] = ..., prepend_bos: _Optional[bool] = ..., attention_mask: _Optional[int] = ...) -> None: ...
    class Read(_message.Message):
        __slots__ = ("run", "hook")
        RUN_FIELD_NUMBER: _ClassVar[int]
        HOOK_FIELD_NUMBER: _ClassVar[int]
        run: int
        hook: str
        def __init__(self, run: _Optional[int] = ..., hook: _Optional[str] = ...) -> None: ...
    class Write(_message.Message):
        __slots__ = ("run", "hook", "value", "index", "mode")
        RUN_FIELD_NUMBER: _ClassVar[int]
        HOOK_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        INDEX_FIELD_NUMBER: _ClassVar[int]
        MODE_FIELD_NUMBER: _ClassVar[int]
        run: int
        hook: str
        value: Operand
        index: _containers.RepeatedCompositeFieldContainer[IndexItem]
        mode: WriteMode
        def __init__(self, run: _Optional[int] = ..., hook: _Optional[str] = ..., value: _Optional[_Union[Operand, _Mapping]] = ..., index: _Optional[_Iterable[_Union[IndexItem, _Mapping]]] = ..., mode: _Optional[_Union[WriteMode, str]] = ...) -> None: ...
    class Constant(_message.Message):
        __slots__ = ("value",)
        VALUE_FIELD_NUMBER: _ClassVar[int]
        value: _tensor_pb2.Tensor
        def __init__(self, value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    class Weight(_message.Message):
        __slots__ = ("name",)
        NAME_FIELD_NUMBER: _ClassVar[int]
        name: str
        def __init__(self, name: _Optional[str] = ...) -> None: ...
    class Index(_message.Message):
        __slots__ = ("input", "index")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        INDEX_FIELD_NUMBER: _ClassVar[int]
        input: int
        index: _containers.RepeatedCompositeFieldContainer[IndexItem]
        def __init__(self, input: _Optional[int] = ..., index: _Optional[_Iterable[_Union[IndexItem, _Mapping]]] = ...) -> None: ...
    class Binary(_message.Message):
        __slots__ = ("op", "a", "b")
        OP_FIELD_NUMBER: _ClassVar[int]
        A_FIELD_NUMBER: _ClassVar[int]
        B_FIELD_NUMBER: _ClassVar[int]
        op: BinaryOp
        a: Operand
        b: Operand
        def __init__(self, op: _Optional[_Union[BinaryOp, str]] = ..., a: _Optional[_Union[Operand, _Mapping]] = ..., b: _Optional[_Union[Operand, _Mapping]] = ...) -> None: ...
    class Unary(_message.Message):
        __slots__ = ("op", "input", "dim", "min", "max")
        OP_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        DIM_FIELD_NUMBER: _ClassVar[int]
        MIN_FIELD_NUMBER: _ClassVar[int]
        MAX_FIELD_NUMBER: _ClassVar[int]
        op: UnaryOp
        input: int
        dim: int
        min: float
        max: float
        def __init__(self, op: _Optional[_Union[UnaryOp, str]] = ..., input: _Optional[int] = ..., dim: _Optional[int] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...
    class Reduce(_message.Message):
        __slots__ = ("op", "input", "dims", "keepdim")
        class Dims(_message.Message):
            __slots__ = ("values",)
            VALUES_FIELD_NUMBER: _ClassVar[int]
            values: _containers.RepeatedScalarFieldContainer[int]
            def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...
        OP_FIELD_NUMBER: _ClassVar[int]
        INPUT_FIELD_NUMBER: _ClassVar[int]
        DIMS_FIELD_NUMBER: _ClassVar[int]
        KEEPDIM_FIELD_NUMBER: _ClassVar[int]
        op: ReduceOp
        input: int
        dims: Node.Reduce.Dims
        keepdim: bool
        def __init__(self, op: _Optional[_Union[ReduceOp, str]] = ..., input: _Optional[int] = ..., dims: _Optional[_Union[Node.Reduce.Dims, _Mapping]] = ..., keepdim: _Optional[bool] = ...) -> None: ...
    class Gather(_message.Message):
        __slots__ = ("input", "dim", "index")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        DIM_FIELD_NUMBER: _ClassVar[int]
        INDEX_FIELD_NUMBER: _ClassVar[int]
        input: int
        dim: int
        index: int
        def __init__(self, input: _Optional[int] = ..., dim: _Optional[int] = ..., index: _Optional[int] = ...) -> None: ...
    class Reshape(_message.Message):
        __slots__ = ("input", "shape")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        SHAPE_FIELD_NUMBER: _ClassVar[int]
        input: int
        shape: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, input: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...
    class Transpose(_message.Message):
        __slots__ = ("input", "dim0", "dim1")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        DIM0_FIELD_NUMBER: _ClassVar[int]
        DIM1_FIELD_NUMBER: _ClassVar[int]
        input: int
        dim0: int
        dim1: int
        def __init__(self, input: _Optional[int] = ..., dim0: _Optional[int] = ..., dim1: _Optional[int] = ...) -> None: ...
    class Save(_message.Message):
        __slots__ = ("input", "name", "dtype")
        INPUT_FIELD_NUMBER: _ClassVar[int]
        NAME_FIELD_NUMBER: _ClassVar[int]
        DTYPE_FIELD_NUMBER: _ClassVar[int]
        input: int
        name: str
        dtype: _tensor_pb2.DType
        def __init__(self, input: _Optional[int] = ..., name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ...) -> None: ...
    class CodeHook(_message.Message):
        __slots__ = ("run", "hook", "payload")
        RUN_FIELD_NUMBER: _ClassVar[int]
        HOOK_FIELD_NUMBER: _ClassVar[int]
        PAYLOAD_FIELD_NUMBER: _ClassVar[int]
        run: int
        hook: str
        payload: bytes
        def __init__(self, run: _Optional[int] = ..., hook: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...
    class Sweep(_message.Message):
        __slots__ = ("corrupted", "clean", "activation", "axes", "metric", "metric_input", "metric_output")
        CORRUPTED_FIELD_NUMBER: _ClassVar[int]
        CLEAN_FIELD_NUMBER: _ClassVar[int]
        ACTIVATION_FIELD_NUMBER: _ClassVar[int]
        AXES_FIELD_NUMBER: _ClassVar[int]
        METRIC_FIELD_NUMBER: _ClassVar[int]
        METRIC_INPUT_FIELD_NUMBER: _ClassVar[int]
        METRIC_OUTPUT_FIELD_NUMBER: _ClassVar[int]
        corrupted: int
        clean: int
        activation: str
        axes: _containers.RepeatedScalarFieldContainer[SweepAxis]
        metric: _containers.RepeatedCompositeFieldContainer[Node]
        metric_input: int
        metric_output: int
        def __init__(self, corrupted: _Optional[int] = ..., clean: _Optional[int] = ..., activation: _Optional[str] = ..., axes: _Optional[_Iterable[_Union[SweepAxis, str]]] = ..., metric: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., metric_input: _Optional[int] = ..., metric_output: _Optional[int] = ...) -> None: ...
    class SweepLogits(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Grad(_message.Message):
        __slots__ = ("of", "wrt")
        OF_FIELD_NUMBER: _ClassVar[int]
        WRT_FIELD_NUMBER: _ClassVar[int]
        of: int
        wrt: int
        def __init__(self, of: _Optional[int] = ..., wrt: _Optional[int] = ...) -> None: ...
    class GradWrite(_message.Message):
        __slots__ = ("run", "hook", "value", "index", "mode")
        RUN_FIELD_NUMBER: _ClassVar[int]
        HOOK_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        INDEX_FIELD_NUMBER: _ClassVar[int]
        MODE_FIELD_NUMBER: _ClassVar[int]
        run: int
        hook: str
        value: Operand
        index: _containers.RepeatedCompositeFieldContainer[IndexItem]
        mode: WriteMode
        def __init__(self, run: _Optional[int] = ..., hook: _Optional[str] = ..., value: _Optional[_Union[Operand, _Mapping]] = ..., index: _Optional[_Iterable[_Union[IndexItem, _Mapping]]] = ..., mode: _Optional[_Union[WriteMode, str]] = ...) -> None: ...
    class GradCodeHook(_message.Message):
        __slots__ = ("run", "hook", "payload")
        RUN_FIELD_NUMBER: _ClassVar[int]
        HOOK_FIELD_NUMBER: _ClassVar[int]
        PAYLOAD_FIELD_NUMBER: _ClassVar[int]
        run: int
        hook: str
        payload: bytes
        def __init__(self, run: _Optional[int] = ..., hook: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    CONSTANT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    UNARY_FIELD_NUMBER: _ClassVar[int]
    REDUCE_FIELD_NUMBER: _ClassVar[int]
    GATHER_FIELD_NUMBER: _ClassVar[int]
    RESHAPE_FIELD_NUMBER: _ClassVar[int]
    TRANSPOSE_FIELD_NUMBER: _ClassVar[int]
    SAVE_FIELD_NUMBER: _ClassVar[int]
    CODE_HOOK_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    SWEEP_LOGITS_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    GRAD_WRITE_FIELD_NUMBER: _ClassVar[int]
    GRAD_CODE_HOOK_FIELD_NUMBER: _ClassVar[int]
    id: int
    run: Node.Run
    read: Node.Read
    write: Node.Write
    constant: Node.Constant
    weight: Node.Weight
    index: Node.Index
    binary: Node.Binary
    unary: Node.Unary
    reduce: Node.Reduce
    gather: Node.Gather
    reshape: Node.Reshape
    transpose: Node.Transpose
    save: Node.Save
    code_hook: Node.CodeHook
    sweep: Node.Sweep
    sweep_logits: Node.SweepLogits
    grad: Node.Grad
    grad_write: Node.GradWrite
    grad_code_hook: Node.GradCodeHook
    def __init__(self, id: _Optional[int] = ..., run: _Optional[_Union[Node.Run, _Mapping]] = ..., read: _Optional[_Union[Node.Read, _Mapping]] = ..., write: _Optional[_Union[Node.Write, _Mapping]] = ..., constant: _Optional[_Union[Node.Constant, _Mapping]] = ..., weight: _Optional[_Union[Node.Weight, _Mapping]] = ..., index: _Optional[_Union[Node.Index, _Mapping]] = ..., binary: _Optional[_Union[Node.Binary, _Mapping]] = ..., unary: _Optional[_Union[Node.Unary, _Mapping]] = ..., reduce: _Optional[_Union[Node.Reduce, _Mapping]] = ..., gather: _Optional[_Union[Node.Gather, _Mapping]] = ..., reshape: _Optional[_Union[Node.Reshape, _Mapping]] = ..., transpose: _Optional[_Union[Node.Transpose, _Mapping]] = ..., save: _Optional[_Union[Node.Save, _Mapping]] = ..., code_hook: _Optional[_Union[Node.CodeHook, _Mapping]] = ..., sweep: _Optional[_Union[Node.Sweep, _Mapping]] = ..., sweep_logits: _Optional[_Union[Node.SweepLogits, _Mapping]] = ..., grad: _Optional[_Union[Node.Grad, _Mapping]] = ..., grad_write: _Optional[_Union[Node.GradWrite, _Mapping]] = ..., grad_code_hook: _Optional[_Union[Node.GradCodeHook, _Mapping]] = ...) -> None: ...

class GraphError(_message.Message):
    __slots__ = ("node_id", "field", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    field: str
    reason: str
    def __init__(self, node_id: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GraphErrors(_message.Message):
    __slots__ = ("errors",)
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    errors: _containers.RepeatedCompositeFieldContainer[GraphError]
    def __init__(self, errors: _Optional[_Iterable[_Union[GraphError, _Mapping]]] = ...) -> None: ...
