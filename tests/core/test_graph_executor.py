"""The in-process graph executor: every op, patching, ablation, steering, early stop, batching,
validation errors, code hooks and sweeps, each against the same computation done by hand
(run_with_cache / run_with_hooks / core.patching) on random tiny models. Graphs are built
by hand from the ``ir`` dataclasses.
"""

from __future__ import annotations

import cloudpickle
import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, tiny_model

from telelens.core import patching
from telelens.core.config import HookedTransformerConfig
from telelens.core.graph import execute, validate
from telelens.core.graph.hooks import hook_table
from telelens.core.graph.plan import RunGroup, make_plan
from telelens.core.graph.validate import check
from telelens.core.hooked_transformer import HookedTransformer
from telelens.lens.utils import get_act_name
from telelens.protos import ir
from telelens.protos.ir import ELLIPSIS, NEW_AXIS, Ref, SliceItem

VOCAB = 97
ARCHS = {"gpt2": GPT2, "llama_gqa": {**LLAMA_GQA, "tie_word_embeddings": True}}


def make_model(arch: str, **overrides) -> HookedTransformer:
    return tiny_model(ARCHS[arch], norm_noise=0.1, n_ctx=16, d_vocab=VOCAB, **overrides)


MODELS = {arch: make_model(arch) for arch in ARCHS}


@pytest.fixture(params=list(ARCHS))
def model(request) -> HookedTransformer:
    return MODELS[request.param]


