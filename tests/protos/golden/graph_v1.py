"""The golden wire graph: every node type, index item, op, mode, dtype and sweep axis.

``graph_v1.bin`` next to this file is ``graph_to_bytes(build_graph())`` as first written. It
guards wire compatibility: ``tests/protos/test_codec.py`` decodes the committed bytes and compares
them with ``build_graph()``. Never rewrite it to make that test pass; a failure means the
wire format changed (new field numbers or enum values are fine, renumbering is not). Add a
``graph_v2`` next to it when the version is bumped.

Write it (once): ``python tests/protos/golden/graph_v1.py --write``.
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

from telelens.protos import ir

GOLDEN = Path(__file__).with_name("graph_v1.bin")


def _const(node_id: int, dtype: str, shape: tuple[int, ...], fmt: str, values: list) -> ir.Constant:
    return ir.Constant(node_id, ir.TensorData(dtype, shape, struct.pack("<" + fmt * len(values), *values)))


def build_graph() -> ir.Graph:
    """A deterministic graph touching every part of the wire format."""
    nodes: list[ir.Node] = [
        _const(0, "int64", (2, 3), "q", [1, 464, 2, 1, 3, 9]),  # token ids [batch, pos]
        _const(1, "bool", (2, 3), "?", [True, True, True, False, True, True]),  # attention mask
        ir.Run(2, tokens=ir.Ref(0), prepend_bos=False, attention_mask=ir.Ref(1)),
        ir.Run(
            3,
            text=("The Eiffel Tower is in the city of", "The Colosseum is in the city of"),
            prepend_bos=True,
        ),
        ir.Run(4, text=("",)),
        ir.Read(5, run=2, hook="blocks.0.hook_resid_post"),
        ir.Write(
            6, run=3, hook="blocks.0.hook_resid_post", value=ir.Ref(5), index=(ir.SliceItem(), -1), mode="set"
        ),
        ir.Write(
            7,
            run=3,
            hook="blocks.1.attn.hook_z",
            value=0.5,
            index=(
                ir.ELLIPSIS,
                ir.NEW_AXIS,
                ir.SliceItem(1, 3, 1),
                ir.SliceItem(None, -2),
                ir.SliceItem(step=2),
            ),
            mode="add",
        ),
        ir.Write(8, run=3, hook="blocks.1.hook_mlp_out", value=-2.0, mode="mul"),
        _const(9, "float32", (2,), "f", [1.5, -0.25]),
        ir.Constant(10, ir.TensorData("float16", (2,), struct.pack("<2e", 1.0, -3.5))),
        ir.Constant(11, ir.TensorData("bfloat16", (2,), bytes([0x80, 0x3F, 0x40, 0xC0]))),  # 1.0, -3.0
        _const(12, "float64", (), "d", [3.141592653589793]),
        _const(13, "int32", (3,), "i", [0, -1, 2**31 - 1]),
        ir.Constant(14, ir.TensorData("float32", (0, 4), b"")),
        ir.Weight(15, "W_U"),
        ir.Weight(16, "blocks.1.attn.W_O"),
        ir.Read(17, run=3, hook=ir.LOGITS),
        ir.Index(18, input=ir.Ref(17), index=(0, -1, ir.Ref(13))),
        ir.Index(19, input=ir.Ref(17), index=()),
    ]
    next_id = 20

    def add(make) -> int:
        nonlocal next_id
        nodes.append(make(next_id))
        next_id += 1
        return next_id - 1

    right_operands: list[ir.Operand] = [ir.Ref(9), 2.0, -1e300, float("inf")]
    for i, op in enumerate(ir.BINARY_OPS):
        a: ir.Operand = ir.Ref(18)
        b = right_operands[i % 4]
        add(lambda nid, op=op, a=a, b=b: ir.Binary(nid, op, a, b))
    add(lambda nid: ir.Binary(nid, "sub", 1.0, ir.Ref(18)))
    for op in ir.UNARY_OPS:
        dim = -1 if op in ("softmax", "log_softmax") else None
        lo, hi = (-1.0, 1.0) if op == "clamp" else (None, None)
        add(lambda nid, op=op, dim=dim, lo=lo, hi=hi: ir.Unary(nid, op, ir.Ref(18), dim=dim, min=lo, max=hi))
    add(lambda nid: ir.Unary(nid, "clamp", ir.Ref(18), min=0.0))
    dims_cycle: list[tuple[int, ...] | None] = [None, (), (-1,), (0, 1)]
    for i, op in enumerate(ir.REDUCE_OPS):
        add(
            lambda nid, op=op, i=i: ir.Reduce(nid, op, ir.Ref(17), dims=dims_cycle[i % 4], keepdim=i % 2 == 1)
        )
    gather = add(lambda nid: ir.Gather(nid, ir.Ref(17), dim=-1, index=ir.Ref(0)))
    add(lambda nid: ir.Reshape(nid, ir.Ref(gather), (2, -1, 0)))
    add(lambda nid: ir.Transpose(nid, ir.Ref(17), 0, -1))
    add(lambda nid: ir.Save(nid, ir.Ref(18), "logits_last"))
    for dtype in ir.DTYPES:
        add(lambda nid, dtype=dtype: ir.Save(nid, ir.Ref(19), f"as_{dtype}", dtype=dtype))
    add(
        lambda nid: ir.CodeHook(
            nid, run=3, hook="blocks.0.hook_resid_pre", payload=b"\x80\x05\x95not-a-real-pickle\x00"
        )
    )
    sweep1 = add(
        lambda nid: ir.Sweep(
            nid,
            corrupted=3,
            clean=2,
            activation="resid_pre",
            axes=("layer", "pos"),
            metric=(
                ir.SweepLogits(0),
                ir.Index(1, ir.Ref(0), (0, -1, 1234)),
                ir.Index(2, ir.Ref(0), (0, -1, 4321)),
                ir.Binary(3, "sub", ir.Ref(1), ir.Ref(2)),
            ),
            metric_input=0,
            metric_output=3,
        )
    )
    add(
        lambda nid: ir.Sweep(
            nid,
            corrupted=3,
            clean=4,
            activation="z",
            axes=("layer", "pos", "head"),
            metric=(
                _const(100, "int64", (1,), "q", [7]),
                ir.Weight(101, "W_U"),
                ir.SweepLogits(105),
                ir.Unary(106, "log_softmax", ir.Ref(105), dim=-1),
                ir.Index(107, ir.Ref(106), (ir.ELLIPSIS, ir.Ref(100))),
                ir.Reduce(108, "mean", ir.Ref(107)),
            ),
            metric_input=105,
            metric_output=108,
        )
    )
    add(  # a metric may use graph values from before the sweep (node 13; its own ids are 0-2)
        lambda nid: ir.Sweep(
            nid,
            2,
            3,
            "attn_out",
            ("head",),
            (
                ir.SweepLogits(0),
                ir.Index(1, ir.Ref(0), (ir.ELLIPSIS, ir.Ref(13))),
                ir.Reduce(2, "sum", ir.Ref(1)),
            ),
            0,
            2,
        )
    )
    add(lambda nid: ir.Save(nid, ir.Ref(sweep1), "sweep"))
    return ir.Graph(tuple(nodes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write graph_v1.bin (only if it does not exist).")
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
