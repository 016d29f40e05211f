"""The Ray workers: replicas per model, least-busy routing, dead-replica replacement.

Every replica is a :class:`~telelens.server._private.worker.RayModelWorker` actor. A replica that
spans several GPUs gets a placement group (one ``STRICT_PACK`` bundle holding all of its
GPUs) so that its resources are reserved together on one node. A request goes to the
replica with the fewest requests in flight, over that worker's own gRPC channel
(``telelens.v1.Worker``); results too large for that stream are collected through Ray.
If its actor dies, the actor is replaced; the request is retried once on a live replica if
no result had reached the client yet, and otherwise fails with UNAVAILABLE. The pool keeps
serving either way.

All methods run on the server's event loop; Ray and gRPC calls are awaited, never blocking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from telelens.core.description import ModelDescription
from telelens.protos import codec, ir
from telelens.server._private import messages, worker_channel
from telelens.server._private.collect import collected_messages, start_collection, time_left
from telelens.server._private.failures import Failure
from telelens.server._private.ray_worker import RayModelWorker
from telelens.server.config import ModelConfig, ServeConfig

logger = logging.getLogger(__name__)

ACTOR_THREADS = 4
"""Ray calls a worker actor serves at once (pings, model info, collections of parked results)."""
ALIVE_SECONDS = 10.0
"""How long a worker whose channel broke may take to answer a ping before it counts as dead."""


@dataclass
class WorkerLink:
    """The front door's end of one worker's channel."""

    channel: grpc.aio.Channel
    run: Any  # grpc.aio.UnaryStreamMultiCallable: WorkerRunRequest bytes -> RunResponse bytes
    metadata: tuple[tuple[str, str], ...]


@dataclass
class Replica:
    model: ModelConfig
    index: int
    actor: Any
    placement_group: Any = None
    busy: int = 0
    served: int = 0
    generation: int = 0
    """How many times this replica's actor was replaced."""
    link: asyncio.Future[WorkerLink] | None = None
    """This actor's channel, once its model has loaded."""


@dataclass
class _Model:
    config: ModelConfig
    replicas: list[Replica] = field(default_factory=list)
    description: ModelDescription | None = None


@dataclass
class _Attempt:
    """One try of a run on one replica: what to stop if it ends early, and whether results started."""

    replica: Replica
    actor: Any = None
    """The replica's actor when the try began (a replacement may swap the replica's)."""
    call: Any = None
    """The worker stream's call, once started (cancelled if the try ends early)."""
    collected: Any = None
    """The Ray stream of parked results, once started (cancelled if the try ends early)."""
    results_started: bool = False
    """Whether a result has reached the client (then a dead worker is not retried)."""
    ended: bool = False
    """Whether the worker's side has ended (nothing left to cancel)."""

    def __post_init__(self) -> None:
        self.actor = self.replica.actor

    @property
    def where(self) -> str:
        return f"worker {self.replica.model.name}/{self.replica.index}"

    def saw(self, message: bytes) -> bytes:
        """``message``, on its way to the client (noting whether it carries a result)."""
        self.results_started = self.results_started or messages.carries_result(message)
        return message

    def cancel(self, ray: Any) -> None:
        """Stop the worker's work for this try."""
        if self.call is not None:
            self.call.cancel()
        if self.collected is not None:
            ray.cancel(self.collected)


class _WorkerDied(Exception):
    """The replica's actor died during a try (its cause is the exception's argument)."""


