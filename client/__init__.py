"""telelens.client: build intervention graphs the way you would write TransformerLens code.

- :class:`Tracer`: record reads, writes and tensor ops on runs, run them once on exit.
- :mod:`ops`: declarative hook ops (patch, ablations, steering, metrics) that work both as local
  TransformerLens hook functions and as graph nodes.
- :mod:`builders`: ``run_with_cache`` / ``run_with_hooks`` over any :class:`GraphBackend`.
- :func:`connect`: a :class:`RemoteModel` on a telelens server (see ``docs/remote.md``).

``import telelens.client`` imports torch and ``telelens.protos`` only: never Ray,
transformers or ``telelens.core``, and gRPC only once :func:`connect` is called, so a laptop
can drive a remote model with a light install.
"""

from telelens.client.errors import (
    AuthenticationError,
    IncompatibleServerError,
    InvalidRequestError,
    ModelNotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RemoteCancelledError,
    RemoteError,
    RemoteTimeoutError,
    ResourceExhaustedError,
    ServerError,
    ServerUnavailableError,
)
from telelens.client.remote import RemoteModel, connect, list_models, model_info
from telelens.trace import builders, ops, patching
from telelens.trace.backend import GraphBackend
from telelens.trace.graph import GraphBuilder, UnknownHookError
from telelens.trace.proxies import HookProxy, RunProxy, Saved, ValueProxy, WeightProxy
from telelens.trace.tracing import Tracer

__all__ = [
    "AuthenticationError",
    "GraphBackend",
    "GraphBuilder",
    "HookProxy",
    "IncompatibleServerError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RemoteCancelledError",
    "RemoteError",
    "RemoteModel",
    "RemoteTimeoutError",
    "ResourceExhaustedError",
    "RunProxy",
    "Saved",
    "ServerError",
    "ServerUnavailableError",
    "Tracer",
    "UnknownHookError",
    "ValueProxy",
    "WeightProxy",
    "builders",
    "connect",
    "list_models",
    "model_info",
    "ops",
    "patching",
]