def rand_tokens(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def wire(t: torch.Tensor) -> ir.TensorData:
    """A tensor as the client sends it: little-endian bytes (bf16 as its int16 bits)."""
    name = str(t.dtype).removeprefix("torch.")
    arr = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    return ir.TensorData(name, tuple(t.shape), arr.astype(arr.dtype.newbyteorder("<")).tobytes())


class Builder:
    """Appends nodes with consecutive ids; returns a Ref to each."""

    def __init__(self) -> None:
        self.nodes: list[ir.Node] = []

    def __call__(self, cls: type, *args, **kwargs) -> Ref:
        nid = len(self.nodes)
        self.nodes.append(cls(nid, *args, **kwargs))
        return Ref(nid)

    def run(self, tokens: torch.Tensor) -> int:
        return self(ir.Run, tokens=self(ir.Constant, tokens)).node

    def save(self, ref: Ref, name: str, dtype: str | None = None) -> None:
        self(ir.Save, ref, name, dtype)

    def graph(self) -> ir.Graph:
        return ir.Graph(tuple(self.nodes))


def exact(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


class PassCounter:
    """Counts forward passes (and can watch any hook) through a hook outside the executor's."""

    def __init__(self, model: HookedTransformer, name: str = "hook_embed") -> None:
        self.model, self.name, self.calls = model, name, 0

    def __enter__(self) -> PassCounter:
        hook_table(self.model)  # the executor's one-off recording pass must not count
        self.model.add_hook(self.name, self._count)
        return self

    def _count(self, t: torch.Tensor, hook) -> None:
        self.calls += 1

    def __exit__(self, *exc) -> None:
        self.model.reset_hooks()


# ------------------------------------------------------------------------------------ ops
def test_every_op_equals_torch_on_the_cache(model):
    tokens = rand_tokens(2, 6)
    hooks = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.1.attn.hook_k", "logits"]
    logits, cache = model.run_with_cache(tokens, names_filter=hooks[:-1])
    resid, pattern, k = (cache[h] for h in hooks[:-1])
    gen = torch.Generator().manual_seed(5)
    vec = torch.randn(32, generator=gen)
    ids = torch.tensor([5, 7, 96])
    mask = torch.tensor([[True, False, True, False, False, True], [False, True, False, False, True, True]])
    gather_idx = torch.randint(0, VOCAB, (2, 6, 3), generator=gen)
    b16 = torch.randn(3, 4, generator=gen).to(torch.bfloat16)

    b = Builder()
    run = b.run(tokens)
    R, P, K, L = (b(ir.Read, run, h) for h in hooks)
    V, IDS, M, G = (
        b(ir.Constant, wire(vec)),
        b(ir.Constant, wire(ids)),
        b(ir.Constant, wire(mask)),
        b(ir.Constant, gather_idx),
    )
    W_U = b(ir.Weight, "W_U")
    expected: dict[str, torch.Tensor] = {}

    def add(name: str, ref: Ref, value: torch.Tensor, dtype: str | None = None) -> None:
        b.save(ref, name, dtype)
        expected[name] = value

    add("index_basic", b(ir.Index, R, (0, SliceItem(1, 5, 2), ELLIPSIS)), resid[0, 1:5:2, ...])
    add("index_newaxis", b(ir.Index, R, (NEW_AXIS, SliceItem(), -1)), resid[None, :, -1])
    add("index_tensor", b(ir.Index, L, (SliceItem(), -1, IDS)), logits[:, -1, ids])
    add("index_bool", b(ir.Index, R, (M,)), resid[mask])
    add("add", b(ir.Binary, "add", R, V), resid + vec)
    add("sub_scalar_first", b(ir.Binary, "sub", 1.5, R), 1.5 - resid)
    add("mul", b(ir.Binary, "mul", R, R), resid * resid)
    add("div", b(ir.Binary, "div", 2.0, V), 2.0 / vec)
    add("pow", b(ir.Binary, "pow", R, 2.0), resid**2.0)
    add("matmul", b(ir.Binary, "matmul", R, W_U), resid @ model.W_U)
    add("maximum", b(ir.Binary, "maximum", R, 0.1), torch.maximum(resid, torch.tensor(0.1)))
    add("minimum", b(ir.Binary, "minimum", R, V), torch.minimum(resid, vec))
    for op, fn in [("neg", torch.neg), ("abs", torch.abs), ("exp", torch.exp), ("relu", torch.relu)]:
        add(op, b(ir.Unary, op, R), fn(resid))
    for op, fn in [
        ("sigmoid", torch.sigmoid),
        ("tanh", torch.tanh),
        ("log", torch.log),
        ("sqrt", torch.sqrt),
    ]:
        add(op, b(ir.Unary, op, P), fn(pattern))
    add("softmax", b(ir.Unary, "softmax", L, dim=-1), logits.softmax(-1))
    add("log_softmax", b(ir.Unary, "log_softmax", L, dim=-1), logits.log_softmax(-1))
    add("clamp", b(ir.Unary, "clamp", R, min=-0.1, max=0.2), resid.clamp(-0.1, 0.2))
    add("float", b(ir.Unary, "float", K), k.float())
    add("sum", b(ir.Reduce, "sum", R, (1,), True), resid.sum(1, keepdim=True))
    add("mean_all", b(ir.Reduce, "mean", R), resid.mean())
    add("max", b(ir.Reduce, "max", L, (-1,)), logits.max(-1).values)
    add("min", b(ir.Reduce, "min", R, (0, 2), True), resid.amin((0, 2), keepdim=True))
    add("argmax", b(ir.Reduce, "argmax", L, (-1,)), logits.argmax(-1))
    add("argmin_all", b(ir.Reduce, "argmin", R), resid.argmin())
    add("norm", b(ir.Reduce, "norm", R, (-1,)), resid.norm(dim=-1))
    add("logsumexp", b(ir.Reduce, "logsumexp", L, (-1,), True), logits.logsumexp(-1, keepdim=True))
    add("gather", b(ir.Gather, L, -1, G), logits.gather(-1, gather_idx))
    add("reshape", b(ir.Reshape, R, (2, -1)), resid.reshape(2, -1))
    add("transpose", b(ir.Transpose, P, 2, 3), pattern.transpose(2, 3))
    logit_diff = b(
        ir.Binary, "sub", b(ir.Index, L, (SliceItem(), -1, 5)), b(ir.Index, L, (SliceItem(), -1, 7))
    )
    add("logit_diff", logit_diff, logits[:, -1, 5] - logits[:, -1, 7])
    for name in [
        "W_U",
        "W_E",
        "b_U",
        "W_O",
        "W_in",
        "b_Q",
        "blocks.1.attn.W_O",
        "blocks.2.attn.W_K",
        "blocks.0.mlp.W_out",
    ]:
        value = model.get_submodule(name.rsplit(".", 1)[0]) if name.startswith("blocks.") else model
        add(f"weight:{name}", b(ir.Weight, name), getattr(value, name.rsplit(".", 1)[-1]).detach())
    add("const_bf16", b(ir.Constant, wire(b16)), b16)
    add("const_local", b(ir.Constant, vec.double()), vec.double())
    add("save_as_f16", R, resid.half(), dtype="float16")
    add("logits", L, logits)

    assert validate(model, b.graph()) == []
    out = execute(model, b.graph())
    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name].device.type == "cpu" and not out[name].requires_grad, name
        exact(out[name], value)
    # results own their memory: changing one never touches the model
    out["weight:W_U"].zero_()
    assert model.W_U.abs().sum() > 0


# ------------------------------------------------------------------------------------ interventions
def test_patching_one_run_into_another_equals_run_with_hooks(model):
    clean, corrupted = rand_tokens(2, 6, seed=1), rand_tokens(2, 6, seed=2)
    resid, z = "blocks.1.hook_resid_pre", "blocks.0.attn.hook_z"
    b = Builder()
    c_run, x_run = b.run(clean), b.run(corrupted)
    clean_resid = b(ir.Index, b(ir.Read, c_run, resid), (SliceItem(), -1))
    b(ir.Write, x_run, resid, clean_resid, (SliceItem(), -1))
    clean_head = b(ir.Index, b(ir.Read, c_run, z), (SliceItem(), SliceItem(), 1))
    b(ir.Write, x_run, z, clean_head, (SliceItem(), SliceItem(), 1))
    b.save(b(ir.Read, x_run, "logits"), "patched")
    out = execute(model, b.graph())

    _, cache = model.run_with_cache(clean, names_filter=[resid, z])

    def patch_resid(act, hook):
        act = act.clone()
        act[:, -1] = cache[resid][:, -1]
        return act

    def patch_head(act, hook):
        act = act.clone()
        act[:, :, 1] = cache[z][:, :, 1]
        return act

    expected = model.run_with_hooks(corrupted, fwd_hooks=[(resid, patch_resid), (z, patch_head)])
    exact(out["patched"], expected)
    assert not torch.allclose(expected, model(corrupted), atol=1e-4)


def _ablation_graph(kind: str, tokens: torch.Tensor, steer: torch.Tensor) -> ir.Graph:
    b = Builder()
    run = b.run(tokens)
    if kind == "zero":
        b(ir.Write, run, "blocks.0.hook_attn_out", 0.0)
    elif kind == "mean":  # mean over the batch of this run's own activation, head 2 only
        mean = b(ir.Reduce, "mean", b(ir.Read, run, "blocks.1.attn.hook_z"), (0,), True)
        b(
            ir.Write,
            run,
            "blocks.1.attn.hook_z",
            b(ir.Index, mean, (SliceItem(), SliceItem(), 2)),
            (SliceItem(), SliceItem(), 2),
        )
    elif kind == "steer":
        vec = b(ir.Binary, "mul", b(ir.Constant, wire(steer)), 3.0)
        b(ir.Write, run, "blocks.0.hook_resid_post", vec, (SliceItem(), SliceItem(2, None)), mode="add")
    elif kind == "scale":
        b(ir.Write, run, "blocks.1.mlp.hook_post", 0.5, mode="mul")
    b.save(b(ir.Read, run, "logits"), "logits")
    return b.graph()


def _ablation_hook(kind: str, steer: torch.Tensor):
    def zero(act, hook):
        return torch.zeros_like(act)

    def mean(act, hook):
        act = act.clone()
        act[:, :, 2] = act.mean(0, keepdim=True)[:, :, 2]
        return act

    def add(act, hook):
        act = act.clone()
        act[:, 2:] += steer * 3.0
        return act

    def scale(act, hook):
        return act * 0.5

    hooks = {"zero": ("blocks.0.hook_attn_out", zero), "mean": ("blocks.1.attn.hook_z", mean)}
    hooks |= {"steer": ("blocks.0.hook_resid_post", add), "scale": ("blocks.1.mlp.hook_post", scale)}
    return hooks[kind]


@pytest.mark.parametrize("kind", ["zero", "mean", "steer", "scale"])
def test_ablation_and_steering_equal_run_with_hooks(model, kind):
    tokens = rand_tokens(3, 6)
    steer = torch.randn(32, generator=torch.Generator().manual_seed(9))
    out = execute(model, _ablation_graph(kind, tokens, steer))
    expected = model.run_with_hooks(tokens, fwd_hooks=[_ablation_hook(kind, steer)])
    exact(out["logits"], expected)
    assert not torch.allclose(expected, model(tokens), atol=1e-5)


def test_logits_read_before_and_after_a_write(model):
    tokens = rand_tokens(2, 5)
    b = Builder()
    run = b.run(tokens)
    b.save(b(ir.Read, run, "logits"), "before")
    b(ir.Write, run, "logits", 100.0, (SliceItem(), -1, 5))
    b.save(b(ir.Read, run, "logits"), "after")
    out = execute(model, b.graph())
    logits = model(tokens)
    exact(out["before"], logits)
    logits[:, -1, 5] = 100.0
    exact(out["after"], logits)


def test_stop_early_skips_later_blocks_and_gives_the_same_values(model):
    tokens = rand_tokens(2, 6)
    hooks = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    b = Builder()
    run = b.run(tokens)
    for h in hooks:
        b.save(b(ir.Read, run, h), h)
    b(ir.Write, run, "blocks.2.hook_resid_pre", 0.0)  # after every read: cannot change what they see
    graph = b.graph()
    (group,) = make_plan(model, check(model, graph)).steps
    assert isinstance(group, RunGroup) and group.stop_at_layer == 2
    with PassCounter(model, "blocks.2.hook_resid_pre") as later:
        model.add_hook("ln_final.hook_normalized", later._count)
        out = execute(model, graph)
    assert later.calls == 0
    _, cache = model.run_with_cache(tokens, names_filter=hooks)
    for h in hooks:
        exact(out[h], cache[h])
    # the control: reading the logits needs the whole pass
    b.save(b(ir.Read, run, "logits"), "logits")
    with PassCounter(model, "blocks.2.hook_resid_pre") as later:
        execute(model, b.graph())
    assert later.calls == 1


def test_batched_independent_runs_equal_separate_runs(model):
    """Independent runs of equal length share one forward pass.

    Batching is not bit-exact: a run alone and the same rows inside a bigger batch may take
    different matmul kernels (seen: up to ~1e-7 on these models), hence allclose(1e-6).
    """
    b = Builder()
    hooks = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "blocks.2.attn.hook_z", "logits"]
    for i, shape in enumerate([(2, 6), (1, 6), (3, 6), (2, 5)]):
        run = b.run(rand_tokens(*shape, seed=10 + i))
        if i == 1:  # an intervention inside the batch acts on its own rows only
            b(ir.Write, run, "blocks.1.hook_resid_pre", 0.0, (SliceItem(), 2))
        for h in hooks:
            b.save(b(ir.Read, run, h), f"{i}:{h}")
    graph = b.graph()
    groups = make_plan(model, check(model, graph)).steps
    assert sorted(len(g.members) for g in groups) == [1, 3]  # type: ignore[union-attr]
    with PassCounter(model) as batched_passes:
        batched = execute(model, graph)
    with PassCounter(model) as separate_passes:
        separate = execute(model, graph, batch_runs=False)
    assert (batched_passes.calls, separate_passes.calls) == (2, 4)
    for name in separate:
        torch.testing.assert_close(batched[name], separate[name], rtol=0, atol=1e-6)
    # and the separate runs are the plain model
    tokens = rand_tokens(2, 6, seed=10)
    _, cache = model.run_with_cache(tokens, names_filter=hooks[:-1])
    exact(separate["0:blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"])


