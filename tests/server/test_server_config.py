"""Server pieces without Ray or a network: configs, keys, failure mapping, the wire encoding, a worker in-process."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest
import torch
import yaml
from server_helpers import constant, make_tiny_folder

from telelens.cli import main as cli_main
from telelens.protos import codec, ir, service_pb2, worker_pb2
from telelens.server._private import failures
from telelens.server._private.auth import AuthError, KeyStore, add_key, bearer, hash_key, read_keys_file
from telelens.server._private.config_parsing import field_docs
from telelens.server._private.messages import encode_chunk
from telelens.server._private.service import handshake
from telelens.server.config import (
    ConfigError,
    LimitsConfig,
    ServeConfig,
    config_from_dict,
    describe,
    load_config,
    parse_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def _problems(data: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        config_from_dict(data)
    return dict(e.value.problems)


# ------------------------------------------------------------------------------------ config
def test_for_model_defaults_and_overrides() -> None:
    c = ServeConfig.for_model("/models/gpt2-small/", replicas=2, chunk_bytes="256 KiB", host="0.0.0.0")
    (m,) = c.models
    assert (m.name, m.source, m.replicas, m.device, m.dtype, m.process_weights) == (
        "gpt2-small", "/models/gpt2-small/", 2, "cpu", "float32", True,
    )  # fmt: skip
    assert (c.port, c.host, c.chunk_bytes, c.keys_file, c.ray_address) == (
        0,
        "0.0.0.0",
        256 << 10,
        None,
        None,
    )
    assert ServeConfig.for_model("x/SmolLM2.gguf").models[0].name == "SmolLM2"


def test_every_field_has_a_docstring() -> None:
    import dataclasses

    from telelens.server.config import ModelConfig, TLSConfig

    for cls in (ServeConfig, ModelConfig, LimitsConfig, TLSConfig, ir.Limits):
        missing = {f.name for f in dataclasses.fields(cls)} - set(field_docs(cls))
        assert not missing, (cls.__name__, missing)


def test_errors_name_each_field() -> None:
    problems = _problems(
        {
            "port": 70000,
            "chunk_bytes": "lots",
            "models": [
                {"name": "a", "source": "s", "replcas": 2},
                {"name": "b", "source": "s", "device": "cuda"},
                {"name": "b", "source": "", "dtype": "int8", "replicas": "two"},
            ],
        }
    )
    assert "did you mean 'replicas'" in problems["models[0].replcas"]
    assert "byte size" in problems["chunk_bytes"]
    assert "expected int" in problems["models[2].replicas"]
    # Value checks run once the types are right.
    problems = _problems(
        {
            "port": 70000,
            "progress_interval_seconds": -1,
            "models": [{"name": "b", "source": "s", "device": "cuda"}, {"name": "b", "source": ""}],
        }
    )
    assert set(problems) == {
        "port", "progress_interval_seconds", "models[0].num_gpus", "models[1].name", "models[1].source",
    }  # fmt: skip
    assert _problems({"models": []}) == {"models": "serve at least one model"}
    problems = _problems(
        {"models": [{"name": "a", "source": "s"}], "keys_file": "/nope.yaml", "tls": {"cert_file": "c"}}
    )
    assert set(problems) == {"keys_file", "tls.cert_file", "tls.key_file"}


def test_byte_sizes() -> None:
    assert parse_bytes(4096) == 4096
    assert (
        parse_bytes("1 MiB") == 1 << 20 and parse_bytes("2GiB") == 2 << 30 and parse_bytes("1.5 KB") == 1500
    )
    with pytest.raises(ValueError):
        parse_bytes("1 XB")


def test_load_yaml_resolves_paths_next_to_it(tmp_path: Path) -> None:
    add_key(tmp_path / "keys.yaml", "alice")
    (tmp_path / "serve.yaml").write_text(
        "port: 0\nkeys_file: keys.yaml\nlimits: {max_result_bytes: 1 GiB, deadline_seconds: 30}\n"
        "models:\n  - {name: tiny, source: smollm2-135m, replicas: 2, num_cpus: 0.5}\n"
    )
    c = load_config(tmp_path / "serve.yaml")
    assert c.keys_file == str(tmp_path / "keys.yaml")
    assert c.limits.graph.max_result_bytes == 1 << 30 and c.limits.deadline_seconds == 30.0
    assert c.models[0].num_cpus == 0.5 and c.models[0].source == "smollm2-135m"
    # The --check listing is YAML that loads back to the same config.
    assert config_from_dict(yaml.safe_load(describe(c))) == c


def test_deploy_example_validates(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["serve", "--config", str(REPO / "deploy" / "serve.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "# Ray actors holding a copy of the model" in out


def test_serve_check_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("models:\n  - {name: a, source: s, num_gpu: 1}\n")
    assert cli_main(["serve", "--config", str(tmp_path / "bad.yaml"), "--check"]) == 2
    assert "models[0].num_gpu" in capsys.readouterr().err
    assert cli_main(["serve", "--model", "m=/x", "--port", "0", "--check"]) == 0
    assert 'name: "m"' in capsys.readouterr().out


# ------------------------------------------------------------------------------------ keys
def test_keys_are_stored_hashed_and_authenticate(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    alice = add_key(path, "alice", models=["tiny"], limits={"max_tokens": 100})
    assert alice not in path.read_text() and hash_key(alice) in path.read_text()
    assert os.stat(path).st_mode & 0o777 == 0o600
    store = KeyStore(path)
    key = store.authenticate([("authorization", f"Bearer {alice}")])
    assert key.name == "alice" and key.limits == {"max_tokens": 100} and not key.allow_code
    store.authorize(key, "tiny", ["tiny", "other"])
    with pytest.raises(AuthError) as e:
        store.authorize(key, "other", ["tiny", "other"])
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    for metadata in ([], [("authorization", "Bearer nope")], [("authorization", alice)]):
        with pytest.raises(AuthError) as e:
            store.authenticate(metadata)
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED and alice not in e.value.message
    with pytest.raises(ValueError, match="already has a key"):
        add_key(path, "alice")


def test_keys_file_is_reloaded_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "alice")
    store = KeyStore(path)
    bob = add_key(path, "bob", allow_code=True)
    os.utime(path, (1, 1))  # a different mtime even within the clock's resolution
    assert store.authenticate([("authorization", f"Bearer {bob}")]).allow_code


def test_keys_file_errors_name_entries(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "a", "key_sha256": "xyz"},
                    {"name": "b", "key_sha256": "0" * 64, "limits": {"max_tokenz": 1}, "color": "red"},
                    {"name": "c", "key_sha256": "1" * 64, "models": "tiny", "limits": {"max_tokens": 0}},
                ]
            }
        )
    )
    with pytest.raises(ConfigError) as e:
        read_keys_file(path)
    fields = {f for f, _ in e.value.problems}
    assert fields == {"keys[0].key_sha256", "keys[1].limits.max_tokenz", "keys[1].color", "keys[2].models",
                      "keys[2].limits.max_tokens"}  # fmt: skip


def test_bearer_parsing() -> None:
    assert bearer([("authorization", "Bearer  k1 ")]) == "k1"
    assert bearer([("Authorization", b"bearer k2")]) == "k2"
    assert bearer([("authorization", "Basic k3")]) is None and bearer(None) is None


# ------------------------------------------------------------------------------------ failures
def _graph_bytes(graph: ir.Graph) -> bytes:
    from telelens.protos import codec

    return codec.graph_to_bytes(graph)


def test_decode_failures_tell_invalid_from_too_big() -> None:
    big = ir.Graph(tuple(ir.Run(i, text=("a",)) for i in range(20)))
    with pytest.raises(failures.Failure) as e:
        failures.decode(_graph_bytes(big), ir.Limits(max_nodes=10))
    assert e.value.code == "RESOURCE_EXHAUSTED" and "20 nodes" in e.value.message
    broken = ir.Graph((*big.nodes, ir.Save(20, ir.Ref(99), "x")))
    with pytest.raises(failures.Failure) as e:
        failures.decode(_graph_bytes(broken), ir.Limits(max_nodes=10))
    assert e.value.code == "INVALID_ARGUMENT"
    assert {err.node_id for err in e.value.errors} == {None, 20}  # the limit and the real problem
    with pytest.raises(failures.Failure) as e:
        failures.decode(b"\xff\xff", ir.Limits())
    assert e.value.code == "INVALID_ARGUMENT"


def test_has_code() -> None:
    assert failures.has_code(ir.Graph((ir.Run(0, text=("a",)), ir.CodeHook(1, 0, "hook_embed", b"x"))))
    assert not failures.has_code(ir.Graph((ir.Run(0, text=("a",)),)))


# ------------------------------------------------------------------------------------ wire
def test_handshake_versions() -> None:
    assert handshake(ir.GRAPH_VERSION).compatible
    reply = handshake(ir.GRAPH_VERSION + 1)
    assert not reply.compatible and "upgrade the server" in reply.reason
    assert not handshake(0).compatible


@pytest.mark.parametrize(
    ("name", "offset", "size"), [("sum", 0, 1), ("", 5, 0), ("é" * 70, 2**40, 1 << 16), ("x", 127, 128)]
)
def test_encode_chunk_is_protobuf_byte_for_byte(name: str, offset: int, size: int) -> None:
    data = os.urandom(size)
    want = service_pb2.RunResponse(chunk=service_pb2.ResultChunk(name=name, offset=offset, data=data))
    got = encode_chunk(name, offset, memoryview(data))
    assert got == want.SerializeToString() and service_pb2.RunResponse.FromString(got) == want


# ------------------------------------------------------------------------------------ worker
@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from telelens.server._private.worker import ModelWorker
    from telelens.server.config import ModelConfig

    folder = make_tiny_folder(tmp_path_factory.mktemp("tiny") / "tiny")
    return ModelWorker(ModelConfig(name="tiny", source=str(folder)), chunk_bytes=4096)


def test_worker_streams_views_of_the_result(worker) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private.results import Done, Header, Progress, ResultPiece

    graph = ir.Graph(
        (
            constant(0, torch.arange(3000, dtype=torch.float32)),
            ir.Binary(1, "mul", ir.Ref(0), 2.0),
            ir.Save(2, ir.Ref(1), "x", "bfloat16"),
            ir.Run(3, text=("w1 w2",)),
            ir.Read(4, 3, "logits"),
            ir.Save(5, ir.Ref(4), "logits"),
        )
    )
    items = list(worker.run(graph, ir.Limits()))
    # A run shorter than the progress interval sends no progress: straight to its results.
    assert isinstance(items[0], Header) and isinstance(items[-1], Done)
    assert not any(isinstance(i, Progress) for i in items)
    headers = [i for i in items if isinstance(i, Header)]
    assert [(h.name, h.dtype, h.shape, h.nbytes) for h in headers] == [
        ("x", "bfloat16", (3000,), 6000), ("logits", "float32", (1, 3, 97), 1164),
    ]  # fmt: skip
    chunks = [i for i in items if isinstance(i, ResultPiece) and i.name == "x"]
    assert [c.offset for c in chunks] == [0, 4096] and chunks[0].data.base is chunks[1].data.base  # views
    raw = b"".join(c.data.tobytes() for c in chunks)
    assert torch.equal(
        torch.frombuffer(bytearray(raw), dtype=torch.bfloat16), (torch.arange(3000.0) * 2).bfloat16()
    )


def test_worker_runs_every_pass_on_one_compute_thread(worker) -> None:  # type: ignore[no-untyped-def]
    """Torch work stays on the worker's one compute thread (a second OpenMP team would halve speed)."""
    import threading

    from telelens.server._private.results import Progress

    seen: list[int] = []
    graph = ir.Graph(
        (
            ir.Run(0, text=("w1 w2",)),
            ir.Read(1, 0, "logits"),
            ir.Save(2, ir.Ref(1), "a"),
            ir.Run(3, text=("w3",)),
            ir.Read(4, 3, "logits"),
            ir.Save(5, ir.Ref(4), "b"),
        )
    )
    handle = worker.model.unembed.register_forward_hook(lambda *_: seen.append(threading.get_ident()))
    worker.progress_interval = 0.0  # report every pass
    try:
        first = list(worker.run(graph, ir.Limits()))
        second = list(worker.run(graph, ir.Limits()))
    finally:
        worker.progress_interval = 0.1
        handle.remove()
    assert len(seen) >= 2 and len(set(seen)) == 1 and seen[0] != threading.get_ident()
    progress = [i for i in first if isinstance(i, Progress)]
    assert progress and progress[-1].done == progress[-1].total == 2 and len(second) == len(first)


