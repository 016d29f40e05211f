"""A model replica: loads one model once, describes it, and runs graphs as a stream of items.

:class:`ModelWorker` is a plain class (usable in-process); its Ray actor form is
:class:`~telelens.server._private.ray_worker.RayModelWorker`. What :meth:`ModelWorker.run`
yields is in :mod:`~telelens.server._private.results`; the model it loads, in
:mod:`~telelens.server._private.loading`; its description comes from the core
(:func:`telelens.core.description.describe_model`).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from telelens.protos import codec, graph_pb2, ir
from telelens.server._private import failures
from telelens.server._private.failures import Failure
from telelens.server._private.loading import load_model, weight_processing_fields
from telelens.server._private.results import (
    PIECE_BYTES,
    Done,
    Header,
    Item,
    Progress,
    ResultPiece,
    WireResult,
    wire_result,
)
from telelens.server.config import ModelConfig

if TYPE_CHECKING:
    from telelens.core.description import ModelDescription

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1
"""Seconds between progress items; none before the first interval has passed (a short run
reports none), and the last pass is reported once any was."""
_POLL = 0.05
"""How often a waiting run checks whether it was cancelled."""


class _Stopped(Exception):
    """Raised inside the executor's progress callback once the run was cancelled."""


class ModelWorker:
    """One replica of one model: loaded once here, then described and run many times."""

    def __init__(
        self,
        model: ModelConfig,
        replica: int = 0,
        chunk_bytes: int = 8 << 20,
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.config = model
        self.replica = replica
        self.chunk_bytes = chunk_bytes
        self.progress_interval = progress_interval
        self.worker_id = f"{model.name}/{replica}@{socket.gethostname()}:{os.getpid()}"
        # Every torch operation of this worker (loading included) runs on this one thread. OpenMP
        # keeps a thread team per thread that starts parallel work; with a second team in the
        # process, libgomp counts more threads than cores and stops spinning between parallel
        # regions: every forward pass gets ~1.6x slower (12 -> 19 ms for a short SmolLM2 run).
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"compute-{model.name}")
        started = time.perf_counter()
        self.model, self.weight_processing = self._compute.submit(load_model, model).result()
        logger.info("%s: loaded %s in %.1f s", self.worker_id, model.source, time.perf_counter() - started)
        self._lock = threading.Lock()  # hooks are installed on the shared model: one run at a time

    # ------------------------------------------------------------------ description
    def info(self) -> ModelDescription:
        """The model as plain data, its config JSON saying which weight processing it had."""
        from telelens.core.description import describe_model

        extra = weight_processing_fields(self.weight_processing)
        return self._compute.submit(describe_model, self.model, extra).result()

    # ------------------------------------------------------------------ runs
    def run(
        self,
        graph: ir.Graph | bytes | graph_pb2.Graph,
        limits: ir.Limits,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[Item]:
        """Validate and execute ``graph``, then stream its saved values (see the module docstring).

        ``should_stop`` is polled while the graph runs and between chunks; once it returns
        True the run ends early with a CANCELLED failure (or silently while streaming).
        """
        stop = should_stop or (lambda: False)
        try:
            results, compute = yield from self.execute(graph, limits, stop)
        except Failure as f:
            yield f
            return
        yield from self.result_items(results, compute, stop)

    def execute(
        self, graph: ir.Graph | bytes | graph_pb2.Graph, limits: ir.Limits, stop: Callable[[], bool]
    ) -> Generator[Progress, None, tuple[dict[str, WireResult], float]]:
        """Decode (from the wire), validate and run ``graph`` on the compute thread, yielding its
        progress; returns its results as :func:`wire_result` s and the seconds it computed.
        Raises :class:`Failure`."""
        with self._lock:
            started = time.perf_counter()
            results = yield from self._execute(graph, limits, stop)
            return results, time.perf_counter() - started

    def result_items(
        self, results: dict[str, WireResult], compute_seconds: float, stop: Callable[[], bool]
    ) -> Iterator[Header | ResultPiece | Done]:
        """Each result as a :class:`Header` and its :class:`ResultPiece` s (views of its buffer, at most
        ``chunk_bytes`` each), then :class:`Done`; stops silently once ``stop()`` is True."""
        total = 0
        piece = min(self.chunk_bytes, PIECE_BYTES)
        for name in list(results):
            # Popped: each result is dropped once streamed, so memory falls as results go out.
            data, dtype, shape = results.pop(name)
            yield Header(name, dtype, shape, data.nbytes)
            for offset in range(0, data.nbytes, piece):
                if stop():
                    return
                yield ResultPiece(name, offset, data[offset : offset + piece])
            total += data.nbytes
            del data
        yield Done(total, compute_seconds, self.worker_id)

    def _execute(
        self, graph: ir.Graph | bytes | graph_pb2.Graph, limits: ir.Limits, stop: Callable[[], bool]
    ) -> Generator[Progress, None, dict[str, WireResult]]:
        """Run the executor on the compute thread, yielding its progress; returns the results as
        :func:`wire_bytes` arrays (converted there too: a copy of a strided result is torch work).
        A graph from the wire decodes there as well: its constants become tensors."""
        from telelens.core.graph import execute

        events: queue.Queue[Progress | None] = queue.Queue()  # None: the executor has returned
        event: Progress | bool | None
        cancelled = threading.Event()
        outcome: dict[str, Any] = {}
        last = [time.monotonic()]  # quiet for the first interval: a short run sends no progress at all
        reported = [False]

        def progress(done: int, total: int) -> None:
            if cancelled.is_set():
                raise _Stopped
            now = time.monotonic()
            if (done >= total and reported[0]) or now - last[0] >= self.progress_interval:
                reported[0] = True
                last[0] = now
                events.put(Progress(done, total))

        def target() -> None:
            try:
                # Bytes come from the front door, which decoded and checked them: build the IR only.
                decoded = (
                    graph if isinstance(graph, ir.Graph) else codec.decode_graph(graph, limits, trusted=True)
                )
                outcome["graph"] = decoded
                results = execute(self.model, decoded, limits, progress=progress, for_autograd=False)
                outcome["results"] = {name: wire_result(results.pop(name)) for name in list(results)}
            except BaseException as e:  # reported to the caller, never lost in a thread
                outcome["error"] = e
            finally:
                events.put(None)

        if stop():  # cancelled while it waited for the model
            raise Failure("CANCELLED", "the run was cancelled")
        future = self._compute.submit(target)
        try:
            while True:
                try:
                    event = events.get(timeout=_POLL)
                except queue.Empty:
                    event = False  # nothing new: only look at the stop flag
                if event is None:
                    break
                if isinstance(event, Progress):
                    yield event
                if stop() and not cancelled.is_set():
                    cancelled.set()
        finally:
            if not future.done():  # closed early (GeneratorExit): stop at the next pass
                cancelled.set()  # and wait for it, so that two runs never share the model
            wait([future])
        if cancelled.is_set() or isinstance(outcome.get("error"), _Stopped):
            raise Failure("CANCELLED", "the run was cancelled")
        if "error" in outcome:
            raise self._failure(outcome["error"], outcome.get("graph"), limits)
        return outcome["results"]

    def _failure(self, e: BaseException, graph: ir.Graph | None, limits: ir.Limits) -> Failure:
        from telelens.core.graph import GraphRuntimeError, validate

        if isinstance(e, Failure):  # a result that cannot travel (wire_bytes)
            return e
        if isinstance(e, ir.GraphValidationError) and graph is not None:
            return failures.refused(e, lambda lim: validate(self.model, graph, lim), limits)
        if isinstance(e, GraphRuntimeError):
            error = ir.GraphError(e.node_id, "", e.reason)
            return Failure("INVALID_ARGUMENT", f"the graph failed while running: {error}", (error,))
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            return Failure("RESOURCE_EXHAUSTED", f"{self.worker_id} ran out of memory: {e}")
        logger.error("%s: run failed", self.worker_id, exc_info=e)
        return Failure("INTERNAL", f"{self.worker_id}: {type(e).__name__}: {e}")
