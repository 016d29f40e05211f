"""Remote hook management, written as TransformerLens documents it, against the local numbers.

The remote model runs in-process here (``tests/in_process_remote.py``: graphs run on its own copy
of the local model, by the executor a server uses); ``tests/e2e/test_remote_hook_snippets.py`` runs the
seed's snippets against a real server.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from in_process_remote import in_process_remote
from tiny_models import GPT2, tiny_model

from telelens.client import UnknownHookError, ops
from telelens.client.remote import RemoteModel
from telelens.client.remote_hooks import RemoteHookPoint
from telelens.protos import ir
from telelens.trace import builders

RESID = "blocks.1.hook_resid_pre"
Z = "blocks.0.attn.hook_z"


@pytest.fixture
def local() -> Any:
    model = tiny_model(GPT2, norm_noise=0.1)
    yield model
    model.reset_hooks(including_permanent=True)


@pytest.fixture
def remote() -> RemoteModel:
    return in_process_remote(tiny_model(GPT2, norm_noise=0.1))  # the same weights as ``local``: a copy


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.tensor([[1, 5, 9, 12, 4, 7], [3, 2, 8, 8, 1, 0]])


@torch.no_grad()
def test_hooks_persist_snippet(remote: Any, local: Any, tokens: torch.Tensor) -> None:
    """TransformerLens's "hooks persist" snippet, unchanged."""
    clean = remote(tokens)
    remote.add_hook(RESID, ops.zero_ablate())
    hooked = remote(tokens)
    assert not torch.equal(hooked, clean)
    local.add_hook(RESID, ops.zero_ablate())
    assert torch.equal(hooked, local(tokens))
    remote.reset_hooks()
    assert torch.equal(remote(tokens), clean)


@torch.no_grad()
def test_registered_hooks_apply_to_every_call(remote: Any, local: Any, tokens: torch.Tensor) -> None:
    for model in (remote, local):
        model.add_hook(Z, ops.zero_ablate(head=1))
    # run_with_cache sees the hooked activations
    _, cache = remote.run_with_cache(tokens, names_filter=[Z, RESID])
    _, ref = local.run_with_cache(tokens, names_filter=[Z, RESID])
    assert torch.equal(cache[Z], ref[Z]) and bool((cache[Z][:, :, 1] == 0).all())
    assert torch.equal(cache[RESID], ref[RESID])
    # run_with_hooks: the registered hooks first, then the call's
    call_hooks = [(Z, ops.scale(3.0)), (RESID, ops.add(torch.ones(local.cfg.d_model)))]
    assert torch.equal(
        remote.run_with_hooks(tokens, call_hooks), local.run_with_hooks(tokens, fwd_hooks=call_hooks)
    )
    loss = remote.run_with_hooks(tokens, return_type="loss")
    assert torch.equal(loss, local(tokens, return_type="loss"))
    # generate's steps
    got = remote.generate(tokens[:1, :3], max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False)
    assert torch.equal(
        got,
        local.generate(tokens[:1, :3], max_new_tokens=4, do_sample=False, verbose=False, stop_at_eos=False),
    )
    assert any(isinstance(n, ir.Write) for n in remote.transport.graphs[-1].nodes)  # the step had the hook
    # every run of a trace
    results = []
    for model in (remote, local):
        with model.trace() as t:
            a, b = t.run(tokens), t.run(tokens[:1])
            t.save(a[Z], "za")
            t.save(b.logits, "logits_b")
        results.append(t.result)
    assert results[0] is not None and results[1] is not None
    assert bool((results[0]["za"][:, :, 1] == 0).all())
    for name in ("za", "logits_b"):
        assert torch.equal(results[0][name], results[1][name]), name


