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

The channel set-up is in :mod:`telelens.client.channel`, the error mapping in
:mod:`telelens.client.rpc_errors`, the reading of a Run stream in :mod:`telelens.client.run_stream`;
this module holds the calls, their deadlines and retries.

Nothing the server sends is unpickled: results are raw tensors checked against their headers.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from telelens.client import errors
from telelens.client.channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_PORT,
    RetryPolicy,
    channel_credentials,
    is_loopback,
    open_channel,
    parse_target,
)
from telelens.client.limits import DEFAULT, DEFAULT_MAX_RESULT_BYTES, RUN_TIMEOUT, Timeout
from telelens.client.progress import TRANSFER_THRESHOLD, CallProgress
from telelens.client.results import ResultAssembler, parse_run_response
from telelens.client.rpc_errors import map_rpc_error
from telelens.client.run_stream import RunStats, StreamFailed, read_run_stream
from telelens.protos import codec, graph_pb2, ir, service_pb2

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PORT",
    "INFO_TIMEOUT",
    "MIN_SERVER_PROTOCOL_VERSION",
    "PROTOCOL_VERSION",
    "RetryPolicy",
    "RunStats",
    "Transport",
    "channel_credentials",
    "map_rpc_error",
    "parse_target",
]

PROTOCOL_VERSION = ir.GRAPH_VERSION
"""The protocol this client speaks (sent in the handshake): the service protocol is the graph's."""
MIN_SERVER_PROTOCOL_VERSION = 1
"""The oldest server protocol this client can use."""
INFO_TIMEOUT = 30.0
"""Deadline (s) of the small calls (handshake, model list, model info) when none is given."""

_SERVICE = "/telelens.v1.Telelens/"


class Transport:
    """A connection to one telelens server.

    ``timeout`` is the deadline of every call in seconds (a Run's whole stream included);
    ``DEFAULT`` (the default) means ``RUN_TIMEOUT`` (600 s) for runs and ``INFO_TIMEOUT`` for the
    small calls, so a stalled server cannot hang the client forever; an explicit None means no
    deadline for runs (``INFO_TIMEOUT`` still bounds the small calls). ``chunk_bytes`` asks the
    server for that chunk size (0: its default). ``max_result_bytes`` caps what one Run may make
    this process allocate (default ``DEFAULT_MAX_RESULT_BYTES``; None: no cap): a header
    declaring more is refused with ``ProtocolError`` before anything is allocated.
    ``progress`` shows tqdm bars for slow stages and large transfers.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: Any = None,
        timeout: Timeout = DEFAULT,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        chunk_bytes: int = 0,
        max_result_bytes: int | None = DEFAULT_MAX_RESULT_BYTES,
        progress: bool = True,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
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
            if not self.tls and not is_loopback(self.target):
                warnings.warn(
                    f"sending an API key to {self.target} without TLS: use grpcs:// or tls=",
                    stacklevel=3,
                )
            self._metadata = (("authorization", f"Bearer {api_key}"),)
        self.channel = open_channel(
            self.target,
            tls,
            max_message_bytes=max_message_bytes,
            max_backoff=self.retry.max_backoff,
            options=options,
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
    def _deadline(self, timeout: float | None, *, run: bool) -> float | None:
        """The monotonic deadline of a call: ``timeout`` if given, else the transport's own.

        ``DEFAULT`` is ``RUN_TIMEOUT`` for a run, ``INFO_TIMEOUT`` for a small call; None means
        no deadline for a run, ``INFO_TIMEOUT`` for a small call (those are always bounded).
        """
        t: Timeout = timeout if timeout is not None else self.timeout
        if t is DEFAULT or (t is None and not run):
            t = RUN_TIMEOUT if run else INFO_TIMEOUT
        return None if t is None else time.monotonic() + t

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        """One unary call with bounded retries on UNAVAILABLE (these calls are idempotent)."""
        deadline = self._deadline(timeout, run=False)
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

        A stream that ends without one of the graph's saved values, or declares a result the
        graph did not save or larger than ``max_result_bytes``, raises ``ProtocolError``.

        Retried on UNAVAILABLE only while no result has arrived (a graph has no side effects
        and nothing of it has been consumed yet). Statistics go to ``last_run``.
        """
        msg = graph if isinstance(graph, graph_pb2.Graph) else codec.encode_graph(graph)
        request = service_pb2.RunRequest(
            model=model, graph=msg, chunk_bytes=self.chunk_bytes, accept_batches=True
        )
        saved = [n.save.name for n in msg.nodes if n.WhichOneof("op") == "save"]
        deadline = self._deadline(timeout, run=True)
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
                return self._stream(request, saved, deadline, stats, bars, start)
            except StreamFailed as failed:
                e = failed.error
                if not failed.received_results and self._should_retry(e, attempt, delays, deadline):
                    time.sleep(delays[attempt])
                    continue
                raise map_rpc_error(e, self.target, attempt + 1, time.monotonic() - start) from None
            finally:
                bars.close()
        raise AssertionError("unreachable")

    def _stream(
        self,
        request: Any,
        saved: Sequence[str],
        deadline: float | None,
        stats: RunStats,
        bars: CallProgress,
        start: float,
    ) -> dict[str, torch.Tensor]:
        def on_bytes(n: int) -> None:
            self.bytes_received += n
            bars.received(n)

        assembler = ResultAssembler(self.max_result_bytes, on_bytes, expected=saved)
        call = self._run(request, timeout=self._remaining(deadline), metadata=self._metadata)
        return read_run_stream(call, assembler, stats, bars, start)
