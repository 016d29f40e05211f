"""The committed generated protobuf modules match the .proto files (regenerate, compare)."""

from __future__ import annotations

import re
from pathlib import Path

from telelens.protos import generate


def test_generated_modules_are_fresh(tmp_path: Path):
    fresh = {p.name: p.read_text() for p in generate.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in generate.committed_modules()}
    assert sorted(fresh) == sorted(committed), "generated modules missing or left over"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated modules {stale}: run `python -m telelens.protos.generate` and commit"
    assert {"graph_pb2.py", "graph_pb2.pyi", "tensor_pb2.py", "tensor_pb2.pyi"} <= set(fresh)


def test_generated_modules_import_inside_the_package():
    for path in generate.committed_modules():
        text = path.read_text()
        assert "from telelens.v1 import" not in text, path.name  # would not resolve: no such package
        # classes' __module__ must be importable (gRPC service and method names keep "telelens.v1.")
        assert not re.search(r"'telelens\.v1\.\w+_pb2'", text), path.name


def test_every_proto_states_the_compatibility_rule():
    sources = generate.proto_files()
    assert {p.name for p in sources} >= {"graph.proto", "tensor.proto"}
    for rel in sources:
        text = (generate.PROTOS_DIR / rel).read_text()
        assert "fields are only ever added" in text and "never reuse" in text, rel
        assert "package telelens.v1;" in text, rel
