"""Results parked on a worker, collected through Ray's object store as the client's messages.

A worker parks results too large for its own gRPC stream (``worker_channel``); the front
door then reads them from the worker's :meth:`~telelens.server._private.ray_worker.RayModelWorker.stream_results`,
a Ray streaming generator of batches, fetching the next batch while this one goes out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from telelens.server._private import messages
from telelens.server._private.failures import Failure
from telelens.server._private.results import Item

BACKPRESSURE_OBJECTS = 4
"""Batches a worker may have produced ahead of the front door (bounds memory per request)."""
PREFETCH_BATCHES = 1
"""Batches the front door holds fetched ahead of the one it is sending."""


def start_collection(actor: Any, run_id: str) -> Any:
    """The worker's stream of the results it parked as ``run_id`` (a Ray ``ObjectRefGenerator``;
    ``ray.cancel`` it to stop the worker)."""
    return actor.stream_results.options(
        num_returns="streaming", _generator_backpressure_num_objects=BACKPRESSURE_OBJECTS
    ).remote(run_id)


def time_left(deadline: float, loop: asyncio.AbstractEventLoop) -> float:
    """Seconds until ``deadline`` (event-loop time); :class:`asyncio.TimeoutError` once it has passed."""
    remaining = deadline - loop.time()
    if remaining <= 0:
        raise asyncio.TimeoutError
    return remaining


async def collected_messages(gen: Any, chunk_bytes: int, deadline: float) -> AsyncGenerator[bytes, None]:
    """The items of a worker's :meth:`~RayModelWorker.stream_results` as ``RunResponse`` bytes."""
    loop = asyncio.get_running_loop()
    # The next batch is fetched while this one's messages go out: no pause between batches.
    batches: asyncio.Queue[list[Item] | BaseException | None] = asyncio.Queue(PREFETCH_BATCHES)
    fetcher = asyncio.create_task(_fetch(gen, batches))
    try:
        while True:
            batch = await asyncio.wait_for(batches.get(), time_left(deadline, loop))
            if batch is None:  # the stream ended
                return
            if isinstance(batch, BaseException):
                raise batch
            for item in batch:
                if isinstance(item, Failure):
                    raise item
                for message in messages.item_messages(item, chunk_bytes):
                    yield message
    finally:
        fetcher.cancel()


async def _fetch(gen: Any, out: asyncio.Queue[list[Item] | BaseException | None]) -> None:
    """Move a worker's streamed batches into ``out``; then None, or the exception that ended it."""
    import ray

    try:
        async for ref in gen:
            try:  # the generator has waited for the object, so it is usually here: no second await
                batch = ray.get(ref, timeout=0)
            except ray.exceptions.GetTimeoutError:  # still on another node: fetch without blocking
                batch = await ref
            await out.put(batch if isinstance(batch, list) else [batch])
        await out.put(None)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the consumer raises it in its own frame (RayActorError -> retry, ...)
        await out.put(e)
