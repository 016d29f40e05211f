"""The golden wire graph of the gradient ops (added after ``graph_v1``, same graph version).

``gradients_v1.bin`` next to this file is ``graph_to_bytes(build_graph())`` as first written; like
``graph_v1.bin`` it is never rewritten: ``tests/protos/test_codec.py`` decodes the committed bytes
and compares them with ``build_graph()``. Together the two goldens hold every node type.

Write it (once): ``python tests/protos/golden/gradients_v1.py --write``.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

from telelens.protos import ir

GOLDEN = Path(__file__).with_name("gradients_v1.bin")
NODE_TYPES = (ir.Grad, ir.GradWrite, ir.GradCodeHook)
"""The node types this golden adds to ``graph_v1``'s."""


def build_graph() -> ir.Graph:
    """A deterministic graph with every gradient op and every write mode on a gradient."""
    tokens = ir.TensorData("int64", (1, 3), struct.pack("<3q", 0, 5, 9))
    hook = "blocks.0.hook_resid_pre"
    return ir.Graph(
        (
            ir.Constant(0, tokens),
            ir.Run(1, tokens=ir.Ref(0)),
            ir.GradWrite(2, run=1, hook=hook, value=0.0, index=(ir.SliceItem(None, None), 1), mode="set"),
            ir.GradWrite(3, run=1, hook=hook, value=0.5, mode="mul"),
            ir.GradWrite(4, run=1, hook=hook, value=ir.Ref(0), index=(ir.ELLIPSIS,), mode="add"),
            ir.GradCodeHook(5, run=1, hook="blocks.0.attn.hook_z", payload=b"\x80\x05code"),
            ir.Read(6, run=1, hook=hook),
            ir.Read(7, run=1, hook="logits"),
            ir.Reduce(8, "sum", ir.Ref(7)),
            ir.Grad(9, of=ir.Ref(8), wrt=ir.Ref(6)),
            ir.Save(10, ir.Ref(9), "grad", dtype="float16"),
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write gradients_v1.bin (only if it does not exist).")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    from telelens.protos.codec import graph_to_bytes

    data = graph_to_bytes(build_graph())
    if not args.write:
        print(f"{len(data)} bytes; matches committed file: {GOLDEN.exists() and GOLDEN.read_bytes() == data}")
        return 0
    if GOLDEN.exists():
        print(
            f"{GOLDEN} exists; the golden file is never rewritten (add a new version instead)",
            file=sys.stderr,
        )
        return 1
    GOLDEN.write_bytes(data)
    print(f"wrote {GOLDEN} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
