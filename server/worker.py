"""A model replica: loads one model once, describes it, and runs graphs as a stream of pieces.

:class:`ModelWorker` is a plain class (usable in-process); :class:`RayModelWorker` is the
same thing as a Ray actor body, which serves runs on its own gRPC channel
(:mod:`telelens.server.worker_channel`) and hands large results to the front door as a Ray
streaming generator (:meth:`~RayModelWorker.stream_results`), chunk by chunk with bounded
memory on both sides.

What :meth:`ModelWorker.run` yields, in order: :class:`Progress` (while the forward passes
run), then for each saved value a :class:`Header` and its :class:`Chunk`\\ s (raw
little-endian bytes, numpy views of the result, never one joined copy), then :class:`Done`;
or a :class:`~telelens.server.failures.Failure` as the last item.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from telelens.protos import codec, graph_pb2, ir
from telelens.server import failures
from telelens.server.config import ModelConfig
from telelens.server.failures import Failure

if TYPE_CHECKING:
    import torch

    from telelens.core.hooked_transformer import HookedTransformer

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1
"""Seconds between progress items; none before the first interval has passed (a short run
reports none), and the last pass is reported once any was."""
PIECE_BYTES = 1 << 20
"""Largest Chunk: Ray copies a larger buffer into its object store with 6 threads of its own
(a compile-time constant), which on a small machine fight the front door and the client."""
_POLL = 0.05
"""How often a waiting run checks whether it was cancelled."""


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    stage: str = "forward"


@dataclass(frozen=True)
class Header:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Chunk:
    name: str
    offset: int
    data: np.ndarray  # uint8 [n], a view into the result's own buffer


@dataclass(frozen=True)
class Done:
    result_bytes: int
    compute_seconds: float
    worker: str


Item: TypeAlias = "Progress | Header | Chunk | Done | Failure"


@dataclass(frozen=True)
class ModelDescription:
    """What the front door tells clients about a model (it never loads one itself)."""

    name: str
    architecture: str
    n_layers: int
    n_params: int
    dtype: str
    device: str
    config_json: str
    hooks: tuple[tuple[str, tuple[str, ...]], ...]  # (name, dimension names), in firing order
    tokenizer_json: str
    tokenizer_config_json: str
    weights: tuple[tuple[str, tuple[int, ...], str], ...]  # (name, shape, dtype)


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
        self.model = self._compute.submit(load_model, model).result()
        logger.info("%s: loaded %s in %.1f s", self.worker_id, model.source, time.perf_counter() - started)
        self._lock = threading.Lock()  # hooks are installed on the shared model: one run at a time

    # ------------------------------------------------------------------ description
    def info(self) -> ModelDescription:
        return self._compute.submit(describe_model, self.model, self.config).result()

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
    ) -> Iterator[Header | Chunk | Done]:
        """Each result as a :class:`Header` and its :class:`Chunk` s (views of its buffer, at most
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
                yield Chunk(name, offset, data[offset : offset + piece])
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


WireResult: TypeAlias = "tuple[np.ndarray, str, tuple[int, ...]]"
"""A result ready to travel: its bytes (uint8 view), dtype name and shape."""


def wire_result(t: torch.Tensor) -> WireResult:
    data, dtype = wire_bytes(t)
    return data, dtype, tuple(t.shape)


def wire_bytes(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A uint8 view of ``t``'s little-endian bytes (no copy for a contiguous CPU tensor) and its dtype."""
    import torch

    from telelens.core.graph.tensors import TORCH_DTYPES

    names = {v: k for k, v in TORCH_DTYPES.items()}
    dtype = names.get(t.dtype)
    if dtype is None:
        raise Failure(
            "INVALID_ARGUMENT", f"a result of dtype {t.dtype} cannot travel; save it as one of {ir.DTYPES}"
        )
    t = t.detach().cpu().contiguous()
    if dtype == "bfloat16":
        t = t.view(torch.int16)  # numpy has no bfloat16: ship the bits
    array = t.numpy()
    if sys.byteorder != "little" and array.dtype.itemsize > 1:
        array = array.astype(array.dtype.newbyteorder("<"))
    return array.reshape(-1).view(np.uint8), dtype


# ---------------------------------------------------------------------------------- loading
def load_model(config: ModelConfig) -> HookedTransformer:
    """The model as ``config`` describes it (weights straight to their device)."""
    from telelens.core.hooked_transformer import HookedTransformer

    load = (
        HookedTransformer.from_pretrained
        if config.processing
        else HookedTransformer.from_pretrained_no_processing
    )
    kwargs: dict[str, Any] = {"device": config.device, "dtype": config.dtype, **config.from_pretrained_kwargs}
    if config.n_devices > 1:
        kwargs.setdefault("n_devices", config.n_devices)
    model = load(config.source, **kwargs)
    return model.eval()


def describe_model(model: HookedTransformer, config: ModelConfig) -> ModelDescription:
    from telelens.core.graph.hooks import hook_dims, hook_table
    from telelens.core.graph.tensors import TORCH_DTYPES

    cfg = model.cfg
    dtype_names = {v: k for k, v in TORCH_DTYPES.items()}
    hooks = tuple((name, tuple(hook_dims(name))) for name in hook_table(model).order if name != ir.LOGITS)
    n_params = sum(p.numel() for p in model.parameters())  # a tied weight counts once
    return ModelDescription(
        name=config.name,
        architecture=str(cfg.original_architecture or ""),
        n_layers=cfg.n_layers,
        n_params=n_params,
        dtype=dtype_names.get(cfg.dtype, str(cfg.dtype).removeprefix("torch.")),
        device=str(cfg.device),
        config_json=json.dumps(cfg.to_dict(), default=str),
        hooks=hooks,
        tokenizer_json=tokenizer_json(model.tokenizer),
        tokenizer_config_json=json.dumps(tokenizer_config(model)),
        weights=tuple(_weights(model, dtype_names)),
    )


def tokenizer_json(tokenizer: Any) -> str:
    """``tokenizer.json`` text of a fast Hugging Face tokenizer; empty when there is none."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer is not None else None
    return backend.to_str() if backend is not None else ""


def tokenizer_config(model: HookedTransformer) -> dict[str, Any]:
    """BOS/EOS/PAD/UNK tokens and ids and the BOS and padding defaults, for client-side tokenizing."""
    tok = model.tokenizer
    out: dict[str, Any] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        out[f"{kind}_token"] = getattr(tok, f"{kind}_token", None) if tok is not None else None
        out[f"{kind}_token_id"] = getattr(tok, f"{kind}_token_id", None) if tok is not None else None
    out["tokenizer_prepends_bos"] = bool(model.cfg.tokenizer_prepends_bos)
    out["default_prepend_bos"] = bool(model.cfg.default_prepend_bos)
    out["default_padding_side"] = model.cfg.default_padding_side
    out["model_max_length"] = model.cfg.n_ctx
    return out


def _weights(model: HookedTransformer, dtype_names: dict) -> Iterator[tuple[str, tuple[int, ...], str]]:
    from telelens.core.graph.weights import _all_names, weight_error, weight_shape

    for name in _all_names(model.cfg.n_layers):
        if weight_error(model, name) is None:
            try:
                shape, dtype = weight_shape(model, name)
            except AttributeError:  # a weight this model's components do not have (e.g. no bias)
                continue
            yield name, tuple(int(d) for d in shape), dtype_names.get(dtype, "float32")


# ---------------------------------------------------------------------------------- Ray actor
class RayModelWorker(ModelWorker):
    """The actor body: ``ray.remote(RayModelWorker).options(num_cpus=..., num_gpus=...)``.

    Runs arrive on the worker's own gRPC channel (:class:`~telelens.server.worker_channel.WorkerChannel`,
    at :meth:`endpoint`); Ray calls the rest, several at once (``max_concurrency``): :meth:`info`,
    :meth:`ping`, and :meth:`stream_results` for results too large for that channel. Torch gets
    as many threads as the replica has CPUs, all of its work on the one compute thread.
    """

    def __init__(self, model: ModelConfig, *args: Any, **kwargs: Any) -> None:
        """:class:`ModelWorker`'s arguments; torch's threads are set before the model loads."""
        import ray
        import torch

        from telelens.server.worker_channel import WorkerChannel

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
        (headers, pieces of at most :data:`PIECE_BYTES`) travel together in one Ray object of up
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
            item_bytes = item.data.nbytes if isinstance(item, Chunk) else 0
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
