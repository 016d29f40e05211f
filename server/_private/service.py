"""The ``telelens.v1.Telelens`` gRPC servicer (asyncio): handshake, model info, streamed runs.

Status codes (see ``docs/server.md``): an invalid graph is INVALID_ARGUMENT with the
serialized ``GraphErrors`` in the trailing metadata key ``telelens-graph-errors-bin``; a
graph over the caller's limits is RESOURCE_EXHAUSTED (same metadata); code hooks without
permission are PERMISSION_DENIED; an unknown model, or one the key may not use, is NOT_FOUND
(one message for both, so a key cannot probe which models exist); a run past its deadline is
DEADLINE_EXCEEDED; a worker that died mid-stream is UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

import telelens
from telelens.core.description import ModelDescription
from telelens.protos import ir, service_pb2, service_pb2_grpc, worker_pb2
from telelens.server._private import failures, messages
from telelens.server._private.auth import ApiKey, AuthError, KeyStore
from telelens.server._private.failures import Failure
from telelens.server._private.pool import WorkerPool
from telelens.server._private.worker_channel import limits_to_proto
from telelens.server.config import CHUNK_OVERHEAD, ServeConfig

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = ir.GRAPH_VERSION
"""The service protocol is the graph protocol: one number for both."""
MIN_PROTOCOL_VERSION = 1
"""The oldest client protocol this server serves."""
MIN_CHUNK_BYTES = 4096
INLINE_DECODE_BYTES = 64 << 10
"""Graphs up to this size decode on the event loop (well under a millisecond; a thread hop costs more)."""


def handshake(client_version: int) -> service_pb2.HandshakeResponse:
    """The server's answer to a client of protocol ``client_version``."""
    ok = MIN_PROTOCOL_VERSION <= client_version <= PROTOCOL_VERSION
    reason = ""
    if not ok:
        served = (
            f"{PROTOCOL_VERSION}"
            if MIN_PROTOCOL_VERSION == PROTOCOL_VERSION
            else f"{MIN_PROTOCOL_VERSION}..{PROTOCOL_VERSION}"
        )
        advice = "upgrade the server" if client_version > PROTOCOL_VERSION else "upgrade the client"
        shown = client_version if client_version else "none (0)"
        reason = f"client protocol version {shown} is not served: the server speaks {served}; {advice}"
    return service_pb2.HandshakeResponse(
        protocol_version=PROTOCOL_VERSION,
        min_protocol_version=MIN_PROTOCOL_VERSION,
        server_version=telelens.__version__,
        compatible=ok,
        reason=reason,
    )


def model_info_message(name: str, d: ModelDescription) -> service_pb2.ModelInfo:
    """``GetModelInfo``'s answer for the model served as ``name``."""
    info = service_pb2.ModelInfo(
        name=name,
        config_json=d.config_json,
        tokenizer_json=d.tokenizer_json,
        tokenizer_config_json=d.tokenizer_config_json,
    )
    for hook, dims in d.hooks:
        info.hooks.add(name=hook, shape=list(dims))
    for weight, shape, dtype in d.weights:
        info.weights.add(name=weight, shape=list(shape), dtype=messages.wire_dtype(dtype))
    return info


