"""Starting and stopping a server: Ray, the worker pool, the grpc.aio server, health checking.

``run_server(config)`` is a context manager yielding a :class:`ServerHandle`; the asyncio
server runs on its own event loop in a background thread, so tests, notebooks and the CLI
use it synchronously::

    with run_server(ServeConfig.for_model("smollm2-135m", port=0)) as server:
        channel = grpc.insecure_channel(server.address)
        ...
        server.wait_for_termination()   # the CLI blocks here until SIGINT/SIGTERM

Stopping is graceful: health turns NOT_SERVING, new calls are refused, in-flight calls get
``grace_seconds`` to finish, then the workers are killed and an embedded Ray is shut down.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from telelens.protos import service_pb2
from telelens.server._private.auth import AuthInterceptor, KeyStore
from telelens.server._private.pool import WorkerPool
from telelens.server._private.service import TelelensService, add_to_server
from telelens.server.config import ServeConfig

logger = logging.getLogger(__name__)

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["Telelens"].full_name
"""``telelens.v1.Telelens``: its health status, and ``telelens.v1.Telelens/<model>`` per model."""


def start_ray(config: ServeConfig) -> bool:
    """Connect to ``config.ray_address``, or start an embedded Ray; True if this call started it."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return False
    if config.ray_address:
        ray.init(address=config.ray_address, logging_level=logging.WARNING)
    else:
        temp_dir = config.ray_temp_dir
        Path(temp_dir).mkdir(parents=True, exist_ok=True)
        ray.init(
            num_cpus=config.ray_num_cpus,
            num_gpus=config.ray_num_gpus,
            include_dashboard=False,
            _temp_dir=temp_dir,
            logging_level=logging.WARNING,
        )
    return True


class ServerHandle:
    """A running server: its address, its pool, and how to stop it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.port: int = 0
        self.pool: WorkerPool | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="telelens-server", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._health: Any = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._ray_started = False

    @property
    def address(self) -> str:
        """``host:port`` to dial (the bound port, also when ``config.port`` was 0)."""
        host = self.config.host
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------ start
    def start(self) -> ServerHandle:
        self._ray_started = start_ray(self.config)
        self._thread.start()
        try:
            self._call(self._start()).result()
        except BaseException:
            self._teardown()
            raise
        return self

    def _call(self, coro: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _start(self) -> None:
        config = self.config
        keys = KeyStore(config.keys_file)
        self.pool = WorkerPool(config)
        try:
            await self.pool.start()
        except BaseException:
            await self.pool.shutdown()  # no half-started actors left behind on a shared cluster
            raise
        size = config.max_message_bytes
        server = grpc.aio.server(
            interceptors=[AuthInterceptor(keys)],
            options=[
                ("grpc.max_send_message_length", size),
                ("grpc.max_receive_message_length", size),
                ("grpc.so_reuseport", 0),
            ],
        )
        add_to_server(TelelensService(config, self.pool, keys), server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        target = f"{config.host}:{config.port}"
        if config.tls is not None:
            self.port = server.add_secure_port(target, _tls_credentials(config))
        else:
            self.port = server.add_insecure_port(target)
        if not self.port:
            raise RuntimeError(f"could not bind {target}")
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME, *(f"{SERVICE_NAME}/{m}" for m in self.pool.names)):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info("telelens: serving %s on %s", ", ".join(self.pool.names), self.address)

    # ------------------------------------------------------------------ stop
    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown (idempotent): NOT_SERVING, finish in-flight calls, stop workers and Ray."""
        if self._stopping.is_set():
            self._stopped.wait()
            return
        self._stopping.set()
        grace = self.config.grace_seconds if grace is None else grace
        if self._thread.is_alive():
            try:
                self._call(self._stop(grace)).result(timeout=grace + 60)
            except Exception:
                logger.exception("telelens: error while stopping the server")
        self._teardown()

    async def _stop(self, grace: float) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()  # every service NOT_SERVING
        if self._server is not None:
            await self._server.stop(grace)
        if self.pool is not None:
            await self.pool.shutdown()
        await asyncio.get_running_loop().shutdown_default_executor()  # decoding threads

    def _teardown(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._loop.is_running():
            self._loop.close()
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False
        self._stopped.set()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped (True) or ``timeout`` passed (False)."""
        return self._stopped.wait(timeout)


def _tls_credentials(config: ServeConfig) -> grpc.ServerCredentials:
    assert config.tls is not None
    tls = config.tls
    key = Path(tls.key_file).expanduser().read_bytes()
    cert = Path(tls.cert_file).expanduser().read_bytes()
    ca = Path(tls.client_ca_file).expanduser().read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


@contextmanager
def run_server(config: ServeConfig) -> Iterator[ServerHandle]:
    """Start a server for ``config``; stop it gracefully when the block exits."""
    handle = ServerHandle(config).start()
    try:
        yield handle
    finally:
        handle.stop()
