"""telelens.client: build intervention graphs the way you would write TransformerLens code.

- :class:`Tracer`: record reads, writes and tensor ops on runs, run them once on exit.
- :mod:`ops`: declarative hook ops (patch, ablations, steering, metrics) that work both as local
  TransformerLens hook functions and as graph nodes.
- :mod:`builders`: ``run_with_cache`` / ``run_with_hooks`` over any :class:`GraphBackend`.

This package imports torch and ``telelens.protos`` only: never Ray, transformers, gRPC or
``telelens.core``, so a laptop can drive a remote model with a light install.
"""

from telelens.client import builders, ops
from telelens.client.backend import GraphBackend
from telelens.client.graph import GraphBuilder, UnknownHookError
from telelens.client.proxies import HookProxy, RunProxy, Saved, ValueProxy, WeightProxy
from telelens.client.tracing import Tracer

# `connect` (the remote model over gRPC) is added here by the remote-client work; it must keep
# the gRPC import inside the function so that `import telelens.client` stays light.

__all__ = [
    "GraphBackend",
    "GraphBuilder",
    "HookProxy",
    "RunProxy",
    "Saved",
    "Tracer",
    "UnknownHookError",
    "ValueProxy",
    "WeightProxy",
    "builders",
    "ops",
]
