"""The exceptions a remote model raises, one per way a call can fail.

gRPC status codes become these (``telelens.client.transport`` does the mapping), each with
the server's own message. An invalid graph is not here: it raises
``telelens.protos.ir.GraphValidationError`` with the server's structured errors, exactly as
local mode does. This module imports nothing heavy, so the names are always importable.
"""

from __future__ import annotations


class RemoteError(Exception):
    """Base of every error a remote call raises; ``code`` is the gRPC status name ("UNAVAILABLE")."""

    code: str = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.graph_errors: list = []
        """Structured ``ir.GraphError``s the server sent along (e.g. which node exceeded a limit)."""


class IncompatibleServerError(RemoteError):
    """Client and server speak protocol versions that do not work together (found at connect)."""

    code = "FAILED_PRECONDITION"


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server could not be reached, even after the bounded retries."""

    code = "UNAVAILABLE"


class AuthenticationError(RemoteError, PermissionError):
    """UNAUTHENTICATED: no API key, or one the server does not know."""

    code = "UNAUTHENTICATED"


class PermissionDeniedError(RemoteError, PermissionError):
    """PERMISSION_DENIED: the key may not send code hooks."""

    code = "PERMISSION_DENIED"


class ModelNotFoundError(RemoteError, LookupError):
    """NOT_FOUND: no model of that name is served for this key.

    An unknown model and one the key may not use answer alike (a key cannot probe which models
    exist); the message lists the models the key may use.
    """

    code = "NOT_FOUND"


class ResourceExhaustedError(RemoteError):
    """RESOURCE_EXHAUSTED: a limit of the key or the server (tokens, result bytes, queue) was hit."""

    code = "RESOURCE_EXHAUSTED"


class RemoteTimeoutError(RemoteError, TimeoutError):
    """DEADLINE_EXCEEDED: the call did not finish within its ``timeout``."""

    code = "DEADLINE_EXCEEDED"


class InvalidRequestError(RemoteError, ValueError):
    """INVALID_ARGUMENT (or FAILED_PRECONDITION / OUT_OF_RANGE) without structured graph errors."""

    code = "INVALID_ARGUMENT"


class RemoteCancelledError(RemoteError):
    """CANCELLED: the call was cancelled (by this client or by the server)."""

    code = "CANCELLED"


class ServerError(RemoteError, RuntimeError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ...: the server failed; its message says why."""

    code = "INTERNAL"


class ProtocolError(RemoteError):
    """The server's response broke the wire contract (a chunk outside its result, a missing header)."""

    code = "DATA_LOSS"


__all__ = [
    "AuthenticationError",
    "IncompatibleServerError",
    "InvalidRequestError",
    "ModelNotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RemoteCancelledError",
    "RemoteError",
    "RemoteTimeoutError",
    "ResourceExhaustedError",
    "ServerError",
    "ServerUnavailableError",
]
