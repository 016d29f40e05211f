"""``stop_at_layer`` / ``start_at_layer`` against a real server give the local numbers and errors.

SAELens's ``ActivationsStore`` calls ``run_with_cache(tokens, stop_at_layer=L, names_filter=...)``;
``start_at_layer`` resumes from a residual stream. Both travel as ordinary graphs (no wire change).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from server_helpers import TinyServer, load_tiny_local

from telelens.client import RemoteModel, ops

N_LAYERS = 2
TOKENS = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))
TOL: dict[str, Any] = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def remote(tiny_server: TinyServer) -> Iterator[RemoteModel]:
    with tiny_server.connect() as model:
        yield model


@pytest.fixture(scope="module")
def local(tiny_folder: Path) -> Any:
    return load_tiny_local(tiny_folder)


def assert_same_cache(local: Any, remote: Any) -> None:
    names = list(local.keys())
    assert list(remote.keys()) == names
    for name in names:
        torch.testing.assert_close(remote[name], local[name], **TOL)


@pytest.mark.parametrize("layer", [0, 1, -1, N_LAYERS])
def test_stop_at_layer(remote: RemoteModel, local: Any, layer: int) -> None:
    names = lambda name: "resid" in name or "hook_embed" in name  # noqa: E731 (SAELens passes such filters)
    want, want_cache = local.run_with_cache(TOKENS, stop_at_layer=layer, names_filter=names)
    got, got_cache = remote.run_with_cache(TOKENS, stop_at_layer=layer, names_filter=names)
    torch.testing.assert_close(got, want, **TOL)
    assert_same_cache(want_cache, got_cache)
    torch.testing.assert_close(remote(TOKENS, stop_at_layer=layer), local(TOKENS, stop_at_layer=layer), **TOL)


@pytest.mark.parametrize("layer", [0, 1, -1, N_LAYERS])
def test_start_at_layer(remote: RemoteModel, local: Any, layer: int) -> None:
    resid = local(TOKENS, stop_at_layer=layer)
    torch.testing.assert_close(remote(resid, start_at_layer=layer), local(resid, start_at_layer=layer), **TOL)
    want, want_cache = local.run_with_cache(resid, start_at_layer=layer)
    got, got_cache = remote.run_with_cache(resid, start_at_layer=layer)
    torch.testing.assert_close(got, want, **TOL)
    assert_same_cache(want_cache, got_cache)
    loss = remote(resid, start_at_layer=layer, return_type="loss", tokens=TOKENS)
    torch.testing.assert_close(
        loss, local(resid, start_at_layer=layer, return_type="loss", tokens=TOKENS), **TOL
    )

    def zero_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, 1] = 0
        return z

    hooked = remote.run_with_hooks(
        resid, start_at_layer=layer, fwd_hooks=[("blocks.1.attn.hook_z", ops.zero_ablate(head=1))]
    )
    want = local.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    torch.testing.assert_close(hooked, want, **TOL)


def test_start_at_layer_with_attention_mask(remote: RemoteModel, local: Any) -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    resid = local(TOKENS, attention_mask=mask, stop_at_layer=1)
    got = remote(resid, start_at_layer=1, attention_mask=mask)
    torch.testing.assert_close(got, local(resid, start_at_layer=1, attention_mask=mask), **TOL)


def test_bad_layers_fail_on_the_client(remote: RemoteModel) -> None:
    sent = remote.transport.bytes_received
    with pytest.raises(
        ValueError, match=f"stop_at_layer=3 is out of range for a model with {N_LAYERS} layers"
    ):
        remote.run_with_cache(TOKENS, stop_at_layer=3)
    with pytest.raises(ValueError, match="start_at_layer=-3 is out of range"):
        remote(torch.zeros(1, 4, 32), start_at_layer=-3)
    with pytest.raises(ValueError, match=r"input must be the residual stream \[batch, pos, d_model\]"):
        remote(TOKENS, start_at_layer=1)
    assert remote.transport.bytes_received == sent  # nothing was sent