class TelelensService(service_pb2_grpc.TelelensServicer):
    """Serves the models of a started :class:`WorkerPool`; never loads a model itself."""

    def __init__(self, config: ServeConfig, pool: WorkerPool, keys: KeyStore) -> None:
        self.config = config
        self.pool = pool
        self.keys = keys
        self._in_flight: Counter[str] = Counter()  # key name -> runs in flight

    # ------------------------------------------------------------------ helpers
    async def _key(self, context: grpc.aio.ServicerContext) -> ApiKey:
        try:
            return self.keys.authenticate(context.invocation_metadata())
        except AuthError as e:
            await context.abort(e.code, e.message)
            raise  # unreachable: abort raises

    async def _model(self, name: str, key: ApiKey, context: grpc.aio.ServicerContext) -> ModelDescription:
        try:  # an unknown model and a forbidden one answer alike (NOT_FOUND)
            self.keys.authorize(key, name, self.pool.names)
        except AuthError as e:
            await context.abort(e.code, e.message)
        return self.pool.describe(name)

    def _prepare(
        self, request: service_pb2.RunRequest, limits: ir.Limits, chunk: int
    ) -> tuple[ir.Graph, bytes]:
        """The decoded graph (refused here if malformed or over the limits) and the worker's request."""
        graph = failures.decode(request.graph, limits)
        worker_request = worker_pb2.WorkerRunRequest(
            graph=request.graph,
            limits=limits_to_proto(limits),
            chunk_bytes=chunk,
            inline_bytes=self.config.inline_result_bytes,
            batch_bytes=chunk if request.accept_batches else 0,
        )
        return graph, worker_request.SerializeToString()

    @staticmethod
    async def _fail(context: grpc.aio.ServicerContext, failure: Failure) -> NoReturn:
        await context.abort(
            grpc.StatusCode[failure.code],
            failures.status_message(failure),
            trailing_metadata=failures.trailing_metadata(failure),
        )
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ RPCs
    async def Handshake(self, request, context):  # type: ignore[no-untyped-def]
        await self._key(context)
        return handshake(request.protocol_version)

    async def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        key = await self._key(context)
        out = service_pb2.ListModelsResponse()
        for name in self.pool.names:
            if not key.may_use(name):
                continue
            d, m = self.pool.describe(name), self.config.model(name)
            out.models.add(
                name=name,
                architecture=d.architecture,
                n_layers=d.n_layers,
                n_params=d.n_params,
                replicas=m.replicas,
                dtype=d.dtype,
                device=d.device,
            )
        return out

    async def GetModelInfo(self, request, context):  # type: ignore[no-untyped-def]
        key = await self._key(context)
        return model_info_message(request.model, await self._model(request.model, key, context))

    async def Run(self, request, context) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def,override]
        key = await self._key(context)
        await self._model(request.model, key, context)
        limits_config = self.config.limits.merged(key.limits)
        allow_code = self.config.allow_code and key.allow_code
        limits = limits_config.to_ir(allow_code)
        chunk = request.chunk_bytes or self.config.chunk_bytes
        chunk = max(MIN_CHUNK_BYTES, min(chunk, self.config.max_message_bytes - CHUNK_OVERHEAD))
        try:  # a graph with large constants decodes in a thread, so as not to stall the other calls
            if request.graph.ByteSize() <= INLINE_DECODE_BYTES:
                graph, worker_request = self._prepare(request, limits, chunk)
            else:
                graph, worker_request = await asyncio.to_thread(self._prepare, request, limits, chunk)
        except Failure as f:
            await self._fail(context, f)
        if failures.has_code(graph) and not allow_code:
            who = "this server" if not self.config.allow_code else f"API key {key.name!r}"
            await self._fail(context, Failure("PERMISSION_DENIED", f"code hooks are not allowed for {who}"))
        cap = limits_config.max_concurrent_runs
        if cap and self._in_flight[key.name] >= cap:
            await self._fail(
                context,
                Failure(
                    "RESOURCE_EXHAUSTED", f"API key {key.name!r} already has {cap} runs in flight (its limit)"
                ),
            )

        loop = asyncio.get_running_loop()
        timeout = limits_config.deadline_seconds
        client_left = context.time_remaining()
        if client_left is not None:
            timeout = min(timeout, client_left)
        self._in_flight[key.name] += 1
        try:
            async for message in self.pool.run(request.model, worker_request, chunk, loop.time() + timeout):
                yield message
        except Failure as f:
            await self._fail(context, f)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # a bug, or Ray failing in a way the pool does not know
            logger.exception("run on %s failed", request.model)
            await self._fail(context, Failure("INTERNAL", f"{type(e).__name__}: {e}"))
        finally:
            self._in_flight[key.name] -= 1


def add_to_server(servicer: TelelensService, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like the generated ``add_TelelensServicer_to_server``, except that
    ``Run`` yields the pre-serialized responses the workers produce."""
    messages.add_servicer(server, service_pb2, "Telelens", servicer, raw_responses=("Run",))
