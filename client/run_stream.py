"""Reading one ``Run`` response stream: headers, chunks, progress and the summary, into tensors.

Results are assembled by :class:`~telelens.client.results.ResultAssembler` straight into their
final buffers; what the call moved and how long it took is recorded in a :class:`RunStats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from telelens.client import errors
from telelens.client.progress import CallProgress
from telelens.client.results import AssemblyStats, Chunk, Malformed, ResultAssembler, response_item
from telelens.protos import service_pb2

if TYPE_CHECKING:
    import torch


@dataclass
class RunStats(AssemblyStats):
    """What one ``Run`` moved and how long it took (seconds are wall-clock on this client).

    ``results``, ``result_bytes``, ``chunk_bytes`` and ``chunks`` are the assembler's counts.
    """

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


class StreamFailed(Exception):
    """The stream broke; ``received_results`` says whether a result had begun to arrive (no retry then)."""

    def __init__(self, error: grpc.RpcError, received_results: bool) -> None:
        super().__init__(error)
        self.error = error
        self.received_results = received_results


def read_run_stream(
    call: Any, assembler: ResultAssembler, stats: RunStats, bars: CallProgress, start: float
) -> dict[str, torch.Tensor]:
    """Every saved value of ``call`` by name; cancels the call unless it was read to the end."""
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
            raise StreamFailed(e, received_results=first_result is not None) from None
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