def test_code_hook_runs_when_allowed(model):
    tokens = rand_tokens(2, 6)
    hook = "blocks.0.hook_resid_post"

    def zero_first_position(act, hook):
        act[:, 0] = 0.0  # in place, returns None: the executor cloned first

    b = Builder()
    run = b.run(tokens)
    b.save(b(ir.Read, run, hook), "before")
    b(ir.CodeHook, run, hook, cloudpickle.dumps(lambda act, hook: act * 2.0))
    b(ir.CodeHook, run, hook, cloudpickle.dumps(zero_first_position))
    b.save(b(ir.Read, run, hook), "after")
    b.save(b(ir.Read, run, "logits"), "logits")
    out = execute(model, b.graph(), ir.Limits(allow_code=True))

    def by_hand(act, hook):
        act = act * 2.0
        act[:, 0] = 0.0
        return act

    _, cache = model.run_with_cache(tokens, names_filter=hook)
    exact(out["before"], cache[hook])
    exact(out["logits"], model.run_with_hooks(tokens, fwd_hooks=[(hook, by_hand)]))
    exact(out["after"], by_hand(cache[hook].clone(), None))


def test_text_runs_are_tokenized_and_padded():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<bos>", "<unk>", "the", "cat", "sat", "on", "mat", "dog"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", unk_token="<unk>"
    )
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=len(words), seed=0
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer).eval()
    texts = ("the cat sat on the mat", "the dog")
    b = Builder()
    run = b(ir.Run, text=texts, prepend_bos=True).node
    b.save(b(ir.Read, run, "logits"), "logits")
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]])
    masked = b(ir.Run, text=texts, prepend_bos=True, attention_mask=b(ir.Constant, mask)).node
    b.save(b(ir.Read, masked, "logits"), "explicit_mask")
    out = execute(model, b.graph())
    expected = model(list(texts), prepend_bos=True)  # padded right, with the attention mask
    exact(out["logits"], expected)
    exact(out["explicit_mask"], expected)
    assert validate(MODELS["gpt2"], b.graph())[0].reason.startswith("this model has no tokenizer")


