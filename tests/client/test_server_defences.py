"""The client's defences against a misbehaving server (issue 12, finding 14), on a fake Run stream.

A real server cannot be made to declare a 4 TiB result, drop a saved value or stall on purpose,
so the transport here reads a scripted stream: the same ``Transport.run`` code, no network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from telelens.client import limits
from telelens.client.errors import ProtocolError
from telelens.client.results import Chunk
from telelens.client.tokenizer import RemoteTokenizer
from telelens.client.tokenizer_guard import STANDARD_PATTERNS
from telelens.client.transport import INFO_TIMEOUT, Transport
from telelens.protos import ir, service_pb2, tensor_pb2

TIB = 1 << 40


class FakeCall:
    """A Run call that yields scripted items and records how it was made."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.cancelled = False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def cancel(self) -> None:
        self.cancelled = True


def fake_transport(items: list[Any], **kwargs: Any) -> tuple[Transport, list[dict[str, Any]]]:
    transport = Transport("grpc://127.0.0.1:1", progress=False, **kwargs)  # never dialled
    calls: list[dict[str, Any]] = []

    def run(request: Any, **call_kwargs: Any) -> FakeCall:
        calls.append(call_kwargs)
        return FakeCall(items)

    transport._run = run  # type: ignore[method-assign]
    return transport, calls


def header(name: str, shape: list[int]) -> service_pb2.RunResponse:
    nbytes = 4
    for d in shape:
        nbytes *= d
    h = service_pb2.ResultHeader(name=name, dtype=tensor_pb2.DTYPE_FLOAT32, shape=shape, nbytes=nbytes)
    return service_pb2.RunResponse(header=h)


def saving(*names: str) -> ir.Graph:
    nodes: list[ir.Node] = [ir.Weight(0, "W_E")]
    nodes += [ir.Save(i + 1, ir.Ref(0), name) for i, name in enumerate(names)]
    return ir.Graph(tuple(nodes))


def data(name: str, values: list[float]) -> Chunk:
    return Chunk(name, 0, memoryview(torch.tensor(values, dtype=torch.float32).numpy().tobytes()))


def test_a_huge_declared_result_is_refused_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_allocation(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the client tried the allocation")

    monkeypatch.setattr(torch, "empty", no_allocation)
    transport, _ = fake_transport([header("x", [TIB])])  # 4 TiB of float32
    with transport, pytest.raises(ProtocolError) as refused:
        transport.run("m", saving("x"))
    message = str(refused.value)
    assert "4.0 TiB" in message and str(4 * TIB) in message
    assert f"max_result_bytes={limits.DEFAULT_MAX_RESULT_BYTES}" in message and "16.0 GiB" in message


def test_max_result_bytes_is_the_connections_choice() -> None:
    transport, _ = fake_transport([header("x", [4]), data("x", [1, 2, 3, 4])], max_result_bytes=15)
    with transport, pytest.raises(ProtocolError, match=r"declares 16 bytes.*max_result_bytes=15"):
        transport.run("m", saving("x"))
    transport, _ = fake_transport([header("x", [4]), data("x", [1, 2, 3, 4])], max_result_bytes=None)
    with transport:
        assert transport.run("m", saving("x"))["x"].tolist() == [1, 2, 3, 4]


def test_a_finished_run_missing_a_saved_value_is_refused() -> None:
    transport, _ = fake_transport([])  # the server said nothing and finished
    with transport, pytest.raises(ProtocolError, match="'a', 'b'"):
        transport.run("m", saving("a", "b"))
    transport, _ = fake_transport([header("a", [1]), data("a", [5.0])])  # a partial answer
    with transport, pytest.raises(ProtocolError, match=r"without the saved value\(s\) 'b' \(received 1 of 2"):
        transport.run("m", saving("a", "b"))
    transport, _ = fake_transport([header("a", [1]), data("a", [5.0]), header("b", [1]), data("b", [6.0])])
    with transport:
        assert {k: v.tolist() for k, v in transport.run("m", saving("a", "b")).items()} == {
            "a": [5.0],
            "b": [6.0],
        }


def test_a_result_the_graph_did_not_save_is_refused() -> None:
    transport, _ = fake_transport([header("a", [1]), header("extra", [1])])
    with transport, pytest.raises(ProtocolError, match="'extra', which the graph did not save"):
        transport.run("m", saving("a"))


def run_deadline(calls: list[dict[str, Any]]) -> float | None:
    return calls[-1]["timeout"]


def test_runs_have_a_default_deadline() -> None:
    transport, calls = fake_transport([])
    with transport:
        transport.run("m", saving())
        assert run_deadline(calls) == pytest.approx(limits.RUN_TIMEOUT, abs=1)
        assert transport._deadline(None, run=False) == pytest.approx(time.monotonic() + INFO_TIMEOUT, abs=1)
        transport.run("m", saving(), timeout=3)  # a call's own timeout wins
        assert run_deadline(calls) == pytest.approx(3, abs=0.5)
    transport, calls = fake_transport([], timeout=7)  # connect(timeout=7): every call
    with transport:
        transport.run("m", saving())
        assert run_deadline(calls) == pytest.approx(7, abs=0.5)
        assert transport._deadline(None, run=False) == pytest.approx(time.monotonic() + 7, abs=0.5)
    transport, calls = fake_transport([], timeout=None)  # explicitly none: runs may take forever
    with transport:
        transport.run("m", saving())
        assert run_deadline(calls) is None
        assert transport._deadline(None, run=False) == pytest.approx(time.monotonic() + INFO_TIMEOUT, abs=1)


def regex_tokenizer(pattern: str) -> str:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), "isolated")
    return tok.to_str()


def test_a_tokenizer_with_a_nonstandard_regex_is_refused() -> None:
    evil = "(a+)+$"  # catastrophic backtracking on "aaaa...ab"
    start = time.monotonic()
    with pytest.raises(ProtocolError, match=r"\(a\+\)\+\$.*trust_tokenizer=True"):
        RemoteTokenizer.from_model_info(regex_tokenizer(evil), "{}")
    assert time.monotonic() - start < 1
    trusted = RemoteTokenizer.from_model_info(regex_tokenizer(evil), "{}", trust=True)
    assert trusted is not None and trusted.encode("a") == [0]


def test_standard_tokenizer_regexes_are_accepted() -> None:
    for pattern in sorted(STANDARD_PATTERNS):
        assert RemoteTokenizer(regex_tokenizer(pattern), {}) is not None, pattern
    builtin = json.loads(regex_tokenizer(r"\s+"))
    builtin["pre_tokenizer"] = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": True,
    }
    assert RemoteTokenizer(json.dumps(builtin), {}).encode("a") is not None