class WorkerPool:
    """Actors for every model of a :class:`ServeConfig` (Ray must already be initialized)."""

    def __init__(self, config: ServeConfig) -> None:
        import ray

        self.config = config
        self._ray = ray
        self._actor_class = ray.remote(RayModelWorker)
        self._models = {m.name: _Model(m) for m in config.models}
        self._ticket = itertools.count()
        self.stats: Counter[str] = Counter()
        """Runs answered in the worker's stream (``inline``) and through Ray (``collected``)."""

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start every replica and wait until each has loaded its model (and describe each model)."""
        for m in self._models.values():
            for i in range(m.config.replicas):
                m.replicas.append(await self._new_replica(m.config, i))
        try:
            await asyncio.wait_for(self._await_ready(), self.config.startup_timeout_seconds)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"the workers did not load their models within {self.config.startup_timeout_seconds:.0f} s "
                "(startup_timeout_seconds); is the Ray cluster short of CPUs/GPUs for the replicas asked for?"
            ) from None

    async def _await_ready(self) -> None:
        async def ready(m: _Model, r: Replica) -> None:
            try:
                description = await r.actor.info.remote()
                assert r.link is not None
                await asyncio.shield(r.link)
            except (self._ray.exceptions.RayError, grpc.RpcError) as e:
                raise RuntimeError(
                    f"model {m.config.name!r} replica {r.index} failed to start:\n{e}"
                ) from None
            if m.description is None:
                m.description = description

        await asyncio.gather(*(ready(m, r) for m in self._models.values() for r in m.replicas))

    async def _new_replica(self, model: ModelConfig, index: int, pg: Any = None) -> Replica:
        options: dict[str, Any] = {
            "num_cpus": model.num_cpus,
            "num_gpus": model.num_gpus,
            "max_restarts": 0,
            # Runs arrive on the worker's channel; these threads only answer pings and hand out
            # parked results, so a long collection never delays a liveness check.
            "max_concurrency": ACTOR_THREADS,
        }
        if model.num_gpus > 1:  # one replica on several GPUs: reserve them together, on one node
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            if pg is None:
                bundle = {"GPU": model.num_gpus, **({"CPU": model.num_cpus} if model.num_cpus else {})}
                pg = placement_group([bundle], strategy="STRICT_PACK", name=f"telelens-{model.name}-{index}")
                await asyncio.wait_for(pg.ready(), self.config.startup_timeout_seconds)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=0
            )
        actor = self._actor_class.options(**options).remote(
            model, index, self.config.worker_chunk_bytes, self.config.progress_interval_seconds
        )
        link = asyncio.ensure_future(self._connect(actor))
        link.add_done_callback(lambda f: f.cancelled() or f.exception())  # read later; never "unretrieved"
        return Replica(model, index, actor, placement_group=pg, link=link)

    async def _connect(self, actor: Any) -> WorkerLink:
        address, token = await actor.endpoint.remote()  # answers once the model has loaded
        limit = self.config.max_message_bytes
        channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        run = channel.unary_stream("/telelens.v1.Worker/Run")  # bytes in, bytes out: forwarded as they are
        return WorkerLink(channel, run, ((worker_channel.TOKEN_KEY, token),))

    async def shutdown(self) -> None:
        """Kill every actor and release placement groups."""
        from ray.util.placement_group import remove_placement_group

        for m in self._models.values():
            for r in m.replicas:
                await _close(r.link)
                self._ray.kill(r.actor, no_restart=True)
                if r.placement_group is not None:
                    remove_placement_group(r.placement_group)
            m.replicas.clear()

    # ------------------------------------------------------------------ lookup
    @property
    def names(self) -> list[str]:
        return list(self._models)

    def describe(self, model: str) -> ModelDescription:
        d = self._models[model].description
        assert d is not None, "the pool has not started"
        return d

    def replicas(self, model: str) -> list[Replica]:
        return list(self._models[model].replicas)

    def _pick(self, model: str) -> Replica:
        # Least busy; among equals the one that served least recently (round robin).
        return min(self._models[model].replicas, key=lambda r: (r.busy, r.served))

    async def _replace(self, replica: Replica, dead: Any) -> None:
        if replica.actor is not dead:  # another request already replaced it
            return
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(dead, no_restart=True)
        fresh = await self._new_replica(replica.model, replica.index, replica.placement_group)
        await _close(replica.link)
        replica.actor, replica.link, replica.generation = fresh.actor, fresh.link, replica.generation + 1
        logger.warning(
            "replaced dead worker %s/%d (generation %d)",
            replica.model.name,
            replica.index,
            replica.generation,
        )

    # ------------------------------------------------------------------ runs
    async def run(
        self, model: str, request: bytes, chunk_bytes: int, deadline: float
    ) -> AsyncIterator[bytes]:
        """Run a serialized ``WorkerRunRequest`` on a replica of ``model``; yield the serialized
        ``RunResponse`` s for the client as they arrive (results collected through Ray are cut
        into ``chunk_bytes`` chunks here).

        ``deadline`` is in event-loop time. Raises :class:`Failure` (the worker's own, or
        DEADLINE_EXCEEDED / UNAVAILABLE / INTERNAL). Closing the iterator early cancels the run.
        A replica that dies is replaced; the run is retried once on a live one if no result had
        reached the client yet.
        """
        for attempt in (1, 2):
            run = _Attempt(self._pick(model))
            try:
                async with contextlib.aclosing(self._attempt(run, request, chunk_bytes, deadline)) as out:
                    async for message in out:
                        yield message
                return
            except _WorkerDied as died:
                await self._replace(run.replica, run.actor)
                if attempt == 1 and not run.results_started:
                    logger.warning(
                        "%s died during a run; retrying once on a live replica (%s)", run.where, died
                    )
                    continue
                when = "after results had started streaming" if run.results_started else "twice in a row"
                raise Failure(
                    "UNAVAILABLE",
                    f"{run.where} died {when}; the server is replacing it, send the request again",
                ) from None

    async def _attempt(
        self, run: _Attempt, request: bytes, chunk_bytes: int, deadline: float
    ) -> AsyncGenerator[bytes, None]:
        """One try on one replica: results inline in the worker's stream, else parked on the worker
        and collected through Ray. Raises :class:`Failure`, or :class:`_WorkerDied`."""
        replica = run.replica
        replica.busy += 1
        replica.served = next(self._ticket)
        try:
            async with contextlib.aclosing(self._inline_results(run, request, deadline)) as inline:
                async for message in inline:
                    yield run.saw(message)
            if run.ended:
                return
            parked = dict(await run.call.trailing_metadata() or ()).get(worker_channel.PARKED_KEY)
            if not parked:
                raise Failure("INTERNAL", f"{run.where} ended a run without its summary or parked results")
            async with contextlib.aclosing(
                self._collected_results(run, parked, chunk_bytes, deadline)
            ) as bulk:
                async for message in bulk:
                    yield run.saw(message)
        except asyncio.TimeoutError:  # not ended: the finally below stops the worker's work
            raise _past_deadline() from None
        except grpc.aio.AioRpcError as e:
            run.ended = True  # the call has ended; nothing to cancel
            raise await self._stream_broke(run, e) from None
        except self._ray.exceptions.RayTaskError as e:  # a bug in the worker, not a bad request
            run.ended = True
            raise Failure("INTERNAL", f"{run.where} failed: {e}") from None
        except self._ray.exceptions.RayActorError as e:
            run.ended = True
            raise _WorkerDied(e) from None
        finally:
            replica.busy -= 1
            if not run.ended:  # deadline, client gone, or an error here: stop the worker's work
                run.cancel(self._ray)

    async def _inline_results(
        self, run: _Attempt, request: bytes, deadline: float
    ) -> AsyncGenerator[bytes, None]:
        """The worker's own stream; ``run.ended`` once its summary came (the results were inline)."""
        loop = asyncio.get_running_loop()
        assert run.replica.link is not None
        link = await asyncio.wait_for(asyncio.shield(run.replica.link), time_left(deadline, loop))
        run.call = link.run(request, metadata=link.metadata, timeout=time_left(deadline, loop))
        async for message in run.call:
            yield message
            if messages.is_done(message):  # complete: the client need not wait for the
                self.stats["inline"] += 1  # worker's status to arrive here as well
                run.ended = True
                return

    async def _collected_results(
        self, run: _Attempt, parked: str, chunk_bytes: int, deadline: float
    ) -> AsyncGenerator[bytes, None]:
        """Results too large for the worker's stream, collected through Ray's object store."""
        self.stats["collected"] += 1
        run.collected = start_collection(run.actor, parked)
        async with contextlib.aclosing(collected_messages(run.collected, chunk_bytes, deadline)) as out:
            async for message in out:
                yield message
        run.ended = True

    async def _stream_broke(self, run: _Attempt, e: grpc.aio.AioRpcError) -> Exception:
        """What a broken worker stream means: the worker's own failure, the deadline, a lost
        stream from a live worker (UNAVAILABLE), or a dead worker (:class:`_WorkerDied`)."""
        failure = _worker_failure(e)
        if failure is not None:
            return failure
        if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return _past_deadline()
        if await self._alive(run.actor):
            return Failure("UNAVAILABLE", f"lost the stream from {run.where}: {e.details()}")
        return _WorkerDied(e)

    async def _alive(self, actor: Any) -> bool:
        """Whether ``actor`` still answers (its channel broke: a dead process, or the network)."""
        try:
            await asyncio.wait_for(actor.ping.remote(), ALIVE_SECONDS)
            return True
        except (self._ray.exceptions.RayActorError, asyncio.TimeoutError):
            return False


def _past_deadline() -> Failure:
    return Failure("DEADLINE_EXCEEDED", "the run did not finish before its deadline")


def _worker_failure(e: grpc.aio.AioRpcError) -> Failure | None:
    """The failure a worker reported on purpose (its status and graph errors), else None."""
    metadata = dict(e.trailing_metadata() or ())
    if worker_channel.FAILURE_KEY not in metadata:
        return None
    errors: tuple[ir.GraphError, ...] = ()
    if codec.GRAPH_ERRORS_KEY in metadata:
        errors = tuple(codec.errors_from_proto(metadata[codec.GRAPH_ERRORS_KEY]))
    return Failure(e.code().name, e.details() or "", errors)


async def _close(link: asyncio.Future[WorkerLink] | None) -> None:
    if link is None:
        return
    if not link.done():
        link.cancel()
        return
    if not link.cancelled() and link.exception() is None:
        await link.result().channel.close()
