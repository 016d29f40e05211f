"""``ActivationCache`` and ``FactoredMatrix`` built with TransformerLens's constructor arguments."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from telelens.lens.activation_cache import ActivationCache
from telelens.lens.factored_matrix import FactoredMatrix


def test_activation_cache_takes_transformer_lens_arguments() -> None:
    model = SimpleNamespace(cfg=SimpleNamespace(n_layers=2))
    acts = {"blocks.0.hook_resid_pre": torch.randn(2, 3, 4)}
    cache = ActivationCache(cache_dict=acts, model=model, has_batch_dim=True)  # type: ignore[arg-type]
    assert torch.equal(cache["resid_pre", 0], acts["blocks.0.hook_resid_pre"])
    single = ActivationCache(acts, model, has_batch_dim=False)  # type: ignore[arg-type]
    assert not single.has_batch_dim


def test_factored_matrix_takes_transformer_lens_arguments() -> None:
    a, b = torch.randn(5, 3), torch.randn(3, 4)
    fm = FactoredMatrix(A=a, B=b)
    torch.testing.assert_close(fm.AB, a @ b)