def test_worker_reports_failures(worker) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private.failures import Failure

    bad = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "nope"), ir.Save(2, ir.Ref(1), "x")))
    (failure,) = list(worker.run(bad, ir.Limits()))
    assert (
        isinstance(failure, Failure) and failure.code == "INVALID_ARGUMENT" and failure.errors[0].node_id == 1
    )
    ok = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "x")))
    (failure,) = list(worker.run(ok, ir.Limits(max_tokens=1)))
    assert failure.code == "RESOURCE_EXHAUSTED"
    items = list(worker.run(ok, ir.Limits(), should_stop=lambda: True))
    assert isinstance(items[-1], Failure) and items[-1].code == "CANCELLED"


# ------------------------------------------------------------------------------------ worker channel
@pytest.fixture(scope="module")
def channel(worker):  # type: ignore[no-untyped-def]
    from telelens.server._private.worker_channel import WorkerChannel

    served = WorkerChannel(worker, "127.0.0.1")
    yield served
    served.stop()


def _channel_run(channel, graph: ir.Graph, inline_bytes: int, token: str | None = None):  # type: ignore[no-untyped-def]
    """The worker channel's answer to ``graph``: its RunResponse messages and trailing metadata."""
    from telelens.server._private.worker_channel import TOKEN_KEY, limits_to_proto

    request = worker_pb2.WorkerRunRequest(
        graph=codec.encode_graph(graph),
        limits=limits_to_proto(ir.Limits()),
        chunk_bytes=4096,
        inline_bytes=inline_bytes,
    )
    with grpc.insecure_channel(channel.address) as ch:
        run = ch.unary_stream(
            "/telelens.v1.Worker/Run", response_deserializer=service_pb2.RunResponse.FromString
        )
        call = run(request.SerializeToString(), metadata=((TOKEN_KEY, token or channel.token),), timeout=30)
        return list(call), dict(call.trailing_metadata())


