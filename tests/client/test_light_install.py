"""The client install (``pip install telelens``) works without the core's and the server's packages.

A subprocess blocks ``transformers``, ``gguf``, ``safetensors`` and ``ray`` before anything
imports telelens, as if they were not installed, then imports the client, builds and encodes
a graph, and runs ``run_with_cache`` against a real server. The server runs here, in the
parent process; only the client side is in the blocked subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from server_helpers import make_tiny_folder

BLOCKED = ("transformers", "gguf", "safetensors", "ray")
HOOK = "blocks.1.hook_resid_post"
PROMPT = "w1 w2 w3 w4"

# Runs first in the subprocess: a meta-path finder that refuses the packages the client
# install does not bring.
BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc
    import sys

    BLOCKED = {BLOCKED!r}

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is not part of the client install")
            return None

    sys.meta_path.insert(0, NotInstalled())
    assert not [m for m in BLOCKED if m in sys.modules], "imported before the blocker"
    """
)

GRAPH = textwrap.dedent(
    f"""
    import torch

    import telelens
    import telelens.client
    from telelens.client import GraphBuilder
    from telelens.protos import codec
    from telelens.trace.proxies import make_run, save

    builder = GraphBuilder([{HOOK!r}])
    run = make_run(builder, torch.tensor([[1, 2, 3]]))
    save(builder, run[{HOOK!r}][:, -1] * 2.0, name="scaled")
    wire = codec.encode_graph(builder.graph()).SerializeToString()
    decoded = codec.decode_graph(wire)
    assert [type(n).__name__ for n in decoded.nodes] == ["Constant", "Run", "Read", "Index", "Binary", "Save"]
    assert codec.encode_graph(decoded).SerializeToString() == wire
    """
)

CONNECT = textwrap.dedent(
    f"""
    import sys

    url, out = sys.argv[1], sys.argv[2]
    with telelens.connect(url, model="tiny", progress=False) as model:
        logits, cache = model.run_with_cache({PROMPT!r}, names_filter={HOOK!r})
        torch.save({{"logits": logits, "resid": cache[{HOOK!r}]}}, out)
    """
)

CHECK_BLOCKED = textwrap.dedent(
    """
    leaked = [m for m in sys.modules if m.partition(".")[0] in BLOCKED or m.startswith(("telelens.core", "telelens.server"))]
    assert not leaked, leaked
    print("client install ok")
    """
)


def _run_client(code: str, *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + code + CHECK_BLOCKED, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "client install ok" in result.stdout, result.stderr[-4000:]


def test_blocked_packages_really_are_blocked() -> None:
    probe = "\ntry:\n    import transformers\nexcept ImportError:\n    print('client install ok')\n"
    result = subprocess.run([sys.executable, "-c", BLOCKER + probe], capture_output=True, text=True)
    assert "client install ok" in result.stdout, result.stderr[-4000:]


def test_client_imports_and_builds_graphs_without_core_packages() -> None:
    _run_client(GRAPH)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("light") / "tiny")


@pytest.fixture(scope="module")
def server(ray_cluster: None, tiny_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    data = tmp_path_factory.mktemp("light-server")
    config = ServeConfig.for_model(str(tiny_folder), name="tiny", port=0, data_dir=str(data))
    with run_server(config) as handle:
        yield handle


def test_client_runs_with_cache_against_a_server_without_core_packages(
    server: Any, tiny_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "result.pt"
    _run_client(GRAPH + CONNECT, f"grpc://{server.address}", str(out))
    got = torch.load(out)

    from telelens.core.hooked_transformer import HookedTransformer

    local = HookedTransformer.from_pretrained(str(tiny_folder), device="cpu").eval()  # what serve serves
    logits, cache = local.run_with_cache(PROMPT, names_filter=HOOK)
    torch.testing.assert_close(got["logits"], logits)
    torch.testing.assert_close(got["resid"], cache[HOOK])
