"""The gRPC side of the client: channel, auth, retries, deadlines, errors, streamed results.

- One channel per :class:`Transport` (large message limits, fast reconnects), the API key as
  ``authorization: Bearer <key>`` metadata, TLS when asked (``grpcs://`` or ``tls=``).
- Calls that fail with UNAVAILABLE are retried with exponential backoff, a bounded number
  of times, and only where that is safe: a ``Run`` is retried only if nothing of its
  response stream has arrived yet.
- gRPC status codes become the named exceptions of :mod:`telelens.client.errors`, with the
  server's message; an invalid graph (INVALID_ARGUMENT with ``telelens-graph-errors-bin``
  trailing metadata) becomes ``ir.GraphValidationError`` with the server's structured errors.
- ``Run`` results are assembled by :mod:`telelens.client.results` straight into their final
  buffers; ``bytes_received`` counts the chunk payload bytes this transport has received.

Nothing the server sends is unpickled: results are raw tensors checked against their headers.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.experimental

from telelens.client import errors
from telelens.client.progress import TRANSFER_THRESHOLD, CallProgress
from telelens.client.results import Chunk, Malformed, ResultAssembler, parse_run_response, response_item
from telelens.protos import codec, graph_pb2, ir, service_pb2

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = ir.GRAPH_VERSION
"""The protocol this client speaks (sent in the handshake): the service protocol is the graph's."""
MIN_SERVER_PROTOCOL_VERSION = 1
"""The oldest server protocol this client can use."""
DEFAULT_PORT = 50051
DEFAULT_MAX_MESSAGE_BYTES = 256 << 20
"""Largest single message either way (ModelInfo carries the tokenizer; chunks are ~1 MiB)."""
INFO_TIMEOUT = 30.0
"""Deadline (s) of the small calls (handshake, model list, model info) when none is given."""

_SERVICE = "/telelens.v1.Telelens/"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for UNAVAILABLE: ``attempts`` tries in all, waits ``initial`` * 2^k (capped)."""

    attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> list[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        out, d = [], self.initial_backoff
        for _ in range(max(self.attempts - 1, 0)):
            out.append(min(d, self.max_backoff))
            d *= self.multiplier
        return out


@dataclass
class RunStats:
    """What one ``Run`` moved and how long it took (seconds are wall-clock on this client)."""

    results: int = 0
    result_bytes: int = 0
    chunk_bytes: int = 0
    chunks: int = 0
    attempts: int = 0
    seconds: float = 0.0
    """From sending the request to the end of the stream."""
    first_result_s: float | None = None
    """From sending the request to the first result header (compute + queueing)."""
    transfer_s: float = 0.0
    """From the first result header to the end of the stream."""
    compute_seconds: float | None = None
    """The server's own measure, from its summary."""
    worker: str = ""
    progress: list[tuple[int, int, str]] = field(default_factory=list)
    """Every Progress message (done, total, stage)."""


def parse_target(url: str) -> tuple[str, bool]:
    """``grpc://host:port`` -> ("host:port", tls=False); ``grpcs://`` -> tls=True; bare ``host:port`` too."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"expected a server address like 'grpc://host:50051', got {url!r}")
    tls = False
    for scheme, secure in (("grpc://", False), ("grpcs://", True), ("https://", True), ("http://", False)):
        if url.startswith(scheme):
            url, tls = url[len(scheme) :], secure
            break
    else:
        if "://" in url:
            raise ValueError(f"unsupported scheme in {url!r}: use grpc:// or grpcs://")
    url = url.rstrip("/")
    if not url:
        raise ValueError("the server address has no host")
    host_has_port = url.rsplit(":", 1)[-1].isdigit() and not url.endswith("]")
    if not host_has_port:
        url = f"{url}:{DEFAULT_PORT}"
    return url, tls


def _is_loopback(target: str) -> bool:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channel_credentials(tls: Any) -> grpc.ChannelCredentials | None:
    """``tls``: False/None (plaintext), True (system roots), a CA bundle path or PEM bytes, or credentials."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, (str, Path)):
        return grpc.ssl_channel_credentials(root_certificates=Path(tls).read_bytes())
    if isinstance(tls, bytes):
        return grpc.ssl_channel_credentials(root_certificates=tls)
    raise TypeError(
        f"tls must be a bool, a CA bundle path, PEM bytes or grpc.ChannelCredentials, got {tls!r}"
    )


# ---------------------------------------------------------------------------------------- errors
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


