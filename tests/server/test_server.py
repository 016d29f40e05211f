"""The server end to end: real Ray, real gRPC on loopback, raw generated stubs.

One server for the module (a random tiny GPT-2 with a tokenizer, saved to disk and loaded
by a Ray actor), API keys from a keys file. Results are compared with the in-process
executor on the same weights: they must be equal bit for bit.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_helpers import (
    auth,
    constant,
    graph_errors,
    local_execute,
    make_tiny_folder,
    peak_rss_mb,
    rss_mb,
    run_graph,
    stub_for,
)

from telelens.core.graph.hooks import hook_table
from telelens.protos import codec, ir, service_pb2, worker_pb2
from telelens.server._private.auth import add_key
from telelens.server.config import ServeConfig

pytestmark = pytest.mark.timeout(300)

KEYS: dict[str, dict[str, Any]] = {
    "full": dict(allow_code=True),
    "nocode": dict(models=["tiny"]),
    "other": dict(models=["some-other-model"]),
    "small": dict(allow_code=True, limits={"max_result_bytes": 1024, "deadline_seconds": 1.0}),
}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    return path, {name: add_key(path, name, **kw) for name, kw in KEYS.items()}


@pytest.fixture(scope="module")
def server(
    ray_cluster: None,
    tiny_folder: Path,
    keys: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
):
    from telelens.server.app import run_server

    config = ServeConfig.for_model(
        str(tiny_folder),
        name="tiny",
        port=0,
        process_weights=False,  # compared with the local from_pretrained_no_processing model
        keys_file=str(keys[0]),
        allow_code=True,
        data_dir=str(tmp_path_factory.mktemp("data")),
        grace_seconds=2,
        # small worker chunks: a 64 MiB result is then more than the worker may send ahead
        # (backpressure) of a stalled client, which the kill-while-streaming test relies on
        worker_chunk_bytes=8 << 20,
        # results over 64 KiB go through Ray, smaller ones in the worker's stream: both paths run here
        inline_result_bytes=64 << 10,
        progress_interval_seconds=0.0,  # every pass reported, however short the run
    )
    with run_server(config) as handle:
        yield handle


@pytest.fixture(scope="module")
def stub(server):
    channel, stub = stub_for(server.address, max_message=16 << 20)
    yield stub
    channel.close()


@pytest.fixture(scope="module")
def local(tiny_folder: Path):
    from telelens.core.hooked_transformer import HookedTransformer

    return HookedTransformer.from_pretrained_no_processing(str(tiny_folder)).eval()


@pytest.fixture(scope="module")
def key(keys: tuple[Path, dict[str, str]]) -> dict[str, str]:
    return keys[1]


def _sleeper(seconds: float) -> bytes:
    """A cloudpickled code hook that sleeps (a slow request) and leaves the activation alone."""

    def hook(x, hook):  # type: ignore[no-untyped-def]
        import time as _time

        _time.sleep(seconds)

    return cloudpickle.dumps(hook)


def _slow_graph(seconds: float) -> ir.Graph:
    return ir.Graph(
        (
            ir.Run(0, text=("w1 w2",)),
            ir.CodeHook(1, 0, "blocks.0.hook_resid_post", _sleeper(seconds)),
            ir.Read(2, 0, "logits"),
            ir.Index(3, ir.Ref(2), (0, -1)),
            ir.Save(4, ir.Ref(3), "logits"),
        )
    )


# ------------------------------------------------------------------------------------ handshake
def test_handshake_compatible(stub, key) -> None:
    reply = stub.Handshake(
        service_pb2.HandshakeRequest(protocol_version=ir.GRAPH_VERSION, client_version="t"),
        metadata=auth(key["full"]),
    )
    assert reply.compatible and reply.reason == ""
    assert reply.protocol_version == ir.GRAPH_VERSION and reply.min_protocol_version <= ir.GRAPH_VERSION
    assert reply.server_version


@pytest.mark.parametrize("client", [0, ir.GRAPH_VERSION + 1])
def test_handshake_incompatible_names_both_versions(stub, key, client: int) -> None:
    reply = stub.Handshake(service_pb2.HandshakeRequest(protocol_version=client), metadata=auth(key["full"]))
    assert not reply.compatible
    assert str(client) in reply.reason and str(ir.GRAPH_VERSION) in reply.reason


# ------------------------------------------------------------------------------------ models
def test_list_models(stub, key) -> None:
    (m,) = stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(key["full"])).models
    assert (m.name, m.n_layers, m.replicas, m.dtype, m.device) == ("tiny", 2, 1, "float32", "cpu")
    assert m.architecture == "GPT2LMHeadModel" and m.n_params > 0
    # A key sees only the models it may use.
    assert not stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(key["other"])).models


def test_model_info(stub, key, local) -> None:
    import json

    from tokenizers import Tokenizer

    info = stub.GetModelInfo(service_pb2.GetModelInfoRequest(model="tiny"), metadata=auth(key["full"]))
    expected = [h for h in hook_table(local).order if h != ir.LOGITS]
    assert [h.name for h in info.hooks] == expected
    shapes = {h.name: list(h.shape) for h in info.hooks}
    assert shapes["blocks.1.attn.hook_pattern"] == ["batch", "head_index", "query_pos", "key_pos"]
    assert json.loads(info.config_json)["n_layers"] == 2
    tok = Tokenizer.from_str(info.tokenizer_json)
    assert tok.encode("w1 w2 w3").ids == local.tokenizer.encode("w1 w2 w3", add_special_tokens=False)
    tcfg = json.loads(info.tokenizer_config_json)
    assert tcfg["bos_token_id"] == 0 and tcfg["default_prepend_bos"] is True
    assert tcfg["default_padding_side"] == "right" and tcfg["tokenizer_prepends_bos"] is False
    weights = {w.name: list(w.shape) for w in info.weights}
    assert weights["W_U"] == [32, 97] and weights["blocks.1.attn.W_O"] == [4, 8, 32]


def test_unknown_model_is_not_found(stub, key) -> None:
    with pytest.raises(grpc.RpcError) as e:
        stub.GetModelInfo(service_pb2.GetModelInfoRequest(model="nope"), metadata=auth(key["full"]))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "tiny" in e.value.details()


def test_unknown_and_forbidden_models_answer_alike(stub, key) -> None:
    """A key may not learn which models exist: 'tiny' (served, forbidden) answers like 'nope'."""
    graph = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    answers = []
    for model in ("tiny", "nope"):
        for call in (
            lambda m=model: stub.GetModelInfo(
                service_pb2.GetModelInfoRequest(model=m), metadata=auth(key["other"])
            ),
            lambda m=model: run_graph(stub, graph, key["other"], model=m),
        ):
            with pytest.raises(grpc.RpcError) as e:
                call()
            answers.append((e.value.code(), e.value.details().replace(repr(model), "<model>")))
    assert len(set(answers)) == 1, answers
    assert answers[0] == (
        grpc.StatusCode.NOT_FOUND,
        "model <model> is not served for this key; your key may use no model here",
    )


def test_health(server) -> None:
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "telelens.v1.Telelens", "telelens.v1.Telelens/tiny"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


# ------------------------------------------------------------------------------------ auth
@pytest.mark.parametrize("bad", [None, "tl-not-a-key", ""])
def test_missing_or_bad_key_is_unauthenticated(stub, bad) -> None:
    calls = [
        lambda md: stub.Handshake(service_pb2.HandshakeRequest(protocol_version=1), metadata=md),
        lambda md: stub.GetModelInfo(service_pb2.GetModelInfoRequest(model="tiny"), metadata=md),
        lambda md: list(stub.Run(service_pb2.RunRequest(model="tiny"), metadata=md)),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call(auth(bad) if bad is not None else ())
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not bad or bad not in e.value.details()  # the key is never echoed


def test_model_not_allowed_for_key(stub, key) -> None:
    graph = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["other"])
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and "not served for this key" in e.value.details()


def test_revoked_key_is_refused_after_reload(stub, keys, capsys) -> None:
    from telelens.cli import main as cli_main

    path = keys[0]
    assert cli_main(["keys", "add", "temp", "--keys-file", str(path), "--models", "tiny"]) == 0
    temp = capsys.readouterr().out.strip()
    (m,) = stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(temp)).models
    assert m.name == "tiny"
    assert cli_main(["keys", "revoke", "temp", "--keys-file", str(path)]) == 0
    with pytest.raises(grpc.RpcError) as e:
        stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(temp))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(keys[1]["full"])).models


def test_malformed_keys_file_keeps_serving_the_last_good_keys(stub, keys, caplog) -> None:
    path, key = keys
    good = path.read_text()
    garbage = "keys: [ {name: full, key_sha256: 'zz'\n  : : not-yaml-garbage-" + "x" * 50
    graph = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    try:
        path.write_text(garbage)
        with caplog.at_level(logging.WARNING, logger="telelens.server._private.auth"):
            for _ in range(3):
                assert stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(key["full"])).models
                assert "l" in run_graph(stub, graph, key["nocode"]).values
                with pytest.raises(grpc.RpcError) as e:
                    stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth("tl-not-a-key"))
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
                for text in (str(path), path.name, "garbage", "key_sha256"):
                    assert text not in e.value.details()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]
        assert len(warnings) == 1
    finally:
        path.write_text(good)
    assert stub.ListModels(service_pb2.ListModelsRequest(), metadata=auth(key["full"])).models


def test_code_hooks_need_a_key_that_allows_code(stub, key, local) -> None:
    def double(x, hook):  # type: ignore[no-untyped-def]
        return x * 2

    graph = ir.Graph(
        (
            ir.Run(0, text=("w1 w2 w3",)),
            ir.CodeHook(1, 0, "blocks.0.hook_resid_mid", cloudpickle.dumps(double)),
            ir.Read(2, 0, "logits"),
            ir.Save(3, ir.Ref(2), "logits"),
        )
    )
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["nocode"])
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "code hooks" in e.value.details()
    got = run_graph(stub, graph, key["full"]).values
    want = local_execute(local, graph, ir.Limits(allow_code=True))
    assert torch.equal(got["logits"], want["logits"])


# ------------------------------------------------------------------------------------ runs
def _parity_graphs() -> dict[str, ir.Graph]:
    tokens = torch.tensor([[0, 5, 6, 7, 8, 9], [0, 5, 6, 17, 8, 9]])
    patch = ir.Graph(
        (
            constant(0, tokens[:1]),
            constant(1, tokens[1:]),
            ir.Run(2, tokens=ir.Ref(0)),
            ir.Run(3, tokens=ir.Ref(1)),
            ir.Read(4, 2, "blocks.0.hook_resid_post"),
            ir.Index(5, ir.Ref(4), (ir.SliceItem(), -1)),
            ir.Write(6, 3, "blocks.0.hook_resid_post", ir.Ref(5), (ir.SliceItem(), -1)),
            ir.Read(7, 3, "logits"),
            ir.Index(8, ir.Ref(7), (0, -1)),
            ir.Unary(9, "log_softmax", ir.Ref(8), dim=-1),
            ir.Save(10, ir.Ref(9), "logprobs"),
            ir.Read(11, 2, "blocks.1.attn.hook_pattern"),
            ir.Save(12, ir.Ref(11), "pattern", "float16"),
            ir.Reduce(13, "argmax", ir.Ref(7), dims=(-1,)),
            ir.Save(14, ir.Ref(13), "argmax"),
        )
    )
    text = ir.Graph(
        (
            ir.Run(0, text=("w1 w2 w3 w4", "w5 w6")),
            ir.Read(1, 0, "blocks.0.hook_resid_post"),
            ir.Save(2, ir.Ref(1), "resid"),
            ir.Read(3, 0, "logits"),
            ir.Save(4, ir.Ref(3), "logits_bf16", "bfloat16"),
            ir.Weight(5, "blocks.1.attn.W_O"),
            ir.Save(6, ir.Ref(5), "W_O"),
        )
    )
    sweep = ir.Graph(
        (
            constant(0, tokens[:1]),
            constant(1, tokens[1:]),
            ir.Run(2, tokens=ir.Ref(0)),
            ir.Run(3, tokens=ir.Ref(1)),
            ir.Sweep(
                4,
                corrupted=3,
                clean=2,
                activation="resid_pre",
                axes=("layer", "pos"),
                metric=(ir.SweepLogits(0), ir.Index(1, ir.Ref(0), (0, -1, 7))),
                metric_input=0,
                metric_output=1,
            ),
            ir.Save(5, ir.Ref(4), "grid"),
        )
    )
    return {"patch": patch, "text": text, "sweep": sweep}


@pytest.mark.parametrize("name", ["patch", "text", "sweep"])
def test_run_equals_local_execution(stub, key, local, name: str) -> None:
    graph = _parity_graphs()[name]
    out = run_graph(stub, graph, key["full"])
    want = local_execute(local, graph)
    assert list(out.headers) == [s.name for s in graph.saves]  # in Save order
    for result, expected in want.items():
        got = out.values[result]
        assert got.dtype == expected.dtype and got.shape == expected.shape, result
        assert torch.equal(got, expected), result
    assert out.order[0] == "progress" and out.order[-1] == "done"
    assert out.progress[-1][0] == out.progress[-1][1] > 0
    assert out.summary is not None
    assert out.summary.result_bytes == sum(h.nbytes for h in out.headers.values())
    assert out.summary.worker.startswith("tiny/0@")


def test_small_chunks_reassemble(stub, key, local) -> None:
    graph = ir.Graph(
        (
            ir.Run(0, text=("w1 w2 w3 w4 w5 w6 w7 w8",) * 8),
            ir.Read(1, 0, "logits"),  # 8 * 9 * 97 * 4 bytes = 27.9 KB
            ir.Save(2, ir.Ref(1), "logits"),
        )
    )
    out = run_graph(stub, graph, key["full"], chunk_bytes=4096)
    assert out.chunks == -(-out.headers["logits"].nbytes // 4096)
    assert torch.equal(out.values["logits"], local_execute(local, graph)["logits"])


def test_invalid_graph_is_invalid_argument_with_graph_errors(stub, key) -> None:
    graph = ir.Graph(
        (ir.Run(0, text=("w1",)), ir.Read(1, 0, "blocks.0.hook_resid_pots"), ir.Save(2, ir.Ref(1), "r"))
    )
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["full"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (error,) = graph_errors(e.value)
    assert error.node_id == 1 and error.field == "hook" and "blocks.0.hook_resid_post" in error.reason
    assert "node 1" in e.value.details()


def test_structurally_invalid_graph_is_refused_by_the_front_door(stub, key) -> None:
    graph = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(7), "r")))
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["full"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(err.node_id, err.field) for err in graph_errors(e.value)] == [(2, "input")]


def test_result_over_limit_is_resource_exhausted(stub, key) -> None:
    graph = ir.Graph((ir.Run(0, text=("w1 w2 w3",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["small"])  # 3 * 97 * 4 bytes > 1024
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1024" in e.value.details() and graph_errors(e.value)[0].node_id == 2
    run_graph(stub, graph, key["full"])  # fine under the default limits


def test_deadline_exceeded(stub, key) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, _slow_graph(3.0), key["small"])  # the key's deadline is 1 s
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5


# ------------------------------------------------------------------------------------ workers
def _replica(server):
    (replica,) = server.pool.replicas("tiny")
    return replica


def _wait_busy(server, timeout: float = 20) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        replica = _replica(server)
        if replica.busy:
            return replica.actor
        time.sleep(0.01)
    raise AssertionError("the request never reached a worker")


def test_worker_killed_before_results_is_retried(server, stub, key, local) -> None:
    import ray

    graph = _slow_graph(1.5)
    outcome: dict[str, object] = {}

    def request() -> None:
        try:
            outcome["result"] = run_graph(stub, graph, key["full"])
        except grpc.RpcError as e:
            outcome["error"] = e

    thread = threading.Thread(target=request)
    thread.start()
    actor = _wait_busy(server)
    time.sleep(0.3)  # inside the slow forward pass
    ray.kill(actor)
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    got = outcome["result"].values["logits"]  # type: ignore[attr-defined]
    assert torch.equal(got, local_execute(local, graph, ir.Limits(allow_code=True))["logits"])
    assert _replica(server).generation >= 1 and _replica(server).actor is not actor
    quick = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    assert run_graph(stub, quick, key["full"]).values["l"].shape == (1, 2, 97)  # the pool keeps serving


def test_small_results_come_in_the_workers_stream_large_ones_through_ray(server, stub, key, local) -> None:
    def logits_of(batch: int) -> ir.Graph:
        text = ("w1 w2 w3 w4 w5 w6 w7 w8",) * batch  # batch x 9 x 97 float32
        return ir.Graph((ir.Run(0, text=text), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))

    for graph, path in ((logits_of(1), "inline"), (logits_of(32), "collected")):  # 3.5 KB, 112 KB
        before = server.pool.stats[path]
        out = run_graph(stub, graph, key["full"], chunk_bytes=16 << 10)
        assert server.pool.stats[path] == before + 1, path  # the fixture inlines up to 64 KiB
        assert torch.equal(out.values["l"], local_execute(local, graph)["l"]), path
        assert out.chunks == -(-out.headers["l"].nbytes // (16 << 10)), path


def test_a_short_run_comes_as_one_batch_to_a_client_that_accepts_them(stub, key, local) -> None:
    small = ir.Graph((ir.Run(0, text=("w1 w2",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    out = run_graph(stub, small, key["full"], accept_batches=True)  # 1164 bytes: within one chunk
    assert out.batches == 1 and out.order[-3:] == ["header", "chunk", "done"]
    assert torch.equal(out.values["l"], local_execute(local, small)["l"])
    assert run_graph(stub, small, key["full"]).batches == 0  # a client that did not ask: none
    longer = ir.Graph(
        (
            ir.Run(0, text=("w1 w2 w3 w4 w5 w6 w7 w8",) * 8),
            ir.Read(1, 0, "logits"),
            ir.Save(2, ir.Ref(1), "l"),
        )
    )
    out = run_graph(stub, longer, key["full"], chunk_bytes=4096, accept_batches=True)  # 27.9 KB: 7 chunks
    assert out.batches == 0 and out.chunks == 7
    assert torch.equal(out.values["l"], local_execute(local, longer)["l"])


def test_worker_channel_needs_the_token_from_ray(server) -> None:
    import ray

    from telelens.server._private.worker_channel import TOKEN_KEY

    address, token = ray.get(_replica(server).actor.endpoint.remote())
    request = worker_pb2.WorkerRunRequest().SerializeToString()
    with grpc.insecure_channel(address) as channel:
        run = channel.unary_stream("/telelens.v1.Worker/Run")
        for metadata in ((), ((TOKEN_KEY, token[::-1]),)):
            with pytest.raises(grpc.RpcError) as e:
                list(run(request, metadata=metadata, timeout=10))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_worker_killed_while_streaming_is_unavailable(server, stub, key) -> None:
    import ray

    column = torch.arange(4096, dtype=torch.float32)
    graph = ir.Graph(
        (
            constant(0, column[:, None]),
            constant(1, column[None, :]),
            ir.Binary(2, "mul", ir.Ref(0), ir.Ref(1)),
            ir.Save(3, ir.Ref(2), "big"),  # 4096 x 4096 float32 = 64 MiB: more than the worker may
        )  # produce ahead of a stalled client
    )
    killed = threading.Event()

    def on_message(message) -> None:  # type: ignore[no-untyped-def]
        if message.WhichOneof("item") == "chunk" and not killed.is_set():
            ray.kill(_replica(server).actor)
            killed.set()
            time.sleep(0.5)

    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, graph, key["full"], on_message=on_message)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "send the request again" in e.value.details()
    quick = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    assert run_graph(stub, quick, key["full"]).values["l"].shape == (1, 2, 97)


def test_256mb_result_streams_in_chunks(server, stub, key) -> None:
    import ray

    n = 8192  # [8192, 8192] float32 = 256 MiB from two 32 KiB constants
    a = np.linspace(-1, 1, n, dtype=np.float32)
    b = np.linspace(0, 3, n, dtype=np.float32)
    graph = ir.Graph(
        (
            constant(0, torch.from_numpy(a)[:, None]),
            constant(1, torch.from_numpy(b)[None, :]),
            ir.Binary(2, "add", ir.Ref(0), ir.Ref(1)),
            ir.Save(3, ir.Ref(2), "sum"),
        )
    )
    rss_before = rss_mb()
    started = time.perf_counter()
    out = run_graph(stub, graph, key["full"], timeout=120)
    seconds = time.perf_counter() - started
    rss_after = rss_mb()
    header = out.headers["sum"]
    assert list(header.shape) == [n, n] and header.nbytes == n * n * 4 == 256 << 20
    assert out.chunks == 256  # 1 MiB chunks, the server default
    got = np.frombuffer(out.raw["sum"], dtype="<f4").reshape(n, n)
    for r in range(0, n, 1024):  # row blocks: no second full-size copy
        assert np.array_equal(got[r : r + 1024], a[r : r + 1024, None] + b[None, :])
    worker_pid = ray.get(_replica(server).actor.pid.remote())
    print(
        f"\n256 MiB result: {seconds:.2f} s end to end ({256 / seconds:.0f} MiB/s, compute included); "
        f"this process (front door + client, which holds the result) RSS +{rss_after - rss_before:.0f} MiB; "
        f"worker peak RSS {peak_rss_mb(worker_pid):.0f} MiB (bench/bench_stream.py measures each process apart)"
    )


def test_client_cancel_frees_the_worker(server, stub, key) -> None:
    call = stub.Run(
        service_pb2.RunRequest(model="tiny", graph=codec.encode_graph(_slow_graph(1.0))),
        metadata=auth(key["full"]),
    )
    _wait_busy(server)
    call.cancel()
    end = time.monotonic() + 10
    while _replica(server).busy and time.monotonic() < end:
        time.sleep(0.01)
    assert _replica(server).busy == 0
    quick = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "l")))
    assert run_graph(stub, quick, key["full"]).values["l"].shape == (1, 2, 97)