def test_worker_channel_sends_small_results_and_parks_large_ones(worker, channel) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private.failures import Failure
    from telelens.server._private.worker_channel import PARKED_KEY

    graph = ir.Graph((ir.Run(0, text=("w1 w2",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "logits")))
    want = b"".join(i.data.tobytes() for i in worker.run(graph, ir.Limits()) if hasattr(i, "data"))
    assert len(want) == 3 * 97 * 4

    sent, trailer = _channel_run(channel, graph, inline_bytes=len(want))  # fits: in the stream
    assert [m.WhichOneof("item") for m in sent] == ["header", "chunk", "done"] and PARKED_KEY not in trailer
    assert sent[1].chunk.data == want and sent[2].done.result_bytes == len(want)

    sent, trailer = _channel_run(channel, graph, inline_bytes=len(want) - 1)  # one byte over: parked
    assert sent == [] and PARKED_KEY in trailer
    parked = channel.take(trailer[PARKED_KEY])
    data, dtype, shape = parked.results["logits"]
    assert (data.tobytes(), dtype, shape) == (want, "float32", (1, 3, 97))
    with pytest.raises(Failure, match="holds no results"):  # taken once
        channel.take(trailer[PARKED_KEY])


def test_worker_channel_marks_the_failures_of_runs(channel) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private.worker_channel import FAILURE_KEY

    bad = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "nope"), ir.Save(2, ir.Ref(1), "x")))
    with pytest.raises(grpc.RpcError) as e:
        _channel_run(channel, bad, inline_bytes=1 << 20)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailer = dict(e.value.trailing_metadata())
    assert FAILURE_KEY in trailer
    assert codec.errors_from_proto(trailer[codec.GRAPH_ERRORS_KEY])[0].node_id == 1


