"""The Ray actor form of a model replica: a :class:`~telelens.server._private.worker.ModelWorker`
that serves runs on its own gRPC channel and hands large results to the front door as a Ray
streaming generator (:meth:`~RayModelWorker.stream_results`), chunk by chunk with bounded
memory on both sides."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from typing import Any

from telelens.server._private.failures import Failure
from telelens.server._private.results import Item, ResultPiece
from telelens.server._private.worker import ModelWorker
from telelens.server.config import ModelConfig


class RayModelWorker(ModelWorker):
    """The actor body: ``ray.remote(RayModelWorker).options(num_cpus=..., num_gpus=...)``.

    Runs arrive on the worker's own gRPC channel (:class:`~telelens.server._private.worker_channel.WorkerChannel`,
    at :meth:`endpoint`); Ray calls the rest, several at once (``max_concurrency``): :meth:`info`,
    :meth:`ping`, and :meth:`stream_results` for results too large for that channel. Torch gets
    as many threads as the replica has CPUs, all of its work on the one compute thread.
    """

    def __init__(self, model: ModelConfig, *args: Any, **kwargs: Any) -> None:
        """:class:`ModelWorker`'s arguments; torch's threads are set before the model loads."""
        import ray
        import torch

        from telelens.server._private.worker_channel import WorkerChannel

        logging.basicConfig(level=logging.INFO)
        torch.set_num_threads(max(1, int(model.num_cpus)))
        super().__init__(model, *args, **kwargs)
        # The model's many Python objects (modules, hook points, parameters) never die: keep them
        # out of the collector's full passes, which otherwise walk them all in the middle of runs.
        gc.collect()
        gc.freeze()
        self.channel = WorkerChannel(self, ray.util.get_node_ip_address())

    def endpoint(self) -> tuple[str, str]:
        """Where the front door reaches this worker's channel, and the token it must show."""
        return self.channel.address, self.channel.token

    def stream_results(self, run_id: str) -> Iterator[list[Item]]:
        """The results the channel parked as ``run_id``, as a Ray streaming generator of batches,
        stopping when the caller cancels (``ray.cancel``).

        Each Ray item costs about a millisecond however small it is, so consecutive items
        (headers, pieces of at most :data:`~telelens.server._private.results.PIECE_BYTES`) travel together in one Ray object of up
        to ``chunk_bytes`` of payload.
        """
        import ray

        try:
            parked = self.channel.take(run_id)
        except Failure as f:
            yield [f]
            return
        stop = ray.get_runtime_context().is_canceled
        bundle: list[Item] = []
        size = 0
        for item in self.result_items(parked.results, parked.compute_seconds, stop):
            item_bytes = item.data.nbytes if isinstance(item, ResultPiece) else 0
            if bundle and size + item_bytes > self.chunk_bytes:
                yield bundle
                bundle, size = [], 0
            bundle.append(item)
            size += item_bytes
            if size >= self.chunk_bytes:
                yield bundle
                bundle, size = [], 0
        if bundle:
            yield bundle

    def ping(self) -> str:
        return self.worker_id

    def pid(self) -> int:
        return os.getpid()