@torch.no_grad()
def test_hooks_context_manager_and_perma_hooks(remote: Any, local: Any, tokens: torch.Tensor) -> None:
    clean = remote(tokens)
    remote.add_perma_hook(RESID, ops.scale(0.5))
    local.add_perma_hook(RESID, ops.scale(0.5))
    perma = remote(tokens)
    assert torch.equal(perma, local(tokens)) and not torch.equal(perma, clean)
    with remote.hooks(fwd_hooks=[(Z, ops.zero_ablate())]) as hooked:
        assert hooked is remote and remote.context_level == 1
        inside = remote(tokens)
        assert remote.hook_dict[Z].has_hooks(level=1)
    with local.hooks(fwd_hooks=[(Z, ops.zero_ablate())]):
        assert torch.equal(inside, local(tokens))
    assert remote.context_level == 0 and not remote.hook_dict[Z].has_hooks()
    assert torch.equal(remote(tokens), perma)  # the context's hook is gone, the permanent one stays
    remote.reset_hooks()
    assert torch.equal(remote(tokens), perma)  # reset_hooks keeps permanent hooks
    remote.reset_hooks(including_permanent=True)
    assert torch.equal(remote(tokens), clean)


@torch.no_grad()
def test_prepend_runs_first(remote: Any, local: Any, tokens: torch.Tensor) -> None:
    shift = torch.full((local.cfg.d_model,), 0.25)
    for model in (remote, local):
        model.add_hook(RESID, ops.scale(2.0))
        model.add_hook(RESID, ops.add(shift), prepend=True)  # (x + shift) * 2, not x * 2 + shift
    assert torch.equal(remote(tokens), local(tokens))
    handles = remote.hook_dict[RESID].fwd_hooks
    assert [type(h.user_hook).__name__ for h in handles] == ["Add", "Scale"]
    remote.reset_hooks()
    local.reset_hooks()
    for model in (remote, local):
        model.add_hook(RESID, ops.scale(2.0))
        model.add_hook(RESID, ops.add(shift))
    assert torch.equal(remote(tokens), local(tokens))


def test_hook_points_answer_as_transformerlens(remote: Any) -> None:
    point = remote.hook_dict[RESID]
    assert isinstance(point, RemoteHookPoint) and remote.hook_dict[RESID] is point
    assert not point.has_hooks() and point.fwd_hooks == [] and point.bwd_hooks == []
    assert RESID in repr(point) and point.layer() == 1
    op = ops.zero_ablate()
    remote.add_hook(lambda name: name.endswith("hook_resid_pre"), op)
    assert point.has_hooks() and point.has_hooks("fwd") and not point.has_hooks("bwd")
    assert not point.has_hooks(including_permanent=True, level=3)
    assert point.fwd_hooks[0].user_hook is op and not point.fwd_hooks[0].is_permanent
    assert "1 fwd" in repr(point)
    listed = remote.list_hooks()
    assert list(listed) == [n for n in remote.hook_names if n.endswith("hook_resid_pre")]
    assert remote.list_hooks(RESID)[RESID][0].user_hook is op
    assert remote.list_hooks(including_permanent=False) == listed
    assert remote.hook_points() == list(remote.hook_dict.values())
    remote.remove_all_hook_fns()
    assert remote.list_hooks() == {}
    point.ctx["seen"] = 1
    remote.reset_hooks()
    assert point.ctx == {}


def test_remove_hooks_follows_transformerlens_on_both_sides(remote: Any, local: Any) -> None:
    """TransformerLens 3.9: ``including_permanent=True`` removes every hook, whatever its level;
    otherwise only the non-permanent hooks of ``level`` go."""
    for model in (remote, local):
        point = model.hook_dict[RESID]
        point.add_hook(ops.scale(2.0), is_permanent=True)
        point.add_hook(ops.scale(3.0), level=1)
        point.add_hook(ops.scale(4.0), level=2)
        point.remove_hooks(level=1)
        assert [(h.is_permanent, h.context_level) for h in point.fwd_hooks] == [(True, None), (False, 2)]
        point.remove_hooks(including_permanent=True, level=1)
        assert point.fwd_hooks == [] and not point.has_hooks()
    with pytest.raises(ValueError, match="direction"):
        remote.hook_dict[RESID].remove_hooks("sideways")  # type: ignore[arg-type]