def test_worker_channel_refuses_a_wrong_token(channel) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private.worker_channel import FAILURE_KEY

    ok = ir.Graph((ir.Run(0, text=("w1",)), ir.Read(1, 0, "logits"), ir.Save(2, ir.Ref(1), "x")))
    with pytest.raises(grpc.RpcError) as e:
        _channel_run(channel, ok, inline_bytes=1 << 20, token="not-" + channel.token)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert FAILURE_KEY not in dict(e.value.trailing_metadata() or ())


def test_parked_results_expire(channel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from telelens.server._private import worker_channel
    from telelens.server._private.failures import Failure

    monkeypatch.setattr(worker_channel, "PARK_SECONDS", -1.0)  # expired as soon as parked
    first = channel.park({}, 0.0)
    channel.park({}, 0.0)  # parking drops what expired
    with pytest.raises(Failure, match="expired"):
        channel.take(first)


@pytest.mark.parametrize("sizes", [(), (0,), (5, 300, 70_000)])
def test_batch_is_protobuf_byte_for_byte(sizes: tuple[int, ...]) -> None:
    from telelens.server._private.messages import batch

    responses = [
        service_pb2.RunResponse(chunk=service_pb2.ResultChunk(name="x", offset=i, data=os.urandom(n)))
        for i, n in enumerate(sizes)
    ]
    want = service_pb2.RunResponse(batch=service_pb2.RunBatch(items=responses))
    got = batch(r.SerializeToString() for r in responses)
    assert got == want.SerializeToString() and service_pb2.RunResponse.FromString(got) == want


def test_batched_keeps_a_batch_within_its_limit() -> None:
    from telelens.server._private.messages import batch, batched

    responses = [bytes([0x1A]) + bytes(100), bytes([0x1A]) + bytes(200), bytes([0x22, 0])]
    whole = batch(responses)
    assert list(batched(responses, len(whole) + 20)) == [whole]  # framing counted generously
    assert list(batched(responses, 150)) == responses  # over the limit: as they are, in order
    assert list(batched(responses, 0)) == responses  # 0: never batched
    assert list(batched(iter(responses), 1 << 20)) == [whole]


def test_limits_travel_to_the_worker_unchanged() -> None:
    from telelens.server._private.worker_channel import limits_from_proto, limits_to_proto

    limits = ir.Limits(
        max_nodes=7,
        max_tokens=11,
        max_constant_bytes=13,
        max_result_bytes=17,
        max_sweep_cells=19,
        allow_code=True,
    )
    assert limits_from_proto(limits_to_proto(limits)) == limits
    assert limits_from_proto(limits_to_proto(ir.Limits())) == ir.Limits()


def test_message_kinds_are_told_from_their_first_byte() -> None:
    from telelens.server._private.messages import carries_result, is_done

    kinds = {
        "progress": service_pb2.RunResponse(progress=service_pb2.Progress()),
        "header": service_pb2.RunResponse(header=service_pb2.ResultHeader(name="x")),
        "chunk": service_pb2.RunResponse(chunk=service_pb2.ResultChunk()),
        "done": service_pb2.RunResponse(done=service_pb2.RunSummary(result_bytes=3)),
        "batch": service_pb2.RunResponse(batch=service_pb2.RunBatch()),  # a whole run: results and done
    }
    for kind, message in kinds.items():
        assert carries_result(message.SerializeToString()) == (kind in ("header", "chunk", "batch")), kind
        assert is_done(message.SerializeToString()) == (kind in ("done", "batch")), kind
    assert not carries_result(b"") and not is_done(b"")


def test_docs_list_every_config_field() -> None:
    import dataclasses

    from telelens.server.config import ModelConfig, TLSConfig

    text = (REPO / "docs" / "server.md").read_text()
    for cls in (ServeConfig, ModelConfig, TLSConfig):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, (cls.__name__, f.name)
    for key in LimitsConfig.flat_types():  # the keys under `limits:` (an ir.Limits and the server's own)
        assert f"| `{key}` |" in text, ("LimitsConfig", key)
