"""Property tests for the codec: valid graphs round-trip; anything else is a GraphValidationError."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telelens.protos import codec, graph_pb2, ir, tensor_pb2
from telelens.protos.structure import SWEEP_AXES, check_structure

FUZZ = settings(max_examples=200, deadline=500, suppress_health_check=[HealthCheck.too_slow])
INT64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(-4, 4)
SCALARS = st.floats(allow_nan=False) | st.integers(-(2**53), 2**53)
NAMES = st.text(min_size=1, max_size=12)


@st.composite
def tensor_data(draw) -> ir.TensorData:
    dtype = draw(st.sampled_from(ir.DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    n = 1
    for d in shape:
        n *= d
    if dtype == "bool":
        data = bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    else:
        data = draw(st.binary(min_size=n * ir.ITEMSIZE[dtype], max_size=n * ir.ITEMSIZE[dtype]))
    return ir.TensorData(dtype, shape, data)


def index_items(values: list[int]):
    items = [
        INT64,
        st.builds(ir.SliceItem, st.none() | INT64, st.none() | INT64, st.none() | INT64),
        st.just(ir.ELLIPSIS),
        st.just(ir.NEW_AXIS),
    ]
    if values:
        items.append(st.sampled_from(values).map(ir.Ref))
    return st.lists(st.one_of(items), max_size=4).map(tuple)


def operands(values: list[int]):
    return st.sampled_from(values).map(ir.Ref) | SCALARS if values else SCALARS


def tensor_op(draw, nid: int, values: list[int]) -> ir.Node:
    """A node built only from tensor values (legal in the graph and in a sweep's metric)."""
    kinds = ["constant", "weight"]
    if values:
        kinds += ["index", "binary", "unary", "reduce", "gather", "reshape", "transpose"]
    kind = draw(st.sampled_from(kinds))
    ref = st.sampled_from(values).map(ir.Ref) if values else None
    if kind == "constant":
        return ir.Constant(nid, draw(tensor_data()))
    if kind == "weight":
        return ir.Weight(nid, draw(NAMES))
    assert ref is not None
    if kind == "index":
        return ir.Index(nid, draw(ref), draw(index_items(values)))
    if kind == "binary":
        return ir.Binary(
            nid, draw(st.sampled_from(ir.BINARY_OPS)), draw(operands(values)), draw(operands(values))
        )
    if kind == "unary":
        bound = st.none() | st.floats(allow_nan=False)
        return ir.Unary(
            nid,
            draw(st.sampled_from(ir.UNARY_OPS)),
            draw(ref),
            draw(st.none() | SMALL),
            draw(bound),
            draw(bound),
        )
    if kind == "reduce":
        dims = st.none() | st.lists(SMALL, max_size=3).map(tuple)
        return ir.Reduce(
            nid, draw(st.sampled_from(ir.REDUCE_OPS)), draw(ref), draw(dims), draw(st.booleans())
        )
    if kind == "gather":
        return ir.Gather(nid, draw(ref), draw(SMALL), draw(ref))
    if kind == "reshape":
        shape = draw(st.lists(st.integers(0, 8), max_size=4))
        if shape and draw(st.booleans()):
            shape[draw(st.integers(0, len(shape) - 1))] = -1
        return ir.Reshape(nid, draw(ref), tuple(shape))
    return ir.Transpose(nid, draw(ref), draw(SMALL), draw(SMALL))


@st.composite
def metrics(draw, outer_values: list[int]) -> tuple[tuple[ir.Node, ...], int, int]:
    """A metric sub-graph: local ids, refs to earlier local nodes or to unshadowed graph values."""
    count = draw(st.integers(1, 6))
    ids = [draw(st.integers(0, 5))]
    for _ in range(count - 1):
        ids.append(ids[-1] + draw(st.integers(1, 3)))
    values = [v for v in outer_values if v not in ids]
    logits_at = draw(st.integers(0, count - 1))
    nodes: list[ir.Node] = []
    for i, nid in enumerate(ids):
        nodes.append(ir.SweepLogits(nid) if i == logits_at else tensor_op(draw, nid, values))
        values.append(nid)
    return tuple(nodes), ids[logits_at], draw(st.sampled_from(ids))


@st.composite
def graphs(draw) -> ir.Graph:
    nodes: list[ir.Node] = []
    runs: list[int] = []
    values: list[int] = []
    nid = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(0, 20))):
        kinds = ["tensor", "run"] + (["read", "write", "code_hook", "sweep"] if runs else [])
        kinds += ["save"] if values else []
        kind = draw(st.sampled_from(kinds))
        ref = st.sampled_from(values).map(ir.Ref) if values else None
        if kind == "tensor":
            node = tensor_op(draw, nid, values)
        elif kind == "run":
            if ref is not None and draw(st.booleans()):
                mask = draw(st.none() | ref)
                node = ir.Run(
                    nid, tokens=draw(ref), prepend_bos=draw(st.none() | st.booleans()), attention_mask=mask
                )
            else:
                node = ir.Run(nid, text=tuple(draw(st.lists(st.text(max_size=8), min_size=1, max_size=3))))
            runs.append(nid)
        elif kind == "read":
            node = ir.Read(nid, draw(st.sampled_from(runs)), draw(NAMES))
        elif kind == "write":
            value, index = draw(operands(values)), draw(index_items(values))
            node = ir.Write(
                nid,
                draw(st.sampled_from(runs)),
                draw(NAMES),
                value,
                index,
                draw(st.sampled_from(ir.WRITE_MODES)),
            )
        elif kind == "code_hook":
            node = ir.CodeHook(nid, draw(st.sampled_from(runs)), draw(NAMES), draw(st.binary(max_size=16)))
        elif kind == "sweep":
            axes = tuple(a for a in SWEEP_AXES if draw(st.booleans())) or ("layer",)
            metric, metric_input, metric_output = draw(metrics(values))
            corrupted, clean = draw(st.sampled_from(runs)), draw(st.sampled_from(runs))
            node = ir.Sweep(nid, corrupted, clean, draw(NAMES), axes, metric, metric_input, metric_output)
        else:
            node = ir.Save(
                nid,
                draw(ref),
                f"{draw(st.text(max_size=6))}#{nid}",
                draw(st.none() | st.sampled_from(ir.DTYPES)),
            )
        nodes.append(node)
        if not isinstance(node, (ir.Run, ir.Write, ir.CodeHook)):
            values.append(nid)
        nid += draw(st.integers(1, 3))
    return ir.Graph(tuple(nodes))


