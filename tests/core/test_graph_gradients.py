"""Gradients as graph operations: Grad values equal torch autograd, backward hooks equal local
TransformerLens-style hooks, malformed gradient graphs are refused by name, and graphs without
gradients still run under inference mode."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, tiny_model

from telelens.core.graph import validate
from telelens.core.graph.local import LocalBackend
from telelens.protos import codec, ir
from telelens.trace import builders, ops
from telelens.trace.tracing import Tracer

HOOKS = (
    "hook_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.1.attn.hook_pattern",
    "blocks.1.attn.hook_z",
    "blocks.1.mlp.hook_post",
    "blocks.2.hook_resid_post",
)


@pytest.fixture(scope="module", params=["gpt2", "llama_gqa"])
def model(request: pytest.FixtureRequest) -> Any:
    return tiny_model(GPT2 if request.param == "gpt2" else LLAMA_GQA, norm_noise=0.1)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))


def _autograd(
    model: Any, tokens: torch.Tensor, hooks: tuple[str, ...], metric: Any
) -> dict[str, torch.Tensor]:
    """The reference: torch autograd through the model's own hooks."""
    acts: dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook: Any) -> None:
        t.retain_grad()
        acts[hook.name] = t

    with model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        logits = model(tokens)
    metric(logits).backward()
    grads = {h: acts[h].grad for h in hooks}
    return {h: g for h, g in grads.items() if g is not None}


def _metric(logits: Any) -> Any:
    return logits[0, -1, 5] - logits[1, -1, 7]


@pytest.mark.parametrize("params_need_grad", [True, False])
def test_grad_nodes_equal_torch_autograd(model, tokens, params_need_grad):
    want = _autograd(model, tokens, HOOKS, _metric)
    model.requires_grad_(params_need_grad)  # a worker's weights need none: activations become leaves
    try:
        with Tracer(LocalBackend(model)) as t:
            run = t.run(tokens)
            metric = _metric(run.logits)
            metric.backward()
            grads = {h: t.save(run[h].grad) for h in HOOKS}
            explicit = t.save(t.grad(metric, run[HOOKS[-1]]))
    finally:
        model.requires_grad_(True)
    for h in HOOKS:
        torch.testing.assert_close(grads[h].value, want[h], atol=1e-6, rtol=1e-5)
        assert not grads[h].value.requires_grad
    torch.testing.assert_close(explicit.value, want[HOOKS[-1]], atol=1e-6, rtol=1e-5)


def test_grads_of_one_metric_share_one_backward_pass(model, tokens, monkeypatch):
    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real(*a, **k))
    with Tracer(LocalBackend(model)) as t:
        run = t.run(tokens)
        loss = run.logits[:, -1].log_softmax(-1)[:, 3].sum()
        other = run.logits[0, -1, 4]
        a = [t.save(t.grad(loss, run[h])) for h in HOOKS]
        b = t.save(t.grad(other, run[HOOKS[0]]))
    assert len(calls) == 2  # one per metric
    assert a[0].value.shape == b.value.shape == (2, 7, model.cfg.d_model)


def test_run_with_cache_incl_bwd_equals_the_local_model(model, tokens):
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    got_loss, got = builders.run_with_cache(LocalBackend(model), tokens, return_type="loss", incl_bwd=True)
    assert list(got) == list(cache.keys())  # TransformerLens's names and order: hooks, then <hook>_grad
    assert any(k.endswith("_grad") for k in got)
    torch.testing.assert_close(got_loss, loss.detach(), atol=1e-6, rtol=1e-6)
    for k in got:
        torch.testing.assert_close(got[k], cache[k], atol=1e-6, rtol=1e-5)


def test_incl_bwd_needs_a_scalar_output(model, tokens):
    with pytest.raises(ValueError, match="return_type='loss'"):
        builders.run_with_cache(LocalBackend(model), tokens, incl_bwd=True)


BWD_HOOKS = [
    ("blocks.1.hook_resid_mid", ops.zero_ablate(pos=2)),
    ("blocks.1.attn.hook_z", ops.scale(0.5, head=1)),
    ("blocks.0.mlp.hook_post", ops.add(torch.ones(1) * 0.01, pos=1)),
]


