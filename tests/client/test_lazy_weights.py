"""Weight attributes of a remote model are lazy: probes transfer nothing, use transfers once.

SAELens's ``ActivationsStore`` probes ``hasattr(model, "W_E")``; for SmolLM2 that used to download
the whole embedding. Counted here by the graphs the in-process transport executes.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import numpy as np
import pytest
import torch
from in_process_remote import in_process_remote
from tiny_models import GPT2, tiny_model

from telelens.client.lazy_weight import LazyWeight
from telelens.client.remote import RemoteModel
from telelens.lens.factored_matrix import FactoredMatrix


@pytest.fixture
def local() -> Any:
    return tiny_model(GPT2, norm_noise=0.1)


@pytest.fixture
def remote(local: Any) -> RemoteModel:
    return in_process_remote(local)


def _runs(remote: RemoteModel) -> int:
    return len(remote.transport.graphs)  # type: ignore[attr-defined]


def test_probes_transfer_nothing(remote: Any, local: Any) -> None:
    assert hasattr(remote, "W_E") and hasattr(remote, "W_U") and hasattr(remote, "W_pos")
    W_E = getattr(remote, "W_E")  # noqa: B009
    assert isinstance(W_E, torch.Tensor) and isinstance(W_E, LazyWeight)
    assert W_E.shape == local.W_E.shape and W_E.dtype == local.W_E.dtype and W_E.device.type == "cpu"
    assert W_E.ndim == 2 and len(W_E) == local.cfg.d_vocab and W_E.size(-1) == local.cfg.d_model
    assert W_E.numel() == local.W_E.numel() and W_E.is_floating_point() and not W_E.requires_grad
    W_O = remote.blocks[1].attn.W_O
    assert W_O.shape == local.blocks[1].attn.W_O.shape
    assert remote.W_O.shape == (local.cfg.n_layers, local.cfg.n_heads, local.cfg.d_head, local.cfg.d_model)
    assert _runs(remote) == 0


def test_first_use_transfers_once(remote: Any, local: Any) -> None:
    W_E = remote.W_E
    assert torch.equal(W_E, local.W_E.detach())
    assert _runs(remote) == 1
    assert torch.equal(W_E + 1, local.W_E.detach() + 1)
    assert not isinstance(W_E + 1, LazyWeight)
    assert not isinstance(remote.W_E, LazyWeight)  # cached: the tensor itself from now on
    assert _runs(remote) == 1
    remote.W_O  # noqa: B018 (a probe)
    assert _runs(remote) == 1
    assert torch.equal(remote.blocks[2].attn.W_O, local.blocks[2].attn.W_O.detach())
    assert _runs(remote) == 2


@torch.no_grad()
def test_every_use_gives_the_local_numbers(remote: Any, local: Any) -> None:
    W_E, W_U, W_pos = remote.W_E, remote.W_U, remote.W_pos
    lW_E, lW_U, lW_pos = local.W_E.detach(), local.W_U.detach(), local.W_pos.detach()
    assert np.array_equal(W_E.numpy(), lW_E.numpy()) and np.array_equal(np.asarray(W_U), lW_U.numpy())
    assert W_pos.tolist() == lW_pos.tolist() and W_E[3, 4].item() == lW_E[3, 4].item()
    assert float(W_E[0, 1]) == float(lW_E[0, 1]) and f"{W_E[0, 1]:.4f}" == f"{lW_E[0, 1]:.4f}"
    assert torch.equal(W_E[[1, 2]], lW_E[[1, 2]]) and torch.equal(W_E.T, lW_E.T)
    assert torch.equal(W_E @ W_U, lW_E @ lW_U) and torch.equal(torch.cat([W_E, W_pos]), local.W_E_pos)
    assert torch.equal(remote.W_E_pos, local.W_E_pos)
    assert torch.equal(W_E.to(torch.float64), lW_E.to(torch.float64)) and torch.equal(W_E.to("cpu"), lW_E)
    assert type(W_E.to("cpu")) is torch.Tensor and type(W_E.clone()) is torch.Tensor
    assert repr(remote.W_U) == repr(lW_U) and str(remote.b_U) == str(local.b_U.detach())
    assert torch.equal(pickle.loads(pickle.dumps(remote.W_in)), local.W_in.detach())
    assert torch.equal(copy.deepcopy(remote.W_out), local.W_out.detach())
    for name in ("QK", "OV"):
        got, ref = getattr(remote, name), getattr(local, name)
        assert isinstance(got, FactoredMatrix) and torch.equal(got.AB, ref.AB.detach()), name
    fm = FactoredMatrix(remote.blocks[0].attn.W_V[2], remote.blocks[0].attn.W_O[2])
    ref_fm = FactoredMatrix(local.blocks[0].attn.W_V[2], local.blocks[0].attn.W_O[2])
    assert torch.equal(fm.AB, ref_fm.AB.detach())
    for layer in range(local.cfg.n_layers + 1):
        assert torch.equal(remote.accumulated_bias(layer), local.accumulated_bias(layer))
