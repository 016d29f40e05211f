"""The worker's end of the front door <-> worker channel: ``telelens.v1.Worker`` (worker.proto).

A Ray actor call and its streaming generator cost several process hops each way (about
2.5 ms for a short run on the 2-core machine, against 1.3 ms for a gRPC stream), so runs
reach the worker over this direct gRPC channel while Ray keeps placing, watching and
replacing the workers. Results up to ``inline_bytes`` come back in the same stream; larger
ones are *parked* on the worker and collected by the front door through Ray's object store
(shared memory on one node, ~2x the rate of a second gRPC hop for bulk on a small machine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

import grpc

from telelens.protos import ir, worker_pb2
from telelens.server._private import failures, messages
from telelens.server._private.failures import Failure

if TYPE_CHECKING:
    from telelens.server._private.results import WireResult
    from telelens.server._private.worker import ModelWorker

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

TOKEN_KEY = "telelens-worker-token"
"""Metadata key of the secret the front door got from the worker through Ray."""
PARKED_KEY = "telelens-parked-run"
"""Trailing metadata key naming results left on the worker for collection through Ray."""
FAILURE_KEY = "telelens-worker-failure"
"""Trailing metadata key marking a status the worker chose (not a broken channel)."""
PARK_SECONDS = 120.0
"""How long parked results wait for the front door before they are dropped."""
SERVER_THREADS = 8
"""Concurrent streams a worker serves; runs queue for its one compute thread, streams don't."""


def limits_to_proto(limits: ir.Limits) -> worker_pb2.Limits:
    return worker_pb2.Limits(**dataclasses.asdict(limits))  # the message's fields are ir.Limits's


def limits_from_proto(message: worker_pb2.Limits) -> ir.Limits:
    return ir.Limits(**{f.name: getattr(message, f.name) for f in dataclasses.fields(ir.Limits)})


@dataclasses.dataclass
class ParkedRun:
    results: dict[str, WireResult]
    compute_seconds: float
    expires: float


class WorkerChannel:
    """Serves ``telelens.v1.Worker`` for one :class:`~telelens.server._private.worker.ModelWorker`."""

    def __init__(self, worker: ModelWorker, host: str) -> None:
        self.worker = worker
        self.token = secrets.token_urlsafe(24)
        self._parked: dict[str, ParkedRun] = {}
        self._parked_lock = threading.Lock()
        # The front door's messages are bounded by its own max_message_bytes; this end trusts it.
        unbounded = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self._server = grpc.server(ThreadPoolExecutor(SERVER_THREADS, "worker-channel"), options=unbounded)
        messages.add_servicer(self._server, worker_pb2, "Worker", self, raw_responses=("Run",))
        port = self._server.add_insecure_port(f"{_bracketed(host)}:0")
        self.address = f"{_bracketed(host)}:{port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)

    # ------------------------------------------------------------------ the RPC
    def Run(self, request: worker_pb2.WorkerRunRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        given = dict(context.invocation_metadata()).get(TOKEN_KEY, "")
        if not hmac.compare_digest(str(given), self.token):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {TOKEN_KEY}")
        limits = limits_from_proto(request.limits)
        chunk = max(1, request.chunk_bytes)

        def stop() -> bool:
            return not context.is_active()

        try:
            with contextlib.closing(self.worker.execute(request.graph, limits, stop)) as execution:
                results, compute = yield from _each(execution, lambda p: messages.item_messages(p, chunk))
        except Failure as f:
            _abort(context, f)
        total = sum(data.nbytes for data, _, _ in results.values())
        if total > request.inline_bytes:
            context.set_trailing_metadata(((PARKED_KEY, self.park(results, compute)),))
            return
        out = (
            m
            for item in self.worker.result_items(results, compute, stop)
            for m in messages.item_messages(item, chunk)
        )
        yield from messages.batched(out, request.batch_bytes)

    # ------------------------------------------------------------------ parked results
    def park(self, results: dict[str, WireResult], compute_seconds: float) -> str:
        """Keep ``results`` for :meth:`take`; returns their handle."""
        run_id = secrets.token_hex(8)
        now = time.monotonic()
        with self._parked_lock:
            for stale in [k for k, p in self._parked.items() if p.expires < now]:
                logger.warning("dropping results of run %s: not collected within %.0f s", stale, PARK_SECONDS)
                del self._parked[stale]
            self._parked[run_id] = ParkedRun(results, compute_seconds, now + PARK_SECONDS)
        return run_id

    def take(self, run_id: str) -> ParkedRun:
        """The parked results named ``run_id`` (each can be taken once)."""
        with self._parked_lock:
            parked = self._parked.pop(run_id, None)
        if parked is None:
            raise Failure("INTERNAL", f"{self.worker.worker_id} holds no results {run_id!r} (expired?)")
        return parked


def _each(
    generator: Generator[T, None, R], convert: Callable[[T], Iterable[bytes]]
) -> Generator[bytes, None, R]:
    """``yield from generator``, each item converted to messages; returns the generator's value."""
    while True:
        try:
            item = next(generator)
        except StopIteration as finished:
            return finished.value  # type: ignore[no-any-return]
        yield from convert(item)


def _abort(context: grpc.ServicerContext, failure: Failure) -> None:
    context.set_trailing_metadata(((FAILURE_KEY, "1"), *failures.trailing_metadata(failure)))
    context.abort(grpc.StatusCode[failure.code], failures.status_message(failure))


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
