"""A RemoteModel without a server: its transport executes each graph on a local model in-process.

The executor is the one a server's workers run; code is allowed, as for a code-enabled key. The
transport keeps every graph it ran (``remote.transport.graphs``), so tests can count transfers.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from telelens.client.remote import RemoteModel
from telelens.core.graph.local import LocalBackend
from telelens.core.graph.weights import _all_names, weight_error, weight_shape
from telelens.protos import ir, service_pb2, tensor_pb2


class CountingTransport:
    """Executes each graph on a local model (code allowed, as for a code-enabled key); counts runs."""

    target = "in-process"

    def __init__(self, model: Any) -> None:
        self.backend = LocalBackend(model)
        self.graphs: list[ir.Graph] = []

    def run(self, model_name: str, graph: ir.Graph, **kwargs: Any) -> dict[str, torch.Tensor]:
        self.graphs.append(graph)
        return self.backend.execute(graph, allow_code=True)

    def close(self) -> None:
        pass


def in_process_remote(local: Any, allow_code: bool = False) -> RemoteModel:
    """A RemoteModel over ``local`` (hooks and weights listed as a server lists them)."""
    info = service_pb2.ModelInfo(name="tiny", config_json=json.dumps(local.cfg.to_dict(), default=str))
    for name in LocalBackend(local).hook_names:
        info.hooks.add(name=name, shape=local.hook_shapes()[name])
    for name in _all_names(local.cfg.n_layers):
        if weight_error(local, name) is None:
            shape, dtype = weight_shape(local, name)
            wire = tensor_pb2.DType.Value("DTYPE_" + str(dtype).removeprefix("torch.").upper())
            info.weights.add(name=name, shape=shape, dtype=wire)
    return RemoteModel(CountingTransport(local), info, allow_code=allow_code)  # type: ignore[arg-type]
