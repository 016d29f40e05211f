"""Result streaming: a telelens ``Run`` against raw gRPC streams of the same bytes, in one run.

Variants (round-robin after a warm-up; min and median reported), each moving the same
N MiB result to this (client) process over loopback in 1 MiB chunks:

  telelens Run      worker actor -> Ray streaming generator -> front door -> gRPC -> client
  raw gRPC (proto)  a bare grpc.aio server slicing one buffer into RunResponse chunk messages
  raw gRPC (bytes)  the same with pre-serialized bytes (gRPC's own ceiling, no protobuf objects)

The server (``telelens serve``) and the raw server run as separate processes. Memory is
sampled while a run streams (private RssAnon and shared RssShmem of the client, the front
door and the worker), so no malloc tuning is needed; don't set ``MALLOC_MMAP_THRESHOLD_``
here: it makes every 1 MiB message an mmap and cuts every variant's throughput by 2-4x.

    .venv/bin/python bench/bench_stream.py [--mib 256] [--reps 5] [--chunk-kib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from telelens.protos import codec, ir, service_pb2, service_pb2_grpc

RAW_METHOD = "/bench.Raw/Stream"


# ----------------------------------------------------------------------------------- helpers
def proc_mb(pid: int | str, field: str) -> float:
    """A size field of /proc/PID/status (``RssAnon``, ``RssShmem``, ``VmHWM``, ...), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class MemorySampler:
    """Polls processes' private (RssAnon) and shared-memory (RssShmem) resident sizes; keeps the peaks.

    VmHWM alone overstates a Ray process: pages of the shared object store it touched count
    as its RSS although they are one copy shared with other processes.
    """

    def __init__(self, pids: dict[str, int | str], interval: float = 0.005) -> None:
        self.pids, self.interval = pids, interval
        self.peak = {who: {"RssAnon": 0.0, "RssShmem": 0.0} for who in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for who, pid in self.pids.items():
                for field in ("RssAnon", "RssShmem"):
                    self.peak[who][field] = max(self.peak[who][field], proc_mb(pid, field))
            time.sleep(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pid: int | str) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def big_graph(n: int) -> tuple[ir.Graph, np.ndarray, np.ndarray]:
    """[n, n] float32 = a[:, None] + b[None, :]: a big result from two small constants."""
    a = np.linspace(-1, 1, n, dtype=np.float32)
    b = np.linspace(0, 3, n, dtype=np.float32)
    graph = ir.Graph(
        (
            ir.Constant(0, ir.TensorData("float32", (n, 1), a.tobytes())),
            ir.Constant(1, ir.TensorData("float32", (1, n), b.tobytes())),
            ir.Binary(2, "add", ir.Ref(0), ir.Ref(1)),
            ir.Save(3, ir.Ref(2), "sum"),
        )
    )
    return graph, a, b


def start(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """Start a server process; return it and the address from its 'listening on' line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "listening on" in line:
            return proc, line.split("listening on", 1)[1].split()[0]
    raise RuntimeError(f"{cmd} exited with {proc.wait()} before listening")


# ----------------------------------------------------------------------------------- raw server
def serve_raw(mib: int, chunk: int) -> None:
    """A bare grpc.aio server streaming ``mib`` MiB of one buffer in ``chunk``-byte messages."""
    data = np.ones(mib << 20, dtype=np.uint8)
    view = data.data

    async def stream_proto(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for start in range(0, len(view), chunk):
            yield service_pb2.RunResponse(
                chunk=service_pb2.ResultChunk(
                    name="sum", offset=start, data=bytes(view[start : start + chunk])
                )
            ).SerializeToString()

    async def stream_bytes(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for start in range(0, len(view), chunk):
            yield bytes(view[start : start + chunk])

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 << 20)])
        identity = lambda b: b  # noqa: E731
        handlers = {
            "StreamProto": grpc.unary_stream_rpc_method_handler(stream_proto, identity, identity),
            "StreamBytes": grpc.unary_stream_rpc_method_handler(stream_bytes, identity, identity),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Raw", handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"raw: listening on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


# ----------------------------------------------------------------------------------- client
COMPUTE: list[float] = []
"""``RunSummary.compute_seconds`` of each telelens run: the worker's execute, before streaming."""


def telelens_run(stub: service_pb2_grpc.TelelensStub, graph: ir.Graph, chunk: int) -> tuple[bytearray, str]:
    request = service_pb2.RunRequest(model="tiny", graph=codec.encode_graph(graph), chunk_bytes=chunk)
    buf = bytearray()
    worker = ""
    for m in stub.Run(request):
        kind = m.WhichOneof("item")
        if kind == "header":
            buf = bytearray(m.header.nbytes)
        elif kind == "chunk":
            buf[m.chunk.offset : m.chunk.offset + len(m.chunk.data)] = m.chunk.data
        elif kind == "done":
            worker = m.done.worker
            COMPUTE.append(m.done.compute_seconds)
    return buf, worker


def raw_run(channel: grpc.Channel, method: str, total: int, parse: bool) -> bytearray:
    call = channel.unary_stream(f"/bench.Raw/{method}", request_serializer=None, response_deserializer=None)
    buf = bytearray(total)
    offset = 0
    for payload in call(b""):
        if parse:
            c = service_pb2.RunResponse.FromString(payload).chunk
            buf[c.offset : c.offset + len(c.data)] = c.data
        else:
            buf[offset : offset + len(payload)] = payload
            offset += len(payload)
    return buf


def check(buf: bytearray, a: np.ndarray, b: np.ndarray) -> None:
    """The reassembled bytes equal a[:, None] + b, checked in row blocks (no second full copy)."""
    n = len(a)
    got = np.frombuffer(buf, dtype="<f4").reshape(n, n)
    for r in range(0, n, 512):
        assert np.array_equal(got[r : r + 512], a[r : r + 512, None] + b[None, :]), f"rows {r}.."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="result size in MiB (a square float32 tensor)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--chunk-kib", type=int, default=1024, help="wire chunk size")
    parser.add_argument("--raw-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    chunk = args.chunk_kib << 10
    n = int(((args.mib << 20) // 4) ** 0.5)
    if args.raw_server:
        serve_raw(n * n * 4 >> 20, chunk)
        return

    from transformers import GPT2Config, GPT2LMHeadModel

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory(prefix="tlb-", dir="/tmp") as tmp:
        folder = Path(tmp) / "tiny"
        GPT2LMHeadModel(
            GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64)
        ).save_pretrained(folder)
        server, address = start(
            [sys.executable, "-m", "telelens.cli", "serve", "--model", f"tiny={folder}", "--port", "0",
             "--data-dir", tmp],
            env,
        )  # fmt: skip
        raw, raw_address = start([sys.executable, __file__, "--raw-server", "--mib", str(args.mib),
                                  "--chunk-kib", str(args.chunk_kib)], env)  # fmt: skip
        try:
            options = [("grpc.max_receive_message_length", 64 << 20)]
            channel = grpc.insecure_channel(address, options=options)
            raw_channel = grpc.insecure_channel(raw_address, options=options)
            stub = service_pb2_grpc.TelelensStub(channel)
            graph, a, b = big_graph(n)
            small, _, _ = big_graph(8)
            _, worker = telelens_run(stub, small, chunk)  # warm-up; tells the worker's pid
            worker_pid = int(worker.rsplit(":", 1)[1])
            pids: dict[str, int | str] = {"client": "self", "front door": server.pid, "worker": worker_pid}
            base = {who: proc_mb(pid, "RssAnon") for who, pid in pids.items()}
            total = n * n * 4
            variants = {
                "telelens Run": lambda: telelens_run(stub, graph, chunk)[0],
                "raw gRPC (proto)": lambda: raw_run(raw_channel, "StreamProto", total, parse=True),
                "raw gRPC (bytes)": lambda: raw_run(raw_channel, "StreamBytes", total, parse=False),
            }
            times: dict[str, list[float]] = {k: [] for k in variants}
            cpu = dict.fromkeys(pids, 0.0)
            for rep in range(args.reps + 1):  # the first round is a warm-up
                for name, fn in variants.items():
                    cpu_before = {who: cpu_seconds(pid) for who, pid in pids.items()}
                    started = time.perf_counter()
                    if rep == 1 and name == "telelens Run":
                        with MemorySampler(pids) as memory:
                            buf = fn()
                    else:
                        buf = fn()
                    elapsed = time.perf_counter() - started
                    if rep and name == "telelens Run":
                        for who, pid in pids.items():
                            cpu[who] += (cpu_seconds(pid) - cpu_before[who]) / args.reps
                    assert len(buf) == total, (name, len(buf))
                    if name == "telelens Run" and rep == 0:
                        check(buf, a, b)
                    del buf
                    if rep:
                        times[name].append(elapsed)
            mb = total / 1e6
            print(f"\n{total >> 20} MiB result, {args.chunk_kib} KiB chunks, {args.reps} reps (loopback)\n")
            print(
                "| variant | min s | median s | MB/s (min) | vs raw proto |\n| --- | ---: | ---: | ---: | ---: |"
            )
            ref = min(times["raw gRPC (proto)"])
            for name, ts in times.items():
                print(
                    f"| {name} | {min(ts):.3f} | {statistics.median(ts):.3f} | {mb / min(ts):.0f} | {min(ts) / ref:.2f}x |"
                )
            compute = statistics.median(COMPUTE[2:])
            print(
                f"\ntelelens Run includes the worker computing the result: median {compute:.3f} s "
                f"(streaming alone, min time less median compute: ~{mb / (min(times['telelens Run']) - compute):.0f} MB/s)"
            )
            print("CPU seconds per telelens Run: " + ", ".join(f"{who} {c:.2f}" for who, c in cpu.items()))
            print("\nmemory during one telelens Run, MiB (sampled every 5 ms):")
            print("| process | private peak above idle | shared object-store pages touched (peak) |")
            print("| --- | ---: | ---: |")
            for who in pids:
                peak = memory.peak[who]
                print(f"| {who} | +{peak['RssAnon'] - base[who]:.0f} | {peak['RssShmem']:.0f} |")
            print(
                f"(the client holds the {total >> 20} MiB result itself; the worker computes it, and the "
                "executor returns a copy of it)"
            )
        finally:
            for p in (server, raw):
                p.terminate()
                p.wait(timeout=60)


if __name__ == "__main__":
    main()
