"""Code hook payloads: captured models and caches travel as references, the rest is refused here."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import torch
from in_process_remote import in_process_remote
from tiny_models import GPT2, tiny_model

from telelens.lens.activation_cache import ActivationCache
from telelens.trace import code_payload
from telelens.trace.code_payload import UntransferableCodeError


@pytest.fixture(scope="module")
def local() -> Any:
    return tiny_model(GPT2, norm_noise=0.1)


def test_models_and_caches_become_the_executors(local: Any) -> None:
    remote: Any = in_process_remote(local)
    _, cache = remote.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter="blocks.0.hook_resid_post")
    flat = ActivationCache({"x": torch.ones(3)}, remote, has_batch_dim=False)

    def hook(act: torch.Tensor, hook: Any) -> Any:
        return remote, cache, flat

    payload = code_payload.dumps(hook)
    assert len(payload) < 10_000  # neither the model nor its connection is in it
    model, got, got_flat = code_payload.loads(payload, local)(None, None)
    assert model is local
    assert isinstance(got, ActivationCache) and got.model is local and got.has_batch_dim
    assert torch.equal(got["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])
    assert got_flat.model is local and not got_flat.has_batch_dim
    # a lazy weight travels as its name: the executor's own tensor
    W_U = remote.W_U
    payload = code_payload.dumps(lambda: W_U)
    assert len(payload) < W_U.numel() * 4 and len(remote.transport.graphs) == 1  # only the cache's run
    assert torch.equal(code_payload.loads(payload, local)(), local.W_U)


def test_a_local_model_is_not_pickled(local: Any) -> None:
    def hook(act: torch.Tensor, hook: Any) -> Any:
        return local

    assert len(code_payload.dumps(hook)) < 5_000
    assert code_payload.loads(code_payload.dumps(hook), local)(None, None) is local


def test_what_cannot_travel_is_refused_naming_the_variable() -> None:
    lock = threading.Lock()

    def with_lock(act: torch.Tensor, hook: Any) -> torch.Tensor:
        with lock:
            return act

    with pytest.raises(UntransferableCodeError, match=r"variable 'lock' is a _thread\.lock"):
        code_payload.dumps(with_lock)
    with socket.socket() as sock, open(__file__) as source:

        def with_socket(act: torch.Tensor, hook: Any) -> torch.Tensor:
            sock.getsockname()
            return act

        def with_file(act: torch.Tensor, hook: Any, f: Any = source) -> torch.Tensor:
            return act

        with pytest.raises(UntransferableCodeError, match=r"variable 'sock' is a socket\.socket"):
            code_payload.dumps(with_socket)
        with pytest.raises(UntransferableCodeError, match=r"default 'f' is a _io\.TextIOWrapper.*open file"):
            code_payload.dumps(with_file)
    numbers = (i for i in range(3))

    def with_generator(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act * next(numbers)

    with pytest.raises(UntransferableCodeError, match=r"variable 'numbers' is a builtins\.generator"):
        code_payload.dumps(with_generator)
    assert issubclass(UntransferableCodeError, TypeError)


@torch.no_grad()
def test_local_trace_code_hook_capturing_the_cache(local: Any) -> None:
    """``model.trace()`` with a code hook reading a local cache gives run_with_hooks's numbers."""
    clean, corrupt = torch.tensor([[1, 5, 9, 12]]), torch.tensor([[1, 7, 9, 3]])
    _, clean_cache = local.run_with_cache(clean)

    def patch_hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act[:, 1] = clean_cache[hook.name][:, 1]
        return act

    name = "blocks.1.hook_resid_pre"
    with local.trace(allow_code=True) as t:
        run = t.run(corrupt)
        t.code_hook(run, name, patch_hook)
        logits = t.save(run.logits)
    assert torch.equal(logits.value, local.run_with_hooks(corrupt, fwd_hooks=[(name, patch_hook)]))
