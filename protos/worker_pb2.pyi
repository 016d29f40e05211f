# Regenerate with `python -m telelens.protos.generate`; do not edit.
from . import graph_pb2 as _graph_pb2
from . import service_pb2 as _service_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Limits(_message.Message):
    __slots__ = ("max_nodes", "max_tokens", "max_constant_bytes", "max_result_bytes", "max_sweep_cells", "allow_code")
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONSTANT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SWEEP_CELLS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CODE_FIELD_NUMBER: _ClassVar[int]
    max_nodes: int
    max_tokens: int
    max_constant_bytes: int
    max_result_bytes: int
    max_sweep_cells: int
    allow_code: bool
    def __init__(self, max_nodes: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_constant_bytes: _Optional[int] = ..., max_result_bytes: _Optional[int] = ..., max_sweep_cells: _Optional[int] = ..., allow_code: _Optional[bool] = ...) -> None: ...

class WorkerRunRequest(_message.Message):
    __slots__ = ("graph", "limits", "chunk_bytes", "inline_bytes", "batch_bytes")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    INLINE_BYTES_FIELD_NUMBER: _ClassVar[int]
    BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    graph: _graph_pb2.Graph
    limits: Limits
    chunk_bytes: int
    inline_bytes: int
    batch_bytes: int
    def __init__(self, graph: _Optional[_Union[_graph_pb2.Graph, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., chunk_bytes: _Optional[int] = ..., inline_bytes: _Optional[int] = ..., batch_bytes: _Optional[int] = ...) -> None: ...