def test_backward_hooks_equal_local_ones(model, tokens):
    """Declarative ops as backward hooks: locally TransformerLens hook functions on the gradient,
    in a graph GradWrite nodes; the gradients at earlier hooks change the same way."""
    _, plain = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    with model.hooks(bwd_hooks=BWD_HOOKS):
        _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    early = "blocks.0.hook_resid_post_grad"
    assert not torch.allclose(cache[early], plain[early])  # the hooks do change earlier gradients
    graph, _ = builders.build_run_with_cache_graph(
        tokens, None, LocalBackend(model).hook_names, return_type="loss", incl_bwd=True, bwd_hooks=BWD_HOOKS
    )
    assert sum(isinstance(n, ir.GradWrite) for n in graph.nodes) == 3
    assert not any(isinstance(n, ir.GradCodeHook) for n in graph.nodes)
    _, got = builders.run_with_cache(
        LocalBackend(model), tokens, return_type="loss", incl_bwd=True, bwd_hooks=BWD_HOOKS
    )
    for k in cache:
        torch.testing.assert_close(got[k], cache[k], atol=1e-6, rtol=1e-5)


def test_backward_hooks_that_read_the_gradient_run_as_code(model, tokens):
    hooks = [("blocks.1.hook_resid_pre", ops.clamp(-1e-3, 1e-3))]
    with pytest.raises(PermissionError, match="allow_code"):
        builders.run_with_cache(
            LocalBackend(model), tokens, return_type="loss", incl_bwd=True, bwd_hooks=hooks
        )
    with model.hooks(bwd_hooks=hooks):
        _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    _, got = builders.run_with_cache(
        LocalBackend(model), tokens, return_type="loss", incl_bwd=True, bwd_hooks=hooks, allow_code=True
    )
    torch.testing.assert_close(got["hook_embed_grad"], cache["hook_embed_grad"], atol=1e-6, rtol=1e-5)


