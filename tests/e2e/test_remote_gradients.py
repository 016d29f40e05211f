"""Gradients remotely: a real server (real Ray) computes them as graph operations and sends back only
the requested ones; the numbers equal the local HookedTransformer's (TransformerLens semantics)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from server_helpers import TinyServer, load_tiny_local

from telelens.client import RemoteModel, ops

ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(scope="module")
def remote(tiny_server: TinyServer) -> Iterator[RemoteModel]:
    with tiny_server.connect() as model:
        yield model


@pytest.fixture(scope="module")
def local(tiny_folder: Path) -> Any:
    return load_tiny_local(tiny_folder)


CLEAN = torch.tensor([[0, 5, 9, 14, 3, 22, 7, 40], [0, 8, 2, 61, 17, 4, 33, 12]])
CORRUPTED = torch.tensor([[0, 5, 9, 14, 3, 22, 7, 51], [0, 8, 2, 61, 17, 4, 33, 29]])
ANSWERS = torch.tensor([[10, 11], [20, 21]])  # [batch, (correct, wrong)]


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want.detach(), atol=ATOL, rtol=RTOL)


def test_run_with_cache_incl_bwd_equals_local(remote, local):
    loss, cache = local.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    got_loss, got = remote.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    assert list(got.keys()) == list(cache.keys())
    assert "blocks.0.attn.hook_pattern_grad" in got
    _close(got_loss, loss)
    for k in cache:
        _close(got[k], cache[k])


def _logit_diff(logits: Any) -> Any:
    rows = torch.arange(len(ANSWERS))
    correct = logits[rows, -1, ANSWERS[:, 0]]
    wrong = logits[rows, -1, ANSWERS[:, 1]]
    return (correct - wrong).mean()


def test_attribution_patching_equals_local(remote, local):
    """Neel Nanda's recipe: clean cache; corrupted cache and the corrupted gradients of a logit
    difference; attribution = (clean - corrupted) * grad, summed over d_model."""
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(local.cfg.n_layers)]
    local.reset_hooks()
    _, clean_cache = local.run_with_cache(CLEAN)
    corrupted: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    local.add_hook(lambda n: n in hooks, lambda t, hook: corrupted.__setitem__(hook.name, t.detach()), "fwd")
    local.add_hook(lambda n: n in hooks, lambda t, hook: grads.__setitem__(hook.name, t.detach()), "bwd")
    _logit_diff(local(CORRUPTED)).backward()
    local.reset_hooks()
    want = torch.stack(
        [((clean_cache[h] - corrupted[h]) * grads[h]).sum(-1) for h in hooks]
    )  # [layer, batch, pos]

    _, remote_clean = remote.run_with_cache(CLEAN, names_filter=hooks)
    with remote.trace() as t:
        run = t.run(CORRUPTED)
        _logit_diff(run.logits).backward()
        acts = {h: t.save(run[h]) for h in hooks}
        saved = {h: t.save(run[h].grad) for h in hooks}
    got = torch.stack([((remote_clean[h] - acts[h].value) * saved[h].value).sum(-1) for h in hooks])
    _close(got, want)
    # the same, computed on the worker: only the attribution travels
    with remote.trace() as t:
        clean, run = t.run(CLEAN), t.run(CORRUPTED)
        _logit_diff(run.logits).backward()
        on_worker = [t.save(((clean[h] - run[h]) * run[h].grad).sum(-1)) for h in hooks]
    _close(torch.stack([s.value for s in on_worker]), want)


def test_backward_hook_values_equal_local(remote, local):
    """A zero_ablate backward op on one layer changes the gradients at earlier hooks exactly as locally."""
    bwd = [("blocks.1.hook_resid_pre", ops.zero_ablate(pos=slice(2, 5)))]
    _, plain = local.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    with local.hooks(bwd_hooks=bwd):
        _, cache = local.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    early = "blocks.0.hook_resid_mid_grad"
    assert not torch.allclose(cache[early], plain[early])
    _, got = remote.run_with_cache(CLEAN, return_type="loss", incl_bwd=True, bwd_hooks=bwd)
    for k in cache:
        _close(got[k], cache[k])

    # a Python backward hook (code) gives the same numbers
    def halve(grad: torch.Tensor, hook: Any) -> torch.Tensor:
        return grad * 0.5

    with local.hooks(bwd_hooks=[("blocks.1.hook_resid_pre", halve)]):
        _, cache = local.run_with_cache(CLEAN, return_type="loss", incl_bwd=True)
    _, got = remote.run_with_cache(
        CLEAN,
        return_type="loss",
        incl_bwd=True,
        bwd_hooks=[("blocks.1.hook_resid_pre", halve)],
        allow_code=True,
    )
    _close(got[early], cache[early])


def test_run_with_hooks_accepts_backward_hooks(remote, local):
    bwd = [("blocks.0.hook_resid_post", ops.scale(0.0))]
    got = remote.run_with_hooks(CLEAN, return_type="loss", bwd_hooks=bwd)
    _close(got, local(CLEAN, return_type="loss"))
