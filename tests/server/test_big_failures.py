"""Refusals whose details would pass gRPC's 16 KiB metadata limit keep their status and errors.

gRPC turns a status whose message + trailing metadata are too big into RESOURCE_EXHAUSTED or
UNAVAILABLE (which the client retries), losing the structured errors; so the server clips every
echoed name and caps the errors it sends (``telelens.server._private.failures``).
"""

from __future__ import annotations

import time

import grpc
import pytest
from server_helpers import auth, graph_errors, make_tiny_folder, run_graph, serve_tiny, stub_for

from telelens.protos import ir, service_pb2
from telelens.server._private import failures

HUGE = 100_000  # characters: far past gRPC's 16 KiB metadata limit


@pytest.fixture(scope="module")
def tiny(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("big_failures")
    with serve_tiny(make_tiny_folder(base / "tiny"), base) as server:
        yield server


@pytest.fixture(scope="module")
def stub(tiny):
    channel, stub = stub_for(tiny.url.removeprefix("grpc://"))
    yield stub
    channel.close()


def _reads(*hooks: str) -> ir.Graph:
    nodes: list[ir.Node] = [ir.Run(0, text=("w1",))]
    for i, hook in enumerate(hooks):
        nodes += [ir.Read(1 + 2 * i, 0, hook), ir.Save(2 + 2 * i, ir.Ref(1 + 2 * i), f"r{i}")]
    return ir.Graph(tuple(nodes))


def test_200_unknown_hooks_are_invalid_argument_with_capped_errors(tiny, stub) -> None:
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, _reads(*(f"blocks.0.hook_nope_{i}" for i in range(200))), tiny.key)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    errors = graph_errors(e.value)
    assert len(errors) == failures.MAX_ERRORS + 1
    assert all(err.field == "hook" for err in errors[:-1])
    assert "190 more" in errors[-1].reason  # the clipped count is noted
    assert "190 more" in e.value.details() and len(e.value.details()) <= failures.MAX_MESSAGE_CHARS + 100


def test_a_100kb_hook_name_is_invalid_argument_clipped_and_not_retried(tiny, stub) -> None:
    name = "blocks.0." + "x" * HUGE
    with pytest.raises(grpc.RpcError) as e:
        run_graph(stub, _reads(name), tiny.key)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (error,) = graph_errors(e.value)
    assert error.node_id == 1 and len(error.reason) < 1000 and "more characters" in error.reason
    assert len(e.value.details()) < 1000

    model = tiny.connect()  # the client raises the structured errors at once (no retries)
    start = time.monotonic()
    with pytest.raises(ir.GraphValidationError) as v:
        model.execute(_reads(name))
    assert time.monotonic() - start < 10
    assert [err.node_id for err in v.value.errors] == [1]


def test_a_100kb_model_name_is_not_found_clipped(tiny, stub) -> None:
    model = "m" * HUGE
    for call in (
        lambda: stub.GetModelInfo(service_pb2.GetModelInfoRequest(model=model), metadata=auth(tiny.key)),
        lambda: run_graph(stub, _reads("logits"), tiny.key, model=model),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "more characters" in e.value.details() and len(e.value.details()) < 1000


def test_the_server_answers_normally_after(tiny, stub) -> None:
    out = run_graph(stub, _reads("blocks.0.hook_resid_post"), tiny.key)
    assert out.values["r0"].shape[-1] == 32