def _decodes_or_refuses(data) -> None:
    """The decoder's contract: a well-formed graph or a GraphValidationError, quickly."""
    start = time.perf_counter()
    try:
        graph = codec.decode_graph(data)
    except ir.GraphValidationError as e:
        assert e.errors and all(isinstance(x, ir.GraphError) for x in e.errors)
    else:
        assert check_structure(graph) == []
        assert codec.decode_graph(codec.graph_to_bytes(graph)) == graph
    assert time.perf_counter() - start < 1.0  # generous: shared CI machines


def _refused(msg: graph_pb2.Graph) -> list[ir.GraphError]:
    try:
        codec.decode_graph(msg.SerializeToString())
    except ir.GraphValidationError as e:
        return e.errors
    raise AssertionError("a broken graph was accepted")


@FUZZ
@given(graphs())
def test_valid_graphs_round_trip(graph):
    assert check_structure(graph) == []
    data = codec.graph_to_bytes(graph)
    assert codec.graph_from_bytes(data) == graph
    assert codec.graph_to_bytes(codec.graph_from_bytes(data)) == data


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data):
    _decodes_or_refuses(data)


@FUZZ
@given(graphs().filter(lambda g: len(g.nodes) > 0), st.data())
def test_truncated_and_bit_flipped_encodings(graph, data):
    encoded = codec.graph_to_bytes(graph)
    _decodes_or_refuses(encoded[: data.draw(st.integers(0, len(encoded) - 1))])
    flipped = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 4))):
        bit = data.draw(st.integers(0, len(flipped) * 8 - 1))
        flipped[bit // 8] ^= 1 << (bit % 8)
    _decodes_or_refuses(bytes(flipped))


# Mutations of a valid encoding that always break it, each with the node it must name.

REF_FIELDS = {
    "read": ["run"],
    "write": ["run"],
    "code_hook": ["run"],
    "index": ["input"],
    "unary": ["input"],
    "reduce": ["input"],
    "gather": ["input", "index"],
    "reshape": ["input"],
    "transpose": ["input"],
    "save": ["input"],
    "sweep": ["corrupted", "clean"],
}


@FUZZ
@given(graphs().filter(lambda g: len(g.nodes) > 0), st.data())
def test_mutated_graphs_are_refused(graph, data):
    msg = codec.encode_graph(graph)
    i = data.draw(st.integers(0, len(msg.nodes) - 1))
    node = msg.nodes[i]
    kind = node.WhichOneof("op")
    op = getattr(node, kind)
    choices = [
        "forward_ref",
        "dangling_ref",
        "duplicate_id",
        "unknown_enum",
        "huge_shape",
        "wrong_bytes",
        "no_op",
    ]
    mutation = data.draw(st.sampled_from(choices))
    blame = node.id
    if mutation in ("forward_ref", "dangling_ref"):
        fields = REF_FIELDS.get(kind)
        if not fields:  # no reference field here: point a new Read at a missing run instead
            op = msg.nodes.add(id=msg.nodes[-1].id + 1).read
            fields, blame = ["run"], msg.nodes[-1].id
        target = (
            blame + data.draw(st.integers(0, 5))
            if mutation == "forward_ref"
            else -1 - data.draw(st.integers(0, 2**63 - 1))
        )
        setattr(op, data.draw(st.sampled_from(fields)), target)
    elif mutation == "duplicate_id":
        msg.nodes.add().CopyFrom(msg.nodes[i])  # reported under the repeated id
    elif mutation == "unknown_enum":
        target = msg.nodes.add(id=msg.nodes[-1].id + 1)
        which = data.draw(st.sampled_from(["binary", "unary", "reduce", "write", "save", "constant"]))
        bad = data.draw(st.integers(64, 2**31 - 1) | st.integers(-(2**31), -1))  # past every enum
        if which == "constant":
            target.constant.value.dtype = bad
        elif which == "write":
            target.write.mode = bad
        elif which == "save":
            target.save.dtype = bad
        else:
            getattr(target, which).op = bad
        blame = target.id
    elif mutation in ("huge_shape", "wrong_bytes"):
        target = msg.nodes.add(id=msg.nodes[-1].id + 1).constant.value
        target.dtype = tensor_pb2.DTYPE_FLOAT32
        if mutation == "huge_shape":
            target.shape.extend(data.draw(st.lists(st.integers(2**20, 2**62), min_size=2, max_size=6)))
        else:
            shape = data.draw(st.lists(st.integers(0, 4), max_size=3))
            n = 4
            for d in shape:
                n *= d
            target.shape.extend(shape)
            target.data = b"\0" * data.draw(st.integers(0, n + 16).filter(lambda k: k != n))
        blame = msg.nodes[-1].id
    else:
        node.ClearField(kind)
    start = time.perf_counter()
    errors = _refused(msg)
    assert time.perf_counter() - start < 1.0  # generous: shared CI machines
    assert blame in {e.node_id for e in errors}, errors