def test_unknown_names_and_bad_hooks_fail_at_add_time(remote: Any) -> None:
    with pytest.raises(UnknownHookError, match=r"did you mean blocks\.1\.hook_resid_pre"):
        remote.add_hook("blocks.1.hook_resid_pr", ops.zero_ablate())
    with pytest.raises(TypeError, match=r"an op from telelens\.trace\.ops"):
        remote.add_hook(RESID, 3.0)
    with pytest.raises(ValueError, match="dir"):
        remote.add_hook(RESID, ops.zero_ablate(), dir="sideways")  # type: ignore[arg-type]
    with pytest.raises(PermissionError, match=r"telelens.connect\(\.\.\., allow_code=True\)"):
        remote.add_hook(RESID, lambda act, hook: act * 2)
    assert remote.list_hooks() == {}


@torch.no_grad()
def test_python_hooks_with_allow_code(local: Any, tokens: torch.Tensor) -> None:
    remote: Any = in_process_remote(tiny_model(GPT2, norm_noise=0.1), allow_code=True)

    def double(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act * 2

    remote.add_hook(RESID, double)
    local.add_hook(RESID, double)
    assert torch.equal(remote(tokens), local(tokens))
    _, cache = remote.run_with_cache(tokens, names_filter=RESID)  # run_with_cache carries the code too
    assert torch.equal(cache[RESID], local.run_with_cache(tokens, names_filter=RESID)[1][RESID])
    # a call's own Python hooks need no allow_code=True on a model that allows code
    assert torch.equal(
        remote.run_with_hooks(tokens, [(Z, double)]), local.run_with_hooks(tokens, fwd_hooks=[(Z, double)])
    )
    remote.allow_code = False
    with pytest.raises(PermissionError):
        remote(tokens)  # the registered code is refused once code is off again


def test_backward_hooks_are_stored_and_passed_as_bwd_hooks(
    remote: Any, tokens: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    grad_op = ops.scale(0.0)
    remote.add_hook(RESID, grad_op, dir="bwd")
    assert remote.hook_dict[RESID].has_hooks("bwd") and not remote.hook_dict[RESID].has_hooks("fwd")
    seen: dict[str, Any] = {}
    build = builders.build_run_with_cache_graph

    def spy(*args: Any, bwd_hooks: Any = (), **kwargs: Any) -> Any:
        seen["bwd_hooks"] = list(bwd_hooks)
        return build(*args, bwd_hooks=bwd_hooks, **kwargs)

    monkeypatch.setattr(builders, "build_run_with_cache_graph", spy)
    call_op = ops.scale(2.0)
    _, cache = remote.run_with_cache(
        tokens, [RESID], return_type="loss", incl_bwd=True, bwd_hooks=[(Z, call_op)]
    )
    assert seen["bwd_hooks"] == [(RESID, grad_op), (Z, call_op)]  # registered first
    assert torch.count_nonzero(cache[RESID + "_grad"]) == 0  # the registered scale(0) acted on it
    remote.run_with_cache(tokens, [RESID])
    assert seen["bwd_hooks"] == [(RESID, grad_op)]  # passed along; no gradient asked for, nothing runs
    remote.reset_hooks(direction="fwd")
    assert remote.hook_dict[RESID].has_hooks("bwd")
    remote.reset_hooks(direction="bwd")
    assert not remote.hook_dict[RESID].has_hooks()


def test_registered_hooks_with_start_and_stop_at_layer(remote: Any, local: Any, tokens: torch.Tensor) -> None:
    """A registered hook at the entry point of ``start_at_layer`` sees the given residual (as locally);
    hooks before it never fire; with ``stop_at_layer`` hooks after the stop never fire."""
    resid = local(tokens, stop_at_layer=1).detach()
    hooks = [("blocks.1.hook_resid_pre", ops.scale(2.0)), ("blocks.0.hook_resid_post", ops.zero_ablate())]
    for name, op in hooks:
        remote.add_hook(name, op)
    with local.hooks(fwd_hooks=hooks):  # a local hook edits the activation in place: give each call a copy
        want_start = local(resid.clone(), start_at_layer=1)
        want_stop = local(tokens, stop_at_layer=1)
    assert torch.equal(remote(resid.clone(), start_at_layer=1), want_start)
    assert torch.equal(remote(tokens, stop_at_layer=1), want_stop)
    assert torch.equal(want_start, local(2 * resid, start_at_layer=1))  # the entry hook acted, once