# ------------------------------------------------------------------------------------ validation
def _errors(model: HookedTransformer, build, limits: ir.Limits) -> list[ir.GraphError]:
    b = Builder()
    build(b, b.run(rand_tokens(2, 6)))
    return validate(model, b.graph(), limits)


def _one_error(errors: list[ir.GraphError], node_id: int | None, *fragments: str) -> None:
    assert len(errors) == 1, errors
    (e,) = errors
    assert e.node_id == node_id, e
    for fragment in fragments:
        assert fragment in e.reason, e


CASES = {
    # name: (graph body after `run` = node 1, node id of the error, fragments of the reason, limits)
    "unknown hook": (
        lambda b, r: b(ir.Read, r, "blocks.0.hook_resid_psot"),
        2, ["unknown hook 'blocks.0.hook_resid_psot'", "did you mean", "'blocks.0.hook_resid_post'"], None,
    ),
    "switched-off hook": (lambda b, r: b(ir.Read, r, "blocks.0.attn.hook_result"), 2, ["set_use_attn_result"], None),
    "bad weight name": (lambda b, r: b(ir.Weight, "W_QQ"), 2, ["unknown weight 'W_QQ'", "did you mean 'W_Q'"], None),
    "weight layer out of range": (lambda b, r: b(ir.Weight, "blocks.7.attn.W_O"), 2, ["layer 7 is out of range"], None),
    "index out of range": (
        lambda b, r: b(ir.Index, b(ir.Read, r, "blocks.0.hook_resid_post"), (0, 99)),
        3, ["index 99 is out of range for dim 1 of size 6"], None,
    ),
    "index tensor out of range": (
        lambda b, r: b(ir.Index, b(ir.Read, r, "logits"), (ELLIPSIS, b(ir.Constant, torch.tensor([3, 97])))),
        4, ["index 97 is out of range for dim 2 of size 97"], None,
    ),
    "shape mismatch in write": (
        lambda b, r: b(ir.Write, r, "blocks.0.hook_resid_pre", b(ir.Constant, torch.zeros(5)), (SliceItem(), -1)),
        3, ["shape [5] does not fit the indexed region [2, 32]"], None,
    ),
    "write depends on a later hook": (
        lambda b, r: b(ir.Write, r, "blocks.0.hook_resid_post", b(ir.Read, r, "blocks.1.hook_resid_post")),
        3, ["depends on blocks.1.hook_resid_post (node 2)", "after blocks.0.hook_resid_post"], None,
    ),
    "code hook without permission": (
        lambda b, r: b(ir.CodeHook, r, "blocks.0.hook_resid_post", cloudpickle.dumps(lambda a, hook: a)),
        2, ["code hooks are not allowed"], None,
    ),
    "too many tokens": (lambda b, r: None, 1, ["12 tokens is more than the limit of 10"], ir.Limits(max_tokens=10)),
    "result too large": (
        lambda b, r: b.save(b(ir.Read, r, "blocks.0.hook_resid_post"), "x"),
        3, ["1536 bytes, more than the limit of 1000"], ir.Limits(max_result_bytes=1000),
    ),
    "duplicate save names": (
        lambda b, r: [b.save(b(ir.Read, r, "logits"), "x"), b.save(b(ir.Read, r, "logits"), "x")],
        5, ["duplicate save name 'x' (also node 3)"], None,
    ),
    "index of a run": (lambda b, r: b(ir.Index, Ref(r), (0,)), 2, ["node 1, a Run, which has no tensor value"], None),
    "read of a non-run": (lambda b, r: b(ir.Read, 0, "logits"), 2, ["must refer to a Run; node 0 is a Constant"], None),
    "bad sweep activation": (
        lambda b, r: b(ir.Sweep, r, r, "resid_pree", ("layer",), (ir.SweepLogits(10), ir.Reduce(11, "sum", Ref(10))), 10, 11),
        2, ["'resid_pree' at layer 0", "unknown hook"], None,
    ),
    "metric not a scalar": (
        lambda b, r: b(ir.Sweep, r, r, "resid_pre", ("layer",), (ir.SweepLogits(10),), 10, 10),
        10, ["a sweep metric must be a scalar"], None,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_validation_names_the_node_and_the_reason(case):
    build, node_id, fragments, limits = CASES[case]
    _one_error(_errors(MODELS["gpt2"], build, limits or ir.Limits()), node_id, *fragments)


def test_cross_run_cycle_is_refused():
    b = Builder()
    r1, r2 = b.run(rand_tokens(1, 4)), b.run(rand_tokens(1, 4, seed=2))
    b(ir.Write, r1, "blocks.0.hook_resid_pre", b(ir.Read, r2, "blocks.1.hook_resid_post"))
    b(ir.Write, r2, "blocks.0.hook_resid_pre", b(ir.Read, r1, "blocks.1.hook_resid_post"))
    errors = validate(MODELS["gpt2"], b.graph())
    assert {e.node_id for e in errors} == {5, 7}
    assert all("cross-run cycle" in e.reason for e in errors)


def test_rotary_model_has_no_W_pos_and_gqa_k_has_kv_heads():
    model = MODELS["llama_gqa"]
    b = Builder()
    run = b.run(rand_tokens(1, 4))
    b(ir.Weight, "W_pos")
    b(ir.Write, run, "blocks.0.attn.hook_k", 0.0, (SliceItem(), SliceItem(), 3))  # only 2 key/value heads
    errors = validate(model, b.graph())
    assert [(e.node_id, e.field) for e in errors] == [(2, "name"), (3, "index[2]")]
    assert "rotary" in errors[0].reason and "size 2" in errors[1].reason


def test_execute_refuses_an_invalid_graph_before_any_forward_pass():
    model = MODELS["gpt2"]
    b = Builder()
    run = b.run(rand_tokens(2, 6))
    b.save(b(ir.Read, run, "logits"), "ok")
    b(ir.Read, run, "blocks.9.hook_resid_post")
    b(ir.Weight, "W_nope")
    with PassCounter(model) as passes, pytest.raises(ir.GraphValidationError) as info:
        execute(model, b.graph())
    assert passes.calls == 0
    assert [e.node_id for e in info.value.errors] == [4, 5]
    assert "node 4" in str(info.value) and "node 5" in str(info.value)


# ------------------------------------------------------------------------------------ sweeps
def _sweep_model(**overrides) -> HookedTransformer:
    # A large init so every patch moves the metric (as in test_patching.py).
    cfg = dict(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=50, act_fn="gelu")
    return HookedTransformer(
        HookedTransformerConfig(**{**cfg, "initializer_range": 0.4, "seed": 0, **overrides})
    ).eval()


def _sweep_graph(
    clean: torch.Tensor, corrupted: torch.Tensor, activation: str, axes: tuple[str, ...]
) -> ir.Graph:
    b = Builder()
    clean_run, corrupted_run = b.run(clean), b.run(corrupted)
    scale = b(ir.Constant, wire(torch.tensor(2.0)))  # an outer node used inside the metric
    metric = (
        ir.SweepLogits(100),
        ir.Index(101, Ref(100), (SliceItem(), -1, 7)),
        ir.Index(102, Ref(100), (SliceItem(), -1, 3)),
        ir.Binary(103, "sub", Ref(101), Ref(102)),
        ir.Reduce(104, "mean", Ref(103)),
        ir.Binary(105, "mul", Ref(104), scale),
    )
    grid = b(ir.Sweep, corrupted_run, clean_run, activation, axes, metric, 100, 105)
    b.save(grid, "grid")
    return b.graph()


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 7] - logits[:, -1, 3]).mean() * 2.0