# ---------------------------------------------------------------------------------------- transport
class Transport:
    """A connection to one telelens server.

    ``timeout`` is the deadline of every call in seconds (a Run's whole stream included);
    None means none for runs and ``INFO_TIMEOUT`` for the small calls. ``chunk_bytes`` asks
    the server for that chunk size (0: its default). ``max_result_bytes`` caps what one Run
    may make this process allocate. ``progress`` shows tqdm bars for slow stages and large
    transfers.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: Any = None,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        chunk_bytes: int = 0,
        max_result_bytes: int | None = None,
        progress: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        from telelens import __version__

        self.target, scheme_tls = parse_target(target)
        tls = scheme_tls if tls is None else tls
        self.tls = tls not in (None, False)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.chunk_bytes = int(chunk_bytes)
        self.max_result_bytes = max_result_bytes
        self.progress = progress
        self.transfer_threshold = TRANSFER_THRESHOLD
        """Results larger than this (bytes, one Run) get a download bar."""
        self.progress_delay = 0.5
        """Seconds before any bar appears (quick calls show nothing)."""
        self.bytes_received = 0
        """Result bytes (chunk payloads) received by every Run of this transport."""
        self.wire_bytes_received = 0
        """Every Run response message, serialized (headers, progress and chunk framing included)."""
        self.last_run: RunStats | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        if api_key:
            if not self.tls and not _is_loopback(self.target):
                warnings.warn(
                    f"sending an API key to {self.target} without TLS: use grpcs:// or tls=",
                    stacklevel=3,
                )
            self._metadata = (("authorization", f"Bearer {api_key}"),)
        channel_options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.primary_user_agent", f"telelens-client/{__version__}"),
            # Reconnect quickly, so that our own bounded retries meet a fresh attempt each time.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(self.retry.max_backoff * 1000)),
            # Read Run's stream on the calling thread instead of handing every message over
            # from gRPC's channel thread (about 0.5-1 ms less per small request).
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            *options,
        ]
        creds = channel_credentials(tls)
        self.channel = (
            grpc.secure_channel(self.target, creds, options=channel_options)
            if creds is not None
            else grpc.insecure_channel(self.target, options=channel_options)
        )
        unary = self.channel.unary_unary
        self._handshake = unary(
            _SERVICE + "Handshake",
            request_serializer=service_pb2.HandshakeRequest.SerializeToString,
            response_deserializer=service_pb2.HandshakeResponse.FromString,
        )
        self._list_models = unary(
            _SERVICE + "ListModels",
            request_serializer=service_pb2.ListModelsRequest.SerializeToString,
            response_deserializer=service_pb2.ListModelsResponse.FromString,
        )
        self._model_info = unary(
            _SERVICE + "GetModelInfo",
            request_serializer=service_pb2.GetModelInfoRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInfo.FromString,
        )
        self._run = self.channel.unary_stream(
            _SERVICE + "Run",
            request_serializer=service_pb2.RunRequest.SerializeToString,
            response_deserializer=self._parse_response,  # chunks without a protobuf copy
        )

    def _parse_response(self, raw: bytes) -> Any:
        self.wire_bytes_received += len(raw)
        return parse_run_response(raw)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Transport {'grpcs' if self.tls else 'grpc'}://{self.target}>"

    # ------------------------------------------------------------------ plumbing
    def _deadline(self, timeout: float | None, default: float | None) -> float | None:
        t = timeout if timeout is not None else self.timeout if self.timeout is not None else default
        return None if t is None else time.monotonic() + t

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        """One unary call with bounded retries on UNAVAILABLE (these calls are idempotent)."""
        deadline = self._deadline(timeout, INFO_TIMEOUT)
        start = time.monotonic()
        delays = self.retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                return method(request, timeout=self._remaining(deadline), metadata=self._metadata)
            except grpc.RpcError as e:
                if self._should_retry(e, attempt, delays, deadline):
                    time.sleep(delays[attempt])
                    continue
                raise map_rpc_error(e, self.target, attempt + 1, time.monotonic() - start) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _should_retry(e: grpc.RpcError, attempt: int, delays: list[float], deadline: float | None) -> bool:
        if e.code() != grpc.StatusCode.UNAVAILABLE or attempt >= len(delays):
            return False
        return deadline is None or time.monotonic() + delays[attempt] < deadline

    # ------------------------------------------------------------------ calls
    def handshake(self, timeout: float | None = None) -> service_pb2.HandshakeResponse:
        """Exchange versions; raises ``IncompatibleServerError`` naming both when they do not fit."""
        from telelens import __version__

        # Read the module globals at call time (tests pretend to be other versions).
        client_protocol = PROTOCOL_VERSION
        request = service_pb2.HandshakeRequest(protocol_version=client_protocol, client_version=__version__)
        resp = self._unary(self._handshake, request, timeout)
        ours = f"client protocol {client_protocol} (telelens {__version__})"
        theirs = (
            f"server protocol {resp.protocol_version} (accepts clients from protocol "
            f"{resp.min_protocol_version}; telelens {resp.server_version or '?'})"
        )
        if not resp.compatible:
            reason = resp.reason or "the server refused this client"
            raise errors.IncompatibleServerError(
                f"incompatible telelens server at {self.target}: {reason} [{ours}; {theirs}]"
            )
        if resp.protocol_version < MIN_SERVER_PROTOCOL_VERSION:
            raise errors.IncompatibleServerError(
                f"incompatible telelens server at {self.target}: this client needs server protocol "
                f">= {MIN_SERVER_PROTOCOL_VERSION} [{ours}; {theirs}]; upgrade the server or use an older client"
            )
        return resp

    def list_models(self, timeout: float | None = None) -> list[service_pb2.ModelSummary]:
        return list(self._unary(self._list_models, service_pb2.ListModelsRequest(), timeout).models)

    def model_info(self, model: str, timeout: float | None = None) -> service_pb2.ModelInfo:
        return self._unary(self._model_info, service_pb2.GetModelInfoRequest(model=model), timeout)

    def run(
        self,
        model: str,
        graph: ir.Graph | graph_pb2.Graph,
        *,
        timeout: float | None = None,
        progress: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run ``graph`` on ``model``; every saved value by name (CPU tensors).

        Retried on UNAVAILABLE only while no result has arrived (a graph has no side effects
        and nothing of it has been consumed yet). Statistics go to ``last_run``.
        """
        msg = graph if isinstance(graph, graph_pb2.Graph) else codec.encode_graph(graph)
        request = service_pb2.RunRequest(
            model=model, graph=msg, chunk_bytes=self.chunk_bytes, accept_batches=True
        )
        deadline = self._deadline(timeout, None)
        delays = self.retry.delays()
        stats = RunStats()
        self.last_run = stats
        start = time.monotonic()
        for attempt in range(len(delays) + 1):
            stats.attempts = attempt + 1
            bars = CallProgress(
                self.progress if progress is None else progress, self.transfer_threshold, self.progress_delay
            )
            try:
                return self._stream(request, deadline, stats, bars, start)
            except _StreamFailed as failed:
                e = failed.error
                if not failed.received_results and self._should_retry(e, attempt, delays, deadline):
                    time.sleep(delays[attempt])
                    continue
                raise map_rpc_error(e, self.target, attempt + 1, time.monotonic() - start) from None
            finally:
                bars.close()
        raise AssertionError("unreachable")

    def _stream(
        self, request: Any, deadline: float | None, stats: RunStats, bars: CallProgress, start: float
    ) -> dict[str, torch.Tensor]:
        def on_bytes(n: int) -> None:
            self.bytes_received += n
            bars.received(n)

        assembler = ResultAssembler(self.max_result_bytes, on_bytes)
        call = self._run(request, timeout=self._remaining(deadline), metadata=self._metadata)
        finished = False
        first_result = None

        def receive(item: service_pb2.RunResponse | Chunk) -> None:
            nonlocal first_result
            if isinstance(item, Chunk):
                assembler.chunk(item)
                return
            kind = item.WhichOneof("item")
            if kind == "header":
                if first_result is None:
                    first_result = time.monotonic()
                    stats.first_result_s = first_result - start
                bars.announce(assembler.header(item.header))
            elif kind == "progress":
                p = item.progress
                stats.progress.append((p.done, p.total, p.stage))
                bars.server(p.done, p.total, p.stage)
            elif kind == "done":
                stats.compute_seconds = item.done.compute_seconds
                stats.worker = item.done.worker
            elif kind == "batch":
                for inner in item.batch.items:
                    receive(response_item(inner))
            # an unknown item (a newer server): ignored, fields are only ever added

        try:
            try:
                for item in call:
                    if isinstance(item, Malformed):
                        raise errors.ProtocolError(item.reason)
                    receive(item)
            except grpc.RpcError as e:
                raise _StreamFailed(e, received_results=first_result is not None) from None
            results = assembler.finish()
            finished = True
        finally:
            if not finished:
                call.cancel()  # stop the server's work and free the stream
        end = time.monotonic()
        a = assembler.stats
        stats.results, stats.result_bytes, stats.chunk_bytes, stats.chunks = (
            a.results, a.result_bytes, a.chunk_bytes, a.chunks,
        )  # fmt: skip
        stats.seconds = end - start
        stats.transfer_s = end - first_result if first_result is not None else 0.0
        return results


class _StreamFailed(Exception):
    def __init__(self, error: grpc.RpcError, received_results: bool) -> None:
        super().__init__(error)
        self.error = error
        self.received_results = received_results
