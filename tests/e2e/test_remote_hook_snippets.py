"""The seed's hook snippets against a real server (real Ray, loopback gRPC), with the local numbers.

- the patching loop: a Python hook reading ``clean_cache[hook.name]`` (a remote ActivationCache)
  runs on the worker with the worker's own model, and a hook capturing a lock is refused here;
- "hooks persist": ``add_hook`` -> every call hooked -> ``reset_hooks()`` -> clean again;
- ``hasattr(model, "W_E")`` transfers nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from server_helpers import TinyServer, load_tiny_local

from telelens.client import RemoteModel, ops
from telelens.trace.code_payload import UntransferableCodeError

CLEAN = torch.tensor([[0, 5, 17, 33, 8, 61, 2]])
CORRUPT = torch.tensor([[0, 5, 17, 40, 8, 61, 2]])
POS = 3


@pytest.fixture
def remote(tiny_server: TinyServer) -> Iterator[RemoteModel]:
    with tiny_server.connect() as model:
        yield model


@pytest.fixture(scope="module")
def local(tiny_folder: Path) -> Any:
    return load_tiny_local(tiny_folder)


def patching_loop(model: Any, **code: Any) -> list[torch.Tensor]:
    """The seed's activation-patching loop, as TransformerLens users write it."""
    _, clean_cache = model.run_with_cache(CLEAN)

    def patch_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, POS] = clean_cache[hook.name][:, POS]
        return act

    results = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        logits = model.run_with_hooks(CORRUPT, fwd_hooks=[(name, patch_hook)], **code)
        results.append(logits[0, -1])
    return results


@torch.no_grad()
def test_seed_patching_loop_gives_the_local_numbers(remote: Any, local: Any) -> None:
    got = patching_loop(remote, allow_code=True)
    ref = patching_loop(local)
    assert len(got) == local.cfg.n_layers
    for layer, (g, r) in enumerate(zip(got, ref, strict=True)):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6, msg=f"layer {layer}")
    # the patch does something: patching the changed position restores the clean logits' last row
    torch.testing.assert_close(got[0], remote(CLEAN)[0, -1], rtol=0, atol=1e-5)
    assert not torch.allclose(remote(CORRUPT)[0, -1], remote(CLEAN)[0, -1])


def test_a_hook_capturing_a_lock_is_refused_on_the_client(remote: Any) -> None:
    lock = threading.Lock()

    def locked_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        with lock:
            return act

    sent = remote.transport.bytes_received
    with pytest.raises(UntransferableCodeError, match=r"'locked_hook'.*variable 'lock' is a _thread\.lock"):
        remote.run_with_hooks(CORRUPT, fwd_hooks=[("blocks.0.hook_resid_pre", locked_hook)], allow_code=True)
    assert remote.transport.bytes_received == sent


@torch.no_grad()
def test_hooks_persist_snippet(remote: Any, local: Any) -> None:
    name = "blocks.1.hook_resid_pre"
    clean = remote(CLEAN)
    remote.add_hook(name, ops.zero_ablate())
    hooked = remote(CLEAN)
    assert not torch.equal(hooked, clean)
    with local.hooks(fwd_hooks=[(name, ops.zero_ablate())]):
        torch.testing.assert_close(hooked, local(CLEAN), rtol=0, atol=1e-6)
    _, cache = remote.run_with_cache(CLEAN, names_filter=name)
    assert bool((cache[name] == 0).all())
    remote.reset_hooks()
    assert torch.equal(remote(CLEAN), clean)
    # hooks() and a permanent hook
    remote.add_perma_hook(name, ops.scale(0.5))
    with remote.hooks(fwd_hooks=[("blocks.0.hook_resid_post", ops.zero_ablate(pos=POS))]):
        inside = remote(CLEAN)
    perma = remote(CLEAN)
    assert not torch.equal(inside, perma) and not torch.equal(perma, clean)
    remote.reset_hooks()
    assert torch.equal(remote(CLEAN), perma)
    remote.reset_hooks(including_permanent=True)
    assert torch.equal(remote(CLEAN), clean)


@torch.no_grad()
def test_registered_python_hook_with_allow_code(tiny_server: TinyServer, local: Any) -> None:
    with tiny_server.connect(allow_code=True) as model:
        _, clean_cache = model.run_with_cache(CLEAN, names_filter=lambda n: n.endswith("hook_resid_pre"))

        def patch_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            act[:, POS] = clean_cache[hook.name][:, POS]
            return act

        model.add_hook("blocks.1.hook_resid_pre", patch_hook)
        got = model(CORRUPT)
    _, local_cache = local.run_with_cache(CLEAN)

    def local_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, POS] = local_cache[hook.name][:, POS]
        return act

    ref = local.run_with_hooks(CORRUPT, fwd_hooks=[("blocks.1.hook_resid_pre", local_hook)])
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)


def test_weight_probes_transfer_nothing(remote: Any, local: Any) -> None:
    before = remote.transport.bytes_received
    assert hasattr(remote, "W_E") and hasattr(remote, "W_U")
    W_E = getattr(remote, "W_E")  # noqa: B009
    assert W_E.shape == local.W_E.shape and W_E.dtype == torch.float32 and W_E.device.type == "cpu"
    assert remote.blocks[1].attn.W_O.shape == local.blocks[1].attn.W_O.shape
    assert remote.transport.bytes_received == before
    assert torch.equal(W_E[:3], local.W_E[:3].detach())
    assert remote.transport.bytes_received == before + W_E.numel() * 4  # the embedding, once
    assert torch.equal(W_E @ remote.W_E.T, local.W_E.detach() @ local.W_E.detach().T)
    assert remote.transport.bytes_received == before + W_E.numel() * 4  # cached