@pytest.mark.parametrize(
    ("activation", "axes", "helper", "overrides"),
    [
        ("resid_pre", ("layer", "pos"), patching.get_act_patch_resid_pre, {}),
        ("z", ("layer", "head"), patching.get_act_patch_attn_head_out_all_pos, {}),
        ("v", ("layer", "pos", "head"), patching.get_act_patch_attn_head_v_by_pos,
         dict(n_key_value_heads=2, positional_embedding_type="rotary", normalization_type="RMS", gated_mlp=True)),
    ],
)  # fmt: skip
def test_sweep_grid_equals_the_patching_helpers(activation, axes, helper, overrides):
    model = _sweep_model(**overrides)
    gen = torch.Generator().manual_seed(1)
    clean, corrupted = (
        torch.randint(0, 50, (2, 4), generator=gen),
        torch.randint(0, 50, (2, 4), generator=gen),
    )
    calls: list[tuple[int, int]] = []
    out = execute(
        model, _sweep_graph(clean, corrupted, activation, axes), progress=lambda d, t: calls.append((d, t))
    )
    # Cache only the patched hooks, as the executor does: caching a pattern would switch the
    # clean run's attention from the fused kernel to the explicit one (equal only to ~1e-7).
    hooks = [get_act_name(activation, layer) for layer in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(clean, names_filter=hooks, return_cache_object=False)
    expected = helper(model, corrupted, cache, _metric)
    assert out["grid"].shape == expected.shape
    torch.testing.assert_close(out["grid"], expected, rtol=0, atol=1e-6)  # exact today
    assert expected.abs().amax() > 1e-3  # the patches do something
    total = 1 + expected.numel()  # the clean pass, then one pass per cell
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_sweep_refuses_a_corrupted_run_with_writes():
    model = _sweep_model()
    graph = _sweep_graph(rand_tokens(1, 4) % 50, rand_tokens(1, 4, seed=3) % 50, "resid_pre", ("layer",))
    write = ir.Write(len(graph.nodes), 3, "blocks.0.hook_resid_pre", 0.0)
    errors = validate(model, ir.Graph((*graph.nodes, write)))
    _one_error(errors, 5, "the corrupted run has writes or code hooks (nodes [7])")


def test_final_norm_weights_travel_where_the_norm_has_them():
    """``ln_final.w`` / ``ln_final.b`` (the logit lens's norm, re-applied by a remote client)."""
    gpt2, llama = MODELS["gpt2"], MODELS["llama_gqa"]
    graph = ir.Graph(
        (
            ir.Weight(0, "ln_final.w"),
            ir.Save(1, Ref(0), "w"),
            ir.Weight(2, "ln_final.b"),
            ir.Save(3, Ref(2), "b"),
        )
    )
    out = execute(gpt2, graph, ir.Limits())
    exact(out["w"], gpt2.ln_final.w.detach())
    exact(out["b"], gpt2.ln_final.b.detach())
    (error,) = validate(llama, graph)  # RMSNorm: a scale, no bias
    assert error.node_id == 2 and "final norm (RMS) has no b" in error.reason


def test_validation_runs_the_structural_check_once(monkeypatch):
    """A graph the codec checked (or a worker decoded trusted) skips the structural pass; one built
    in process gets it, with the structural errors only."""
    import importlib

    from telelens.protos import codec

    validate_module = importlib.import_module("telelens.core.graph.validate")  # the package shadows it

    b = Builder()
    b.save(b(ir.Read, b.run(rand_tokens(1, 4)), "logits"), "x")
    graph = b.graph()
    calls = []
    real = validate_module.check_structure
    monkeypatch.setattr(validate_module, "check_structure", lambda g, lim: calls.append(g) or real(g, lim))
    wire = codec.decode_graph(codec.graph_to_bytes(graph), trusted=True)
    assert validate(MODELS["gpt2"], wire) == [] and calls == []
    assert validate(MODELS["gpt2"], graph) == [] and calls == [graph]
    assert validate(MODELS["gpt2"], graph) == [] and calls == [graph]  # remembered
    bad = ir.Graph((*graph.nodes, ir.Read(4, 0, "blocks.99.hook_resid_post")))  # node 0: a Constant
    (error,) = validate(MODELS["gpt2"], bad)
    assert (error.node_id, error.field) == (4, "run") and "must refer to a Run" in error.reason
