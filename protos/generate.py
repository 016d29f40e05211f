"""Regenerate the Python protobuf modules from ``protos/telelens/v1/*.proto``.

Usage: ``python -m telelens.protos.generate`` (writes next to this file), or ``--check``
(exit 1 if the committed modules are stale). Needs ``grpcio-tools`` (a dev dependency).

The ``.proto`` files keep their canonical paths (``telelens/v1/graph.proto``, package
``telelens.v1``), which is what the descriptor pool and other languages see. The Python
modules are laid out flat in ``telelens.protos`` (``telelens.protos.graph_pb2``), so
protoc's ``from telelens.v1 import tensor_pb2`` lines are rewritten to relative imports.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTOS_DIR = Path(__file__).resolve().parent
PROTO_PACKAGE_DIR = "telelens/v1"
HEADER = "# Regenerate with `python -m telelens.protos.generate`; do not edit.\n"

_PACKAGE_IMPORT = re.compile(r"^from telelens\.v1 import (\w+)", re.MULTILINE)
# The module name protoc gives the message classes (``__module__``): pickle, cloudpickle and Ray
# look classes up by it, so it must be the real import path.
_MODULE_NAME = re.compile(r"'telelens\.v1\.(\w+_pb2)'")
_SERVICE = re.compile(r"^\s*service\s+\w+", re.MULTILINE)


def proto_files() -> list[Path]:
    """The ``.proto`` sources, relative to ``PROTOS_DIR``."""
    return sorted(p.relative_to(PROTOS_DIR) for p in (PROTOS_DIR / PROTO_PACKAGE_DIR).glob("*.proto"))


def committed_modules(directory: Path = PROTOS_DIR) -> list[Path]:
    """Generated modules currently in ``directory`` (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``)."""
    names = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    return sorted({p for pattern in names for p in directory.glob(pattern)})


def _rewrite(text: str) -> str:
    text = _PACKAGE_IMPORT.sub(r"from . import \1", text)
    return HEADER + _MODULE_NAME.sub(r"'telelens.protos.\1'", text)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every ``.proto`` and write the flat, import-fixed modules into ``out_dir``."""
    import grpc_tools
    from grpc_tools import protoc

    sources = proto_files()
    with_services = {p for p in sources if _SERVICE.search((PROTOS_DIR / p).read_text())}
    wkt_include = str(Path(grpc_tools.__file__).parent / "_proto")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as raw:
        args = ["protoc", f"-I{PROTOS_DIR}", f"-I{wkt_include}", f"--python_out={raw}", f"--pyi_out={raw}"]
        if with_services:
            args.append(f"--grpc_python_out={raw}")
        rc = protoc.main([*args, *(str(p) for p in sources)])
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        written: list[Path] = []
        for path in sorted((Path(raw) / PROTO_PACKAGE_DIR).iterdir()):
            stem = path.name.split("_pb2", 1)[0]
            if (
                path.name.endswith("_pb2_grpc.py")
                and Path(PROTO_PACKAGE_DIR, stem + ".proto") not in with_services
            ):
                continue  # the grpc plugin writes an empty module for service-less files
            target = out_dir / path.name
            target.write_text(_rewrite(path.read_text()))
            written.append(target)
    return written


def stale_modules(directory: Path = PROTOS_DIR) -> list[str]:
    """Names of generated modules in ``directory`` that differ from a fresh generation (or are missing/extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    committed = {p.name: p.read_text() for p in committed_modules(directory)}
    return sorted(name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale modules; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_modules()
        for name in stale:
            print(f"stale: protos/{name}")
        return 1 if stale else 0
    for old in committed_modules():
        old.unlink()
    for path in generate(PROTOS_DIR):
        print(f"wrote protos/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
