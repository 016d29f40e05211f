"""The client-side graph builder: traces, proxies, declarative ops, TransformerLens-style builders.

Three tiers: graph structure (no model), ops as local TransformerLens hooks against
hand-written hooks (exact), and graphs executed by the real executor (``telelens.core.graph``)
against the same interventions done with local hooks.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from telelens.client import Tracer, UnknownHookError, builders, ops
from telelens.core.config import HookedTransformerConfig
from telelens.core.graph.local import LocalBackend
from telelens.core.hooked_transformer import HookedTransformer
from telelens.protos import ir
from telelens.trace.graph import GraphBuilder, referenced_ids
from telelens.trace.proxies import MODEL_WEIGHTS, STACKED_WEIGHTS, make_run

# ---------------------------------------------------------------------------------------- helpers
N_LAYERS = 2
HOOKS = [
    "hook_embed", "hook_pos_embed",
    *[
        f"blocks.{layer}.{s}" for layer in range(N_LAYERS) for s in (
            "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
            "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
            "hook_resid_mid", "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
        )
    ],
    "ln_final.hook_scale", "ln_final.hook_normalized",
]  # fmt: skip


class Cfg:
    n_layers = N_LAYERS
    n_heads = 4
    d_model = 32


class Recorder:
    """A backend for structure tests: records the graph it is given, returns zeros per save.

    Not an executor: graph structure is all these tests look at; execution tests below use
    the real one.
    """

    hook_names = HOOKS
    cfg = Cfg()

    def __init__(self) -> None:
        self.graphs: list[tuple[ir.Graph, bool]] = []

    def execute(self, graph: ir.Graph, allow_code: bool = False) -> dict[str, torch.Tensor]:
        self.graphs.append((graph, allow_code))
        return {s.name: torch.full((1,), float(s.id)) for s in graph.saves}


def kinds(graph: ir.Graph) -> list[str]:
    return [type(n).__name__ for n in graph.nodes]


def of(graph: ir.Graph, cls: type) -> list:
    return [n for n in graph.nodes if isinstance(n, cls)]


def assert_well_formed(graph: ir.Graph) -> None:
    ids = [n.id for n in graph.nodes]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    present = set(ids)
    for n in graph.nodes:
        for r in referenced_ids(n):
            assert r < n.id and r in present, (n, r)


TOKENS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
H = "blocks.1.hook_resid_post"


# ---------------------------------------------------------------------------------------- import
def test_import_is_light():
    code = (
        "import telelens.client, sys; "
        "bad=[m for m in ('ray','transformers','telelens.core','grpc') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------- runs
def test_run_inputs():
    b = GraphBuilder(HOOKS)
    r = make_run(b, "hello", prepend_bos=False)
    assert b.node(r.id) == ir.Run(r.id, text=("hello",), prepend_bos=False) and r.batch_size == 1
    r = make_run(b, ["a", "bb", "c"])
    assert b.node(r.id).text == ("a", "bb", "c") and r.batch_size == 3
    r = make_run(b, torch.tensor([4, 5, 6]))  # [pos] -> [1, pos]
    tokens = b.node(b.node(r.id).tokens.node)
    assert isinstance(tokens, ir.Constant) and tokens.value.shape == (1, 3) and r.batch_size == 1
    r = make_run(b, TOKENS, prepend_bos=True)
    run = b.node(r.id)
    assert b.node(run.tokens.node).value is TOKENS and run.prepend_bos is None and r.batch_size == 2
    r = make_run(b, [1, 2, 3])
    assert b.node(b.node(r.id).tokens.node).value.tolist() == [[1, 2, 3]]
    mask = torch.ones(2, 4, dtype=torch.long)
    r = make_run(b, TOKENS, attention_mask=mask)
    assert b.node(b.node(r.id).attention_mask.node).value is mask
    for bad in (torch.rand(2, 3), [], torch.zeros(1, 2, 3, dtype=torch.long), 3.5):
        with pytest.raises((TypeError, ValueError)):
            make_run(b, bad)


# ---------------------------------------------------------------------------------------- traces
def test_patching_trace_structure_and_execution_on_exit():
    backend = Recorder()
    with Tracer(backend) as t:
        clean = t.run(TOKENS)
        corrupt = t.run(TOKENS.flip(0))
        corrupt[H][:, -1] = clean[H][:, -1]
        diff = t.save(corrupt.logits[0, -1, 7] - corrupt.logits[0, -1, 9], name="diff")
        with pytest.raises(RuntimeError, match="after the block"):
            _ = diff.value
    graph, allow_code = backend.graphs[0]
    assert len(backend.graphs) == 1 and graph is not None and allow_code is False
    assert kinds(graph) == [
        "Constant", "Run", "Constant", "Run", "Read", "Index", "Write", "Read", "Index", "Index", "Binary", "Save",
    ]  # fmt: skip
    assert_well_formed(graph)
    write = of(graph, ir.Write)[0]
    read = graph.node(write.value.node)
    assert isinstance(read, ir.Index) and graph.node(read.input.node) == ir.Read(4, run=clean.id, hook=H)
    assert (write.run, write.hook, write.mode) == (corrupt.id, H, "set")
    assert write.index == (ir.SliceItem(), -1)
    logit_reads = [n for n in of(graph, ir.Read) if n.hook == ir.LOGITS]
    assert len(logit_reads) == 1  # both logit indexings share one Read (no write in between)
    assert torch.equal(diff.value, torch.full((1,), 11.0))
    assert t.result == {"diff": diff.value}
    assert t.graph == graph


def test_hook_proxy_is_a_live_handle():
    """``run[hook]`` reads nothing by itself: it is read where it is used, after earlier writes."""
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        act = run[H]
        assert len(t.graph.nodes) == 2
        act[:, 0] = 0.0
        t.save(act)
    assert kinds(t.graph) == ["Constant", "Run", "Write", "Read", "Save"]


def test_read_after_write_sees_the_write():
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        before = run[H][:, 0]
        again = run[H][:, 1]  # no write yet: the same Read
        run[H][:, 0] = 0.0
        after = run[H][:, 0]
        t.save(before), t.save(again), t.save(after)
    g = t.graph
    reads = of(g, ir.Read)
    write = of(g, ir.Write)[0]
    assert len(reads) == 2 and reads[0].id < write.id < reads[1].id
    assert g.node(before.node_id).input.node == g.node(again.node_id).input.node == reads[0].id
    assert g.node(after.node_id).input.node == reads[1].id
    assert write.value == 0.0 and write.index == (ir.SliceItem(), 0)


def test_augmented_assignment_is_one_additive_write():
    with Tracer(Recorder()) as t:
        clean, corrupt = t.run(TOKENS), t.run(TOKENS)
        corrupt[H][:, -1] += clean[H][:, -1]
    g = t.graph
    assert_well_formed(g)
    writes = of(g, ir.Write)
    assert len(writes) == 1 and writes[0].mode == "add" and writes[0].index == (ir.SliceItem(), -1)
    assert [r.run for r in of(g, ir.Read)] == [clean.id]  # the corrupted activation is never read
    assert not of(g, ir.Binary)
    assert g.node(writes[0].value.node).input.node == of(g, ir.Read)[0].id


@pytest.mark.parametrize(
    "statement, mode, value",
    [
        ("run[H][:, 1] += 2", "add", 2.0),
        ("run[H][:, 1] -= 2", "add", -2.0),
        ("run[H][:, 1] *= 3", "mul", 3.0),
        ("run[H] += 2", "add", 2.0),
        ("run[H] *= 0.5", "mul", 0.5),
    ],
)
def test_augmented_assignment_modes(statement, mode, value):
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        exec(statement, {"H": H}, {"run": run})
    (write,) = t.graph.nodes[2:]
    assert isinstance(write, ir.Write) and (write.mode, write.value) == (mode, value)
    assert write.index == ((ir.SliceItem(), 1) if "[:, 1]" in statement else ())


def test_augmented_assignment_corner_cases():
    # -= with a proxy: add its negation.
    with Tracer(Recorder()) as t:
        run, other = t.run(TOKENS), t.run(TOKENS)
        run[H][:, 1] -= other[H][:, 1]
    g = t.graph
    (write,) = of(g, ir.Write)
    neg = g.node(write.value.node)
    assert write.mode == "add" and isinstance(neg, ir.Unary) and neg.op == "neg"

    # The right-hand side reads the same activation: that Read stays, the write is still additive.
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        run[H][:, 1] += run[H][:, 0]
    g = t.graph
    assert_well_formed(g)
    assert kinds(g)[2:] == ["Read", "Index", "Write"] and of(g, ir.Write)[0].mode == "add"

    # Division has no write mode: read, divide, set.
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        run[H][:, 1] /= 2
    g = t.graph
    assert kinds(g)[2:] == ["Read", "Index", "Binary", "Write"] and of(g, ir.Write)[0].mode == "set"

    # A tensor index is uploaded once and shared by the folded write.
    idx = torch.tensor([0, 2])
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        run[H][:, idx] += 1.0
    g = t.graph
    (write,) = of(g, ir.Write)
    assert kinds(g)[2:] == ["Constant", "Write"] and g.node(write.index[1].node).value is idx


def test_inplace_on_a_bound_value_is_not_a_write():
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        x = run[H][:, -1]
        x += 1  # a new value; proxies are not views
        saved = t.save(x)
    assert not of(t.graph, ir.Write) and isinstance(t.graph.node(saved_input(t.graph, saved)), ir.Binary)

    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        x = run[H][:, -1]
        x += 1
        run[H][:, -1] = x  # another index object: a plain set of the computed value
        t.save(x)
    assert [n.mode for n in of(t.graph, ir.Write)] == ["set"]

    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        i = (slice(None), -1)
        x = run[H][i]
        x += 1
        run[H][i] = x  # the same index object, as in `run[H][i] += 1`: folds into an additive write...
        with pytest.raises(RuntimeError, match="folded"):
            t.save(x)  # ...so x no longer exists
    assert [n.mode for n in of(t.graph, ir.Write)] == ["add"]

    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        x = run[H][:, -1]
        x += 1
        run[H][:, -1] = 5.0
        run[H][:, -1] = x  # a write in between: x must keep its old meaning
    writes = of(t.graph, ir.Write)
    assert [w.mode for w in writes] == ["set", "set"] and isinstance(
        t.graph.node(writes[1].value.node), ir.Binary
    )


def saved_input(graph: ir.Graph, saved) -> int:
    """The node a save (a Saved handle or a name) saves."""
    name = saved if isinstance(saved, str) else saved.name
    return next(s for s in graph.saves if s.name == name).input.node


def test_constants_from_tensors():
    direction = torch.randn(32)
    arr = np.ones(32, dtype=np.float32)
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        a = run[H] @ direction
        b = direction * run[H]  # tensor on the left: torch defers to the proxy
        c = run[H] + arr
        d = run[H][:, [0, 2]]
        t.save(a + b), t.save(c), t.save(d)
    g = t.graph
    consts = of(g, ir.Constant)
    assert sum(c.value is direction for c in consts) == 1  # one node per tensor object
    assert consts[0].value is TOKENS
    assert any(
        isinstance(c.value, torch.Tensor) and torch.equal(c.value, torch.from_numpy(arr)) for c in consts
    )
    assert any(c.value.tolist() == [0, 2] for c in consts)
    matmul, rmul = [n for n in of(g, ir.Binary) if n.op in ("matmul", "mul")]
    assert matmul.op == "matmul" and g.node(matmul.b.node).value is direction
    assert rmul.op == "mul" and g.node(rmul.a.node).value is direction and isinstance(rmul.b, ir.Ref)


def test_weights():
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        t.save(run[H] @ t.W_U, "a")
        t.save(t.W_U, "b")  # deduplicated
        t.save(t.W_O[1], "c")
        t.save(t.W_O[-1, 2], "d")
        t.save(t.W_in[0], "e")
        t.save(t.W_O, "f")  # whole stack
        t.save(t.weight("blocks.0.attn.W_Q"), "g")
        t.save(t.W_O[:, 0], "h")
        with pytest.raises(IndexError, match="layer 5"):
            t.W_O[5]
    g = t.graph
    assert [w.name for w in of(g, ir.Weight)] == [
        "W_U", "blocks.1.attn.W_O", "blocks.0.mlp.W_in", "W_O", "blocks.0.attn.W_Q",
    ]  # fmt: skip
    d = g.node(saved_input(g, "d"))
    assert isinstance(d, ir.Index) and d.index == (2,) and g.node(d.input.node).name == "blocks.1.attn.W_O"
    h = g.node(saved_input(g, "h"))
    assert h.index == (ir.SliceItem(), 0) and g.node(h.input.node).name == "W_O"
    attrs = {name for name in dir(Tracer) if name.startswith(("W_", "b_"))}
    assert attrs == {*MODEL_WEIGHTS, *STACKED_WEIGHTS}


# Every proxy operation and the node it makes.
R = ir.Ref(3)  # the Read of H in the table's trace (Constant 0, Run 1, Constant 2 = `other`, Read 3)
PROXY_TABLE = [
    (lambda x, o: x + 2, ir.Binary(4, "add", R, 2.0)),
    (lambda x, o: 2 + x, ir.Binary(4, "add", 2.0, R)),
    (lambda x, o: x - o, ir.Binary(4, "sub", R, ir.Ref(2))),
    (lambda x, o: 1 - x, ir.Binary(4, "sub", 1.0, R)),
    (lambda x, o: x * 3, ir.Binary(4, "mul", R, 3.0)),
    (lambda x, o: x / 4, ir.Binary(4, "div", R, 4.0)),
    (lambda x, o: 1 / x, ir.Binary(4, "div", 1.0, R)),
    (lambda x, o: x**2, ir.Binary(4, "pow", R, 2.0)),
    (lambda x, o: 2**x, ir.Binary(4, "pow", 2.0, R)),
    (lambda x, o: x @ o, ir.Binary(4, "matmul", R, ir.Ref(2))),
    (lambda x, o: o @ x, ir.Binary(4, "matmul", ir.Ref(2), R)),
    (lambda x, o: x.maximum(0), ir.Binary(4, "maximum", R, 0.0)),
    (lambda x, o: x.minimum(o), ir.Binary(4, "minimum", R, ir.Ref(2))),
    (lambda x, o: -x, ir.Unary(4, "neg", R)),
    (lambda x, o: abs(x), ir.Unary(4, "abs", R)),
    (lambda x, o: x.exp(), ir.Unary(4, "exp", R)),
    (lambda x, o: x.log(), ir.Unary(4, "log", R)),
    (lambda x, o: x.sqrt(), ir.Unary(4, "sqrt", R)),
    (lambda x, o: x.relu(), ir.Unary(4, "relu", R)),
    (lambda x, o: x.sigmoid(), ir.Unary(4, "sigmoid", R)),
    (lambda x, o: x.tanh(), ir.Unary(4, "tanh", R)),
    (lambda x, o: x.float(), ir.Unary(4, "float", R)),
    (lambda x, o: x.softmax(-1), ir.Unary(4, "softmax", R, dim=-1)),
    (lambda x, o: x.log_softmax(dim=2), ir.Unary(4, "log_softmax", R, dim=2)),
    (lambda x, o: x.clamp(min=0), ir.Unary(4, "clamp", R, min=0.0)),
    (lambda x, o: x.clamp(-1, 1), ir.Unary(4, "clamp", R, min=-1.0, max=1.0)),
    (lambda x, o: x.mean(), ir.Reduce(4, "mean", R)),
    (lambda x, o: x.mean(0, keepdim=True), ir.Reduce(4, "mean", R, dims=(0,), keepdim=True)),
    (lambda x, o: x.sum(dim=(1, 2)), ir.Reduce(4, "sum", R, dims=(1, 2))),
    (lambda x, o: x.max(-1), ir.Reduce(4, "max", R, dims=(-1,))),
    (lambda x, o: x.min(), ir.Reduce(4, "min", R)),
    (lambda x, o: x.argmax(-1), ir.Reduce(4, "argmax", R, dims=(-1,))),
    (lambda x, o: x.argmin(), ir.Reduce(4, "argmin", R)),
    (lambda x, o: x.norm(dim=-1), ir.Reduce(4, "norm", R, dims=(-1,))),
    (lambda x, o: x.logsumexp(-1), ir.Reduce(4, "logsumexp", R, dims=(-1,))),
    (lambda x, o: x.gather(-1, o), ir.Gather(4, R, -1, ir.Ref(2))),
    (lambda x, o: x.reshape(2, -1), ir.Reshape(4, R, (2, -1))),
    (lambda x, o: x.reshape((8, 32)), ir.Reshape(4, R, (8, 32))),
    (lambda x, o: x.view(-1), ir.Reshape(4, R, (-1,))),
    (lambda x, o: x.transpose(0, 1), ir.Transpose(4, R, 0, 1)),
    (lambda x, o: x.mT, ir.Transpose(4, R, -2, -1)),
    (lambda x, o: x[0], ir.Index(4, R, (0,))),
    (lambda x, o: x[:, -1], ir.Index(4, R, (ir.SliceItem(), -1))),
    (lambda x, o: x[..., None, 1:3:2], ir.Index(4, R, (ir.ELLIPSIS, ir.NEW_AXIS, ir.SliceItem(1, 3, 2)))),
    (lambda x, o: x[np.int64(1), o], ir.Index(4, R, (1, ir.Ref(2)))),
    (lambda x, o: x.unsqueeze(1), ir.Index(4, R, (ir.SliceItem(), ir.NEW_AXIS))),
    (lambda x, o: x.unsqueeze(-1), ir.Index(4, R, (ir.ELLIPSIS, ir.NEW_AXIS))),
]


@pytest.mark.parametrize("fn, node", PROXY_TABLE, ids=[str(n) for _, n in PROXY_TABLE])
def test_proxy_operations(fn, node):
    other = torch.arange(4)
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        o = t.constant(other)
        t.save(fn(run[H], o))
    g = t.graph
    assert g.node(2).value is other and isinstance(g.node(3), ir.Read)
    assert g.nodes[4] == node
    assert isinstance(g.nodes[5], ir.Save) and g.nodes[5].input == ir.Ref(4)


def test_whole_index_is_the_same_value():
    with Tracer(Recorder()) as t:
        run = t.run(TOKENS)
        x = run[H] + 1
        assert x[...] is x


def test_misuse_errors():
    backend = Recorder()
    with Tracer(backend) as t:
        run = t.run(TOKENS)
        x = run[H]
        for fn in (bool, len, iter, float, int, lambda v: v.shape, lambda v: range(v)):
            with pytest.raises(TypeError, match="not known while the graph is being built"):
                fn(x)
        with pytest.raises(AttributeError, match="transpose"):
            _ = x.T
        with pytest.raises(TypeError, match="immutable"):
            (x + 1)[0] = 1
        with pytest.raises(UnknownHookError, match=r"did you mean blocks\.1\.hook_resid_post"):
            run["blocks.1.hook_resid_pots"]
        with pytest.raises(TypeError, match=r"run\.logits"):
            t.save(run)
        with pytest.raises(TypeError, match="cannot use a dict"):
            x + {}
        with pytest.raises(ValueError, match="clamp needs"):
            x.clamp()
        with pytest.raises(ValueError, match="2-norm"):
            x.norm(p=1)
        with pytest.raises(TypeError, match="Python int"):
            x[: run[H]]
        with pytest.raises(TypeError, match="ints or bools"):
            x[torch.tensor([0.5])]
        t.save(x, "a")
        with pytest.raises(ValueError, match="already saved"):
            t.save(x, "a")
        with pytest.raises(ValueError, match="dtype"):
            t.save(x, dtype="float8")
        with pytest.raises(PermissionError, match="allow_code=True"):
            t.code_hook(run, H, lambda a, hook: a)
        with Tracer(backend) as other, pytest.raises(ValueError, match="another trace"):
            other.save(x)
    with pytest.raises(RuntimeError, match="closed"):
        t.save(x)
    with pytest.raises(RuntimeError, match="runs once"), t:
        pass


def test_exception_in_block_executes_nothing():
    backend = Recorder()
    with pytest.raises(ZeroDivisionError), Tracer(backend) as t:
        s = t.save(t.run(TOKENS).logits)
        raise ZeroDivisionError
    assert backend.graphs == []
    with pytest.raises(RuntimeError, match="raised before it ran"):
        _ = s.value


def test_save_names_and_dtypes():
    with Tracer(Recorder()) as t:
        x = t.run(TOKENS)[H]
        a = t.save(x)
        b = t.save(x, "save_1")
        c = t.save(x, dtype=torch.float16)
        d = x.save(dtype="bfloat16")
    assert [a.name, b.name, c.name, d.name] == ["save_0", "save_1", "save_2", "save_3"]
    assert [s.dtype for s in t.graph.saves] == [None, None, "float16", "bfloat16"]


def test_code_hook():
    import cloudpickle

    def double(act, hook):
        return act * 2

    backend = Recorder()
    with Tracer(backend, allow_code=True) as t:
        run = t.run(TOKENS)
        t.save(run[H], "before")
        t.code_hook(run, H, double)
        t.save(run[H], "after")
    g, allow_code = backend.graphs[0]
    (hook,) = of(g, ir.CodeHook)
    assert allow_code and (hook.run, hook.hook) == (run.id, H)
    assert cloudpickle.loads(hook.payload)(torch.ones(2), hook=None).tolist() == [2.0, 2.0]
    reads = of(g, ir.Read)
    assert len(reads) == 2 and reads[0].id < hook.id < reads[1].id  # a code hook changes the activation


def test_ops_and_metrics_in_a_trace():
    with Tracer(Recorder()) as t:
        clean, corrupt = t.run(TOKENS), t.run(TOKENS)
        corrupt["blocks.0.attn.hook_z"].apply(ops.patch(clean, head=1))  # the same hook of `clean`
        t.apply(corrupt, "blocks.0.hook_resid_post", ops.zero_ablate(pos=0))
        m = t.save(ops.logit_diff(3, 4)(corrupt))
        steer = ops.add(clean[H][:, -1].mean(0), pos=-1)
        with pytest.raises(TypeError, match="trace value"):
            steer(torch.zeros(2, 4, 32))  # a trace value cannot be used by a local hook
    g = t.graph
    w_patch, w_zero = of(g, ir.Write)
    src = g.node(w_patch.value.node)
    assert g.node(src.input.node) == ir.Read(src.input.node, run=clean.id, hook="blocks.0.attn.hook_z")
    assert w_patch.index == (ir.SliceItem(), ir.SliceItem(), 1) and w_zero.index == (ir.SliceItem(), 0)
    mean = g.node(saved_input(g, m))
    assert isinstance(mean, ir.Reduce) and mean.op == "mean" and mean.dims is None


# ---------------------------------------------------------------------------------------- builders
def test_resolve_names_filter():
    assert builders.resolve_names_filter(None, HOOKS) == HOOKS
    assert builders.resolve_names_filter(H, HOOKS) == [H]
    # Explicit lists come back in forward order, once each.
    assert builders.resolve_names_filter([H, "hook_embed", H], HOOKS) == ["hook_embed", H]
    assert builders.resolve_names_filter(lambda n: n.endswith("hook_z"), HOOKS) == [
        "blocks.0.attn.hook_z", "blocks.1.attn.hook_z",
    ]  # fmt: skip
    with pytest.raises(UnknownHookError) as e:
        builders.resolve_names_filter(["blocks.0.hook_resid_pr", "blocks.1.attn.hook_pattrn", H], HOOKS)
    msg = str(e.value)
    assert "'blocks.0.hook_resid_pr'; did you mean blocks.0.hook_resid_pre" in msg
    assert "'blocks.1.attn.hook_pattrn'; did you mean blocks.1.attn.hook_pattern" in msg
    with pytest.raises(TypeError):
        builders.resolve_names_filter([1], HOOKS)


def test_run_with_cache_graph_sends_only_explicit_names():
    graph, decode = builders.build_run_with_cache_graph(TOKENS, lambda n: "resid_pre" in n, HOOKS)
    assert_well_formed(graph)
    reads = of(graph, ir.Read)
    assert [r.hook for r in reads] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", ir.LOGITS]
    assert [s.name for s in graph.saves] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "logits"]
    assert decode.output == "logits"
    assert decode.cache == {"blocks.0.hook_resid_pre": "blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre": "blocks.1.hook_resid_pre"}  # fmt: skip
    graph, decode = builders.build_run_with_cache_graph(
        "some text", [H], HOOKS, return_type=None, dtype="float16"
    )
    assert (
        kinds(graph) == ["Run", "Read", "Save"]
        and graph.saves[0].dtype == "float16"
        and decode.output is None
    )
    with pytest.raises(UnknownHookError, match="did you mean"):
        builders.build_run_with_cache_graph(TOKENS, ["blocks.0.hook_resid_pree"], HOOKS)


def test_run_with_cache_graph_slices_on_the_executor():
    graph, decode = builders.build_run_with_cache_graph(
        TOKENS,
        [H, "blocks.0.attn.hook_pattern"],
        HOOKS,
        pos_slice=-1,
        remove_batch_dim=True,
        return_logits=False,
    )
    assert decode.output is None and kinds(graph)[2:] == ["Read", "Index", "Index", "Save"] * 2
    pattern_pos, resid_pos = (graph.node(s.input.node) for s in graph.saves)
    pattern_batch, resid_batch = (graph.node(n.input.node) for n in (pattern_pos, resid_pos))
    assert [graph.node(n.input.node).hook for n in (pattern_batch, resid_batch)] == [
        "blocks.0.attn.hook_pattern",
        H,
    ]
    assert pattern_batch.index == resid_batch.index == (0,)
    assert pattern_pos.index == (ir.ELLIPSIS, ir.SliceItem(-1, None), ir.SliceItem())  # the query position
    assert resid_pos.index == (ir.SliceItem(-1, None),)


def test_run_with_hooks_graph():
    hooks = [
        ("blocks.0.attn.hook_z", ops.zero_ablate(head=2)),
        (lambda n: n.endswith("hook_resid_post"), ops.scale(0.5)),
    ]
    graph, decode = builders.build_run_with_hooks_graph(TOKENS, hooks, HOOKS, metric=ops.logit(5))
    writes = of(graph, ir.Write)
    assert [(w.hook, w.mode) for w in writes] == [
        ("blocks.0.attn.hook_z", "set"), ("blocks.0.hook_resid_post", "mul"), ("blocks.1.hook_resid_post", "mul"),
    ]  # fmt: skip
    assert decode.output == "metric" and [s.name for s in graph.saves] == ["metric"]
    graph, decode = builders.build_run_with_hooks_graph(TOKENS, [], HOOKS, return_type="loss")
    assert decode.output == "loss" and of(graph, ir.Gather)

    def hand_written(act, hook):
        return act

    with pytest.raises(PermissionError, match="declarative op"):
        builders.build_run_with_hooks_graph(TOKENS, [(H, hand_written)], HOOKS)
    graph, _ = builders.build_run_with_hooks_graph(TOKENS, [(H, hand_written)], HOOKS, allow_code=True)
    assert len(of(graph, ir.CodeHook)) == 1
    with pytest.raises(UnknownHookError, match="did you mean"):
        builders.build_run_with_hooks_graph(TOKENS, [("blocks.0.hook_resid_pots", ops.zero_ablate())], HOOKS)
    with pytest.raises(ValueError, match="padded batch"):
        builders.build_run_with_hooks_graph(["a", "b"], [], HOOKS, return_type="loss")
    with pytest.raises(ValueError, match="return_type"):
        builders.build_run_with_hooks_graph(TOKENS, [], HOOKS, return_type="both")
    graph, _ = builders.build_run_with_hooks_graph(TOKENS, [], HOOKS, bwd_hooks=[(H, ops.zero_ablate())])
    assert [(w.hook, w.mode, w.value) for w in of(graph, ir.GradWrite)] == [(H, "set", 0.0)]
    with pytest.raises(PermissionError, match="allow_code"):
        builders.build_run_with_hooks_graph(TOKENS, [], HOOKS, bwd_hooks=[(H, ops.mean_ablate())])
    with pytest.raises(TypeError, match="unsupported"):
        builders.run_with_cache(Recorder(), TOKENS, shortformer_pos_embed=None)


# ---------------------------------------------------------------------------------------- ops, locally
ARCHS: dict[str, dict[str, Any]] = {
    "gpt2": dict(act_fn="gelu_new"),
    "llama_gqa": dict(
        positional_embedding_type="rotary", normalization_type="RMS", gated_mlp=True, act_fn="silu",
        n_key_value_heads=2, attn_bias=False, attn_out_bias=False, mlp_bias=False, tie_word_embeddings=True,
    ),
}  # fmt: skip


def make_model(arch: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_mlp=64, d_vocab=61, seed=0, **ARCHS[arch]
    )
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request) -> HookedTransformer:
    return make_model(request.param)


@pytest.fixture(scope="module")
def gpt2() -> HookedTransformer:
    return make_model("gpt2")


BATCH = torch.randint(0, 61, (4, 6), generator=torch.Generator().manual_seed(1))
Z, PAT, RES, POST = (
    "blocks.0.attn.hook_z",
    "blocks.1.attn.hook_pattern",
    "blocks.1.hook_resid_pre",
    "blocks.0.mlp.hook_post",
)
SRC_Z = torch.randn(4, 6, 4, 8, generator=torch.Generator().manual_seed(2))
VEC = torch.randn(32, generator=torch.Generator().manual_seed(3))
PERM = torch.tensor([2, 3, 1, 0])
HEADS, POSS = torch.tensor([1, 3]), torch.tensor([0, 2, 5])


def _hand_mean(idx):
    def fn(act, hook):
        mean = act.mean(dim=0, keepdim=True)
        act[idx] = mean[idx]
        return act

    return fn


def _hand_set(idx, value_fn):
    def fn(act, hook):
        act[idx] = value_fn(act)
        return act

    return fn


# (hook, op, the hand-written hook a TransformerLens user would write)
OP_CASES = [
    (Z, ops.zero_ablate(head=2), _hand_set((slice(None), slice(None), 2), lambda a: 0.0)),
    ("blocks.0.attn.hook_k", ops.zero_ablate(head=1), _hand_set((slice(None), slice(None), 1), lambda a: 0.0)),
    (Z, ops.zero_ablate(head=HEADS, pos=POSS), _hand_set((slice(None), POSS[:, None], HEADS), lambda a: 0.0)),
    (PAT, ops.zero_ablate(head=1, pos=slice(2, 5)), _hand_set((slice(None), 1, slice(2, 5)), lambda a: 0.0)),
    (RES, ops.zero_ablate(), _hand_set(..., lambda a: 0.0)),
    (Z, ops.mean_ablate(head=1, pos=-1), _hand_mean((slice(None), -1, 1))),
    (RES, ops.mean_ablate(), _hand_mean(...)),
    (PAT, ops.mean_ablate(head=[0, 2]), _hand_mean((slice(None), torch.tensor([0, 2])))),
    (RES, ops.resample_ablate(permutation=PERM, pos=2), _hand_set((slice(None), 2), lambda a: a[PERM][:, 2])),
    (Z, ops.resample_ablate(permutation=PERM, head=HEADS), _hand_set((slice(None), slice(None), HEADS), lambda a: a[PERM][:, :, HEADS])),
    (Z, ops.patch(SRC_Z, head=2, pos=[1, 2]), _hand_set((slice(None), [1, 2], 2), lambda a: SRC_Z[:, [1, 2], 2])),
    (Z, ops.patch(SRC_Z), _hand_set(..., lambda a: SRC_Z)),
    (Z, ops.patch({Z: SRC_Z}, pos=0), _hand_set((slice(None), 0), lambda a: SRC_Z[:, 0])),
    (RES, ops.add(VEC, scale=3.0, pos=-1), _hand_set((slice(None), -1), lambda a: a[:, -1] + VEC * 3.0)),
    (RES, ops.add(VEC), _hand_set(..., lambda a: a + VEC)),
    (POST, ops.scale(0.5, pos=[0, 1]), _hand_set((slice(None), torch.tensor([0, 1])), lambda a: a[:, [0, 1]] * 0.5)),
    (PAT, ops.scale(torch.tensor(0.3), head=1), _hand_set((slice(None), 1), lambda a: a[:, 1] * torch.tensor(0.3))),
    (POST, ops.clamp(min=-1e-3, max=1e-3), _hand_set(..., lambda a: a.clamp(-1e-3, 1e-3))),
    (RES, ops.clamp(max=0.0, pos=0), _hand_set((slice(None), 0), lambda a: a[:, 0].clamp(max=0.0))),
    (RES, ops.python(lambda a, hook: a * 2), lambda a, hook: a * 2),
]  # fmt: skip
OP_IDS = [f"{h.split('.')[-1]}-{op!r}" for h, op, _ in OP_CASES]


@pytest.mark.parametrize("hook, op, hand", OP_CASES, ids=OP_IDS)
@torch.no_grad()  # with autograd on, the core's hook_q/k/v views refuse in-place writes (hand-written too)
def test_ops_as_local_hooks_equal_hand_written(model, hook, op, hand):
    expected = model.run_with_hooks(BATCH, fwd_hooks=[(hook, hand)])
    got = model.run_with_hooks(BATCH, fwd_hooks=[(hook, op)])
    assert torch.equal(got, expected)
    assert not torch.equal(got, model(BATCH))  # the op did something


def test_resample_default_is_a_seeded_derangement(gpt2):
    perm = ops.derangement(4, seed=0)
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and all(perm[i] != i for i in range(4))
    assert torch.equal(perm, ops.derangement(4, seed=0))
    assert any(not torch.equal(ops.derangement(6, seed=s), ops.derangement(6, seed=0)) for s in range(1, 5))
    with pytest.raises(ValueError, match="at least 2"):
        ops.derangement(1)
    expected = gpt2.run_with_hooks(BATCH, fwd_hooks=[(RES, ops.resample_ablate(permutation=perm))])
    assert torch.equal(gpt2.run_with_hooks(BATCH, fwd_hooks=[(RES, ops.resample_ablate(seed=0))]), expected)


def test_hook_index_layouts():
    s = slice(None)
    assert ops.hook_index("blocks.0.attn.hook_z", head=3) == (s, s, 3)
    assert ops.hook_index("blocks.0.attn.hook_z", pos=-1) == (s, -1)
    assert ops.hook_index("blocks.0.attn.hook_pattern", head=3) == (s, 3)
    assert ops.hook_index("blocks.0.attn.hook_attn_scores", head=1, pos=2) == (s, 1, 2)
    assert ops.hook_index("blocks.0.hook_resid_pre", pos=slice(1, 3)) == (s, slice(1, 3))
    assert ops.hook_index("blocks.0.hook_resid_pre") is ...
    with pytest.raises(ValueError, match="no head dimension"):
        ops.hook_index("blocks.0.hook_resid_pre", head=1)
    with pytest.raises(ValueError, match="over='batch'"):
        ops.mean_ablate(over="pos")
    with pytest.raises(TypeError, match="token id"):
        ops.logit_diff(" Paris", " Rome")


def test_metrics_locally(gpt2):
    logits = gpt2(BATCH)
    last = logits[:, -1]
    assert torch.equal(ops.logit_diff(3, 4)(logits), (last[:, 3] - last[:, 4]).mean())
    assert torch.equal(ops.logit(3, pos=2, per_prompt=True)(logits), logits[:, 2, 3])
    assert torch.equal(ops.log_prob(5)(logits), last.log_softmax(-1)[:, 5].mean())
    a, b = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])
    per_prompt = torch.stack([last[i, a[i]] - last[i, b[i]] for i in range(4)])
    assert torch.allclose(ops.logit_diff(a, b, per_prompt=True)(logits), per_prompt, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------- execution
class ExecutorBackend(LocalBackend):
    """The real local backend, also recording the graphs it ran."""

    def __init__(self, model: HookedTransformer) -> None:
        super().__init__(model)
        self.graphs: list[ir.Graph] = []

    def execute(self, graph: ir.Graph, allow_code: bool = False, progress=None) -> dict[str, torch.Tensor]:
        self.graphs.append(graph)
        return super().execute(graph, allow_code=allow_code)


@pytest.fixture(scope="module")
def backend(model) -> ExecutorBackend:
    return ExecutorBackend(model)


@pytest.mark.parametrize("hook, op, hand", OP_CASES, ids=OP_IDS)
@torch.no_grad()
def test_ops_compiled_equal_local_hooks(model, backend, hook, op, hand):
    expected = model.run_with_hooks(BATCH, fwd_hooks=[(hook, op)])
    allow_code = isinstance(op, ops.Python)
    got = builders.run_with_hooks(backend, BATCH, [(hook, op)], allow_code=allow_code)
    assert torch.equal(got, expected)


def test_metric_and_loss_compiled(model, backend):
    op = ops.mean_ablate(head=1)
    for metric in (
        ops.logit_diff(3, 4),
        ops.logit(7, pos=2, per_prompt=True),
        ops.log_prob(torch.tensor([1, 2, 3, 4])),
    ):
        expected = metric(model.run_with_hooks(BATCH, fwd_hooks=[(Z, op)]))
        assert torch.equal(builders.run_with_hooks(backend, BATCH, [(Z, op)], metric=metric), expected)
    expected = model.run_with_hooks(BATCH, fwd_hooks=[(Z, op)], return_type="loss")
    assert torch.equal(builders.run_with_hooks(backend, BATCH, [(Z, op)], return_type="loss"), expected)
    assert builders.run_with_hooks(backend, BATCH, [(Z, op)], return_type=None) is None


def test_run_with_cache_matches_local(model, backend):
    names = lambda n: n.endswith(("hook_resid_pre", "hook_pattern", "hook_z"))  # noqa: E731
    logits, cache = builders.run_with_cache(backend, BATCH, names_filter=names)
    ref_logits, ref_cache = model.run_with_cache(BATCH, names_filter=names)
    assert torch.equal(logits, ref_logits) and list(cache) == list(ref_cache.keys())
    for k in cache:
        assert torch.allclose(cache[k], ref_cache[k], atol=1e-6), k  # batched vs explicit attention kernels
    _, sliced = builders.run_with_cache(
        backend, BATCH, names_filter=names, pos_slice=-1, remove_batch_dim=True
    )
    _, ref_sliced = model.run_with_cache(BATCH, names_filter=names, pos_slice=-1, remove_batch_dim=True)
    for k in sliced:
        assert sliced[k].shape == ref_sliced[k].shape and torch.allclose(
            sliced[k], ref_sliced[k], atol=1e-6
        ), k
    out, half = builders.run_with_cache(
        backend, BATCH[:1], names_filter=[RES], dtype=torch.float16, return_type=None
    )
    assert out is None and half[RES].dtype == torch.float16


def test_traced_patching_matches_hand_written_hooks(model, backend):
    clean_tokens, corrupt_tokens = BATCH[:2], BATCH[2:]
    h = "blocks.0.hook_resid_post"
    with Tracer(backend) as t:
        clean, corrupt = t.run(clean_tokens), t.run(corrupt_tokens)
        corrupt[h][:, -1] = clean[h][:, -1]
        corrupt[RES][:, 1] += clean["blocks.0.hook_resid_pre"][:, 1] * 0.5
        patched = t.save(corrupt.logits)
        resid = t.save(corrupt[RES])  # read after the write: sees it
        diff = t.save(ops.logit_diff(3, 4)(corrupt))
        unembed = t.save(corrupt["ln_final.hook_normalized"][:, -1] @ t.W_U)
        w = t.save(t.W_O[1, 2])
        # Steering the clean run with a vector from its own earlier hook (a later hook: it cannot
        # change what the corrupted run took from clean at blocks.0).
        clean["blocks.1.hook_resid_post"].apply(ops.add(clean[RES][:, 2].mean(0), scale=2.0, pos=0))
        steered = t.save(clean["blocks.1.hook_resid_post"])
    _, cache = model.run_with_cache(clean_tokens)
    seen = {}

    def patch_last(act, hook):
        act[:, -1] = cache[h][:, -1]

    def add_half(act, hook):
        act[:, 1] += cache["blocks.0.hook_resid_pre"][:, 1] * 0.5
        seen["resid"] = act.clone()

    ref = model.run_with_hooks(corrupt_tokens, fwd_hooks=[(h, patch_last), (RES, add_half)])
    # Two runs of one graph share a batched forward pass: equal up to kernel rounding.
    assert torch.allclose(patched.value, ref, atol=1e-5)
    assert torch.allclose(resid.value, seen["resid"], atol=1e-5)
    assert torch.allclose(diff.value, ops.logit_diff(3, 4)(ref), atol=1e-5)
    assert torch.allclose(
        unembed.value, (ref[:, -1] - (model.unembed.bias if model.unembed.bias is not None else 0)), atol=1e-4
    )
    assert torch.equal(w.value, model.W_O[1, 2].detach())
    ref_steered = cache["blocks.1.hook_resid_post"].clone()
    ref_steered[:, 0] += cache[RES][:, 2].mean(0) * 2.0
    assert torch.allclose(steered.value, ref_steered, atol=1e-5)
    assert [n.mode for n in backend.graphs[-1].nodes if isinstance(n, ir.Write)] == ["set", "add", "add"]


def test_traced_code_hook_and_text_free_runs(gpt2):
    backend = ExecutorBackend(gpt2)

    def negate(act, hook):
        return -act

    with Tracer(backend, allow_code=True) as t:
        run = t.run(BATCH[0])  # a 1-D tensor: one sequence
        before = t.save(run[RES])
        t.code_hook(run, RES, negate)
        after = t.save(run[RES])
    assert torch.equal(after.value, -before.value) and before.value.shape == (1, 6, 32)


def test_codec_round_trip_executes_the_same(gpt2):
    from telelens.protos import codec

    backend = ExecutorBackend(gpt2)
    graph, decode = builders.build_run_with_hooks_graph(
        BATCH, [(Z, ops.patch(SRC_Z, head=HEADS, pos=POSS)), (RES, ops.add(VEC, pos=-1))], backend.hook_names,
        metric=ops.logit_diff(3, 4),
    )  # fmt: skip
    wire = codec.graph_from_bytes(codec.graph_to_bytes(graph))
    assert torch.equal(decode(backend.execute(wire))[0], decode(backend.execute(graph))[0])


def test_validation_errors_come_from_the_executor(gpt2):
    backend = ExecutorBackend(gpt2)
    with pytest.raises(ir.GraphValidationError, match="hook_attn_out"), Tracer(backend) as t:
        run = t.run(BATCH)
        # A write may only use earlier hooks of its own run.
        run["blocks.0.hook_resid_pre"][:, 0] = run["blocks.0.hook_attn_out"][:, 0]
        out = t.save(run.logits)
    with pytest.raises(RuntimeError, match="raised before it ran"):
        _ = out.value
