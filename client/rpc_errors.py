"""gRPC failures as the named exceptions of :mod:`telelens.client.errors`.

An invalid graph (INVALID_ARGUMENT with ``telelens-graph-errors-bin`` trailing metadata)
becomes ``ir.GraphValidationError`` with the server's structured errors. Kept apart from
:mod:`telelens.client.errors`, which must import without gRPC.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from telelens.client import errors
from telelens.protos import codec, ir

logger = logging.getLogger("telelens.client.transport")  # where these warnings were always logged


_NAMED: dict[grpc.StatusCode, type[errors.RemoteError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.ServerUnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: errors.ModelNotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.RemoteTimeoutError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidRequestError,
    grpc.StatusCode.CANCELLED: errors.RemoteCancelledError,
}


def _graph_errors(call: Any) -> list[ir.GraphError] | None:
    try:
        metadata = call.trailing_metadata() or ()
    except Exception:
        return None
    for key, value in metadata:
        if key == codec.GRAPH_ERRORS_KEY:
            try:
                return codec.errors_from_proto(value if isinstance(value, bytes) else value.encode())
            except Exception:
                logger.warning("telelens: undecodable %s metadata from the server", codec.GRAPH_ERRORS_KEY)
                return None
    return None


def map_rpc_error(e: grpc.RpcError, target: str = "", attempts: int = 1, waited: float = 0.0) -> Exception:
    """The Python exception for a failed call (``ir.GraphValidationError`` for a refused graph).

    Structured graph errors sent with another code (a graph over the key's limits is
    RESOURCE_EXHAUSTED) are kept on the exception as ``graph_errors``.
    """
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    graph_errors = _graph_errors(e)
    if code == grpc.StatusCode.INVALID_ARGUMENT and graph_errors:
        return ir.GraphValidationError(graph_errors)
    cls = _NAMED.get(code, errors.ServerError)
    where = f"telelens server {target}" if target else "telelens server"
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"{where} is unavailable after {attempts} attempt(s) over {waited:.1f} s: {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{where}: the call ran past its deadline (pass a larger timeout=): {details}"
    else:
        message = f"{where}: {details}"
    error = cls(message, code=code.name if code is not None else None)
    error.graph_errors = graph_errors or []
    return error
