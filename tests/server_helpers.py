"""Shared by the server tests: a tiny model folder with a tokenizer, a server for it, and a raw-stub
Run client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from telelens.protos import codec, ir, service_pb2, service_pb2_grpc
from telelens.protos.torch_tensors import tensor_data_to_torch

WORDS = ["<|endoftext|>", "[UNK]"] + [f"w{i}" for i in range(95)]
"""The tiny model's vocabulary (97 tokens): a word-level tokenizer over ``w0 .. w94``."""
GRAPH_ERRORS_KEY = "telelens-graph-errors-bin"


def make_tiny_folder(folder: Path, seed: int = 0) -> Path:
    """A random tiny GPT-2 (2 layers, d_model 32) with a fast word-level tokenizer, saved like a hub folder."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.GPT2Config(
        vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(folder)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=WORDS[0], eos_token=WORDS[0], unk_token="[UNK]"
    )
    fast.save_pretrained(folder)
    return folder


@dataclass(frozen=True)
class TinyServer:
    """A running server for the model "tiny": its loopback URL and an API key that may use it."""

    url: str
    key: str

    def connect(self, **options: Any) -> Any:
        """``telelens.connect`` to "tiny" with this key (no progress bars); ``options`` are connect's."""
        import telelens

        return telelens.connect(self.url, model="tiny", api_key=self.key, progress=False, **options)


@contextmanager
def serve_tiny(folder: Path, base: Path, allow_code: bool = False) -> Iterator[TinyServer]:
    """Serve ``folder`` as "tiny" on a free loopback port (Ray must be up), weights as saved, with one
    API key; keys file and data go under ``base``. Stops the server on exit."""
    from telelens.server._private.auth import add_key
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    keys = base / "keys.yaml"
    key = add_key(keys, "tester", allow_code=allow_code)
    config = ServeConfig.for_model(
        str(folder), name="tiny", port=0, keys_file=str(keys), allow_code=allow_code,
        data_dir=str(base / "data"), process_weights=False,  # compared with from_pretrained_no_processing
    )  # fmt: skip
    with run_server(config) as handle:
        yield TinyServer(f"grpc://127.0.0.1:{handle.port}", key)


def load_tiny_local(folder: Path) -> Any:
    """The model in ``folder`` in this process, weights as saved (what ``serve_tiny`` serves)."""
    from telelens.core.hooked_transformer import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu").eval()


def local_execute(model: Any, graph: ir.Graph, limits: ir.Limits | None = None, threads: int = 1) -> dict:
    """The in-process executor with a replica's torch thread count (``int(num_cpus)``).

    CPU matmuls sum in an order that depends on the thread count, so bit-for-bit comparisons
    with a server's results run locally with the same number of threads.
    """
    from telelens.core.graph import execute

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return execute(model, graph, limits or ir.Limits())
    finally:
        torch.set_num_threads(before)


def auth(key: str | None) -> tuple[tuple[str, str], ...]:
    return () if key is None else (("authorization", f"Bearer {key}"),)


def stub_for(address: str, max_message: int = 64 << 20) -> tuple[grpc.Channel, service_pb2_grpc.TelelensStub]:
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ],
    )
    return channel, service_pb2_grpc.TelelensStub(channel)


@dataclass
class RunOutcome:
    """What one streamed Run brought back, reassembled on the client."""

    raw: dict[str, bytearray] = field(default_factory=dict)
    headers: dict[str, service_pb2.ResultHeader] = field(default_factory=dict)
    progress: list[tuple[int, int]] = field(default_factory=list)
    chunks: int = 0
    summary: service_pb2.RunSummary | None = None
    order: list[str] = field(default_factory=list)  # message kinds, in order (batches flattened)
    batches: int = 0  # RunBatch messages among them

    def tensor(self, name: str) -> torch.Tensor:
        h = self.headers[name]
        td = ir.TensorData(codec.WIRE_DTYPES[h.dtype], tuple(h.shape), bytes(self.raw[name]))
        return tensor_data_to_torch(td)

    @property
    def values(self) -> dict[str, torch.Tensor]:
        return {name: self.tensor(name) for name in self.headers}


def run_graph(
    stub: service_pb2_grpc.TelelensStub,
    graph: ir.Graph,
    key: str | None = None,
    model: str = "tiny",
    chunk_bytes: int = 0,
    timeout: float = 60,
    on_message: Any = None,
    accept_batches: bool = False,
) -> RunOutcome:
    """Send ``graph``; reassemble every result from its chunks (each byte exactly once)."""
    request = service_pb2.RunRequest(
        model=model, graph=codec.encode_graph(graph), chunk_bytes=chunk_bytes, accept_batches=accept_batches
    )
    out = RunOutcome()
    filled: dict[str, int] = {}

    def receive(message: service_pb2.RunResponse) -> None:
        kind = message.WhichOneof("item")
        if kind == "batch":
            out.batches += 1
            for inner in message.batch.items:
                receive(inner)
            return
        out.order.append(kind)
        if kind == "progress":
            out.progress.append((message.progress.done, message.progress.total))
        elif kind == "header":
            h = message.header
            out.headers[h.name] = h
            out.raw[h.name] = bytearray(h.nbytes)
            filled[h.name] = 0
        elif kind == "chunk":
            c = message.chunk
            buf = out.raw[c.name]
            assert c.offset + len(c.data) <= len(buf), "a chunk past the end of its result"
            buf[c.offset : c.offset + len(c.data)] = c.data
            filled[c.name] += len(c.data)
            out.chunks += 1
        else:
            out.summary = message.done

    for message in stub.Run(request, metadata=auth(key), timeout=timeout):
        if on_message is not None:
            on_message(message)
        receive(message)
    assert out.summary is not None, "the stream ended without a RunSummary"
    for name, h in out.headers.items():
        assert filled[name] == h.nbytes, f"{name}: {filled[name]} of {h.nbytes} bytes arrived"
    return out


def graph_errors(error: grpc.RpcError) -> list[ir.GraphError]:
    """The structured errors in a refused Run's trailing metadata."""
    metadata = dict(error.trailing_metadata() or ())
    return codec.errors_from_proto(metadata[GRAPH_ERRORS_KEY])


def constant(node_id: int, array: np.ndarray | torch.Tensor) -> ir.Constant:
    t = torch.as_tensor(array)
    from telelens.protos.torch_tensors import tensor_data_from_torch

    return ir.Constant(node_id, tensor_data_from_torch(t))


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM (peak resident set) of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