def test_trace_backward_hook_assignment(model, tokens):
    hook = "blocks.1.hook_resid_pre"
    with Tracer(LocalBackend(model)) as t:
        run = t.run(tokens)
        _metric(run.logits).backward()
        run[hook].grad[:, 3] = 0.0
        at_hook = t.save(run[hook].grad)
        earlier = t.save(run["blocks.0.hook_resid_mid"].grad)

    def zero(g: torch.Tensor, hook: Any) -> torch.Tensor:
        g[:, 3] = 0.0
        return g

    grads: dict[str, torch.Tensor] = {}
    save = [
        (h, lambda g, hook: grads.__setitem__(hook.name, g.clone()))
        for h in (hook, "blocks.0.hook_resid_mid")
    ]
    with model.hooks(bwd_hooks=[(hook, zero), *save]):
        _metric(model(tokens)).backward()
    torch.testing.assert_close(at_hook.value, grads[hook], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(earlier.value, grads["blocks.0.hook_resid_mid"], atol=1e-6, rtol=1e-5)
    assert at_hook.value[:, 3].abs().sum() == 0


def test_grad_without_a_metric_fails_while_tracing(model, tokens):
    with pytest.raises(RuntimeError, match=r"metric\.backward\(\)"), Tracer(LocalBackend(model)) as t:
        t.save(t.run(tokens)["blocks.0.hook_resid_pre"].grad)


# ---------------------------------------------------------------------------------------- refusals
def _graph(*nodes: ir.Node) -> ir.Graph:
    return ir.Graph(
        nodes=(ir.Constant(0, torch.zeros((1, 4), dtype=torch.long)), ir.Run(1, tokens=ir.Ref(0)), *nodes)
    )


def _errors(model: Any, graph: ir.Graph) -> list[tuple[int | None, str, str]]:
    return [(e.node_id, e.field, e.reason) for e in validate(model, graph)]


def test_malformed_grad_graphs_are_refused_by_name(model):
    read = ir.Read(2, run=1, hook="blocks.0.hook_resid_pre")
    logits = ir.Read(3, run=1, hook="logits")
    scalar = ir.Reduce(4, op="sum", input=ir.Ref(3))
    cases = {
        "not a scalar": (_graph(read, logits, ir.Grad(5, of=ir.Ref(3), wrt=ir.Ref(2))), (5, "of", "scalar")),
        "wrt not a Read": (
            _graph(read, logits, scalar, ir.Grad(5, of=ir.Ref(4), wrt=ir.Ref(4))),
            (5, "wrt", "Read"),
        ),
        "other run": (
            _graph(
                ir.Run(2, tokens=ir.Ref(0)),
                ir.Read(3, run=2, hook="logits"),
                ir.Reduce(4, op="sum", input=ir.Ref(3)),
                ir.Read(5, run=1, hook="blocks.0.hook_resid_pre"),
                ir.Grad(6, of=ir.Ref(4), wrt=ir.Ref(5)),
            ),
            (6, "wrt", "not computed from run 1"),
        ),
        "second order": (
            _graph(
                read,
                logits,
                scalar,
                ir.Grad(5, of=ir.Ref(4), wrt=ir.Ref(2)),
                ir.Reduce(6, op="sum", input=ir.Ref(5)),
                ir.Grad(7, of=ir.Ref(6), wrt=ir.Ref(2)),
            ),
            (7, "of", "gradients of gradients"),
        ),
        "integer activation": (
            _graph(
                ir.Read(2, run=1, hook="blocks.0.hook_resid_pre"),
                ir.Constant(3, torch.tensor(1.0)),
                ir.Grad(4, of=ir.Ref(3), wrt=ir.Ref(0)),
            ),
            (4, "wrt", "Read"),
        ),
        "backward hook on logits": (
            _graph(read, logits, scalar, ir.GradWrite(5, run=1, hook="logits", value=0.0)),
            (5, "hook", "no backward hook"),
        ),
        "own gradient in a write": (
            _graph(
                read,
                logits,
                scalar,
                ir.Grad(5, of=ir.Ref(4), wrt=ir.Ref(2)),
                ir.Write(6, run=1, hook="blocks.2.hook_resid_pre", value=ir.Ref(5)),
            ),
            (6, "value", "gradient node 5"),
        ),
        "code not allowed": (
            _graph(ir.GradCodeHook(2, run=1, hook="blocks.0.hook_resid_pre", payload=b"x")),
            (2, "payload", "not allowed"),
        ),
    }
    for name, (graph, (node, field, words)) in cases.items():
        errors = _errors(model, graph)
        assert any(e[0] == node and e[1] == field and words in e[2] for e in errors), (name, errors)


def test_grad_nodes_survive_the_wire():
    graph = _graph(
        ir.Read(2, run=1, hook="blocks.0.hook_resid_pre"),
        ir.Read(3, run=1, hook="logits"),
        ir.Reduce(4, op="sum", input=ir.Ref(3)),
        ir.GradWrite(
            5, run=1, hook="blocks.0.hook_resid_pre", value=2.0, index=(0, ir.SliceItem(1, 3)), mode="mul"
        ),
        ir.GradCodeHook(6, run=1, hook="blocks.0.hook_resid_pre", payload=b"\x00code"),
        ir.Grad(7, of=ir.Ref(4), wrt=ir.Ref(2)),
        ir.Save(8, input=ir.Ref(7), name="g"),
    )
    back = codec.decode_graph(codec.encode_graph(graph))
    assert back.nodes[2:] == graph.nodes[2:]
    bad = ir.Graph(nodes=(*graph.nodes[:7], ir.Grad(9, of=ir.Ref(4), wrt=ir.Ref(1))))
    with pytest.raises(ir.GraphValidationError, match=r"node 9, wrt: .*Run"):
        codec.decode_graph(codec.encode_graph(bad))
    with pytest.raises(ir.GraphValidationError, match=r"node 9, of: refers to node 12"):
        codec.decode_graph(
            codec.encode_graph(ir.Graph(nodes=(*graph.nodes, ir.Grad(9, of=ir.Ref(12), wrt=ir.Ref(2)))))
        )


# ---------------------------------------------------------------------------------------- modes
def test_graphs_without_grad_still_run_under_inference_mode(model, tokens, monkeypatch):
    import sys

    execute_mod = sys.modules["telelens.core.graph.execute"]

    seen: list[bool] = []
    real = execute_mod._Executor.run

    def spy(self: Any) -> None:
        seen.append(torch.is_inference_mode_enabled())
        real(self)

    monkeypatch.setattr(execute_mod._Executor, "run", spy)
    builders.run_with_cache(LocalBackend(model), tokens, names_filter="blocks.0.hook_resid_pre")
    builders.run_with_cache(
        LocalBackend(model), tokens, return_type="loss", incl_bwd=True, names_filter="hook_embed"
    )
    assert seen == [True, False]


def test_only_the_differentiated_run_records_autograd(model, tokens):
    """Attribution-patching shape: a clean run (no autograd) and a corrupted run with gradients."""
    from telelens.core.graph.plan import RunGroup, make_plan
    from telelens.core.graph.validate import check

    with Tracer(LocalBackend(model)) as t:
        clean = t.run(tokens)
        corrupted = t.run(tokens.flip(0))
        metric = _metric(corrupted.logits) - _metric(clean.logits)
        metric.backward()
        hook = "blocks.1.hook_resid_pre"
        diff = t.save(((clean[hook] - corrupted[hook]) * corrupted[hook].grad).sum())
    assert diff.value.dim() == 0
    plan = make_plan(model, check(model, t.graph))
    assert plan.has_grad
    assert sorted(s.needs_grad for s in plan.steps if isinstance(s, RunGroup)) == [False, True]
