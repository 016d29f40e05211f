"""Same code, same numbers: TransformerLens snippets, unchanged, on SmolLM2 in-process and served.

Each snippet is one function written as TransformerLens documents it; the only difference
between the two runs is the model: ``HookedTransformer.from_pretrained("smollm2-135m")`` or
``telelens.connect(url, model="smollm2-135m", allow_code=True)`` (a server that serves
``from_pretrained``, weights processed, and lets this key send code).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import telelens

pytestmark = pytest.mark.slow

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"


@pytest.fixture(scope="module")
def server(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    from telelens.server._private.auth import add_key
    from telelens.server.app import run_server
    from telelens.server.config import ServeConfig

    base = tmp_path_factory.mktemp("same-code")
    key = add_key(base / "keys.yaml", "researcher", allow_code=True)
    config = ServeConfig.for_model(
        "smollm2-135m", port=0, num_cpus=1, keys_file=str(base / "keys.yaml"), allow_code=True,
        data_dir=str(base / "data"),
    )  # fmt: skip
    with run_server(config) as handle:
        yield key, handle


@pytest.fixture(scope="module")
def remote(server: tuple[str, Any]) -> Iterator[Any]:
    key, handle = server
    url = f"grpc://{handle.address}"
    with telelens.connect(url, model="smollm2-135m", api_key=key, allow_code=True, progress=False) as model:
        yield model


@pytest.fixture(scope="module")
def local() -> Any:
    from telelens import HookedTransformer

    return HookedTransformer.from_pretrained("smollm2-135m", device="cpu")


# ------------------------------------------------------------------------------------ snippets
def patching_loop(model: Any) -> torch.Tensor:
    """Activation patching with a Python hook that reads the clean cache."""
    clean_tokens, corrupt_tokens = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    _, clean_cache = model.run_with_cache(clean_tokens)

    def patch_residual(resid: torch.Tensor, hook: Any) -> torch.Tensor:
        resid[:, -5] = clean_cache[hook.name][:, -5]  # the second name (" John" / " Mary")
        return resid

    diffs = []
    for layer in (0, 8, 16, 29):
        logits = model.run_with_hooks(
            corrupt_tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", patch_residual)]
        )
        diffs.append(logits[0, -1, mary] - logits[0, -1, john])
    return torch.stack(diffs)


def hooks_persist(model: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hooks added with ``add_hook`` stay until ``reset_hooks()``."""
    tokens = model.to_tokens(CLEAN)

    def ablate_head(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, 4] = 0.0
        return z

    clean = model(tokens)
    model.add_hook("blocks.5.attn.hook_z", ablate_head)
    hooked = model(tokens)
    model.reset_hooks()
    return clean, hooked, model(tokens)


def layer_norm_snippet(model: Any) -> torch.Tensor:
    """A block's norm applied to a cached residual reproduces the cached normalized input."""
    _, cache = model.run_with_cache(CLEAN, names_filter=lambda name: "blocks.3." in name)
    return model.blocks[3].ln2(cache["resid_mid", 3])


def direct_logit_attribution(model: Any) -> tuple[float, float]:
    """The decomposed residual times the logit-difference direction sums to the logit difference."""
    logits, cache = model.run_with_cache(CLEAN)
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    direction = model.tokens_to_residual_directions(mary) - model.tokens_to_residual_directions(john)
    parts = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False)
    return float((parts[:, 0] @ direction).sum().detach()), float(
        (logits[0, -1, mary] - logits[0, -1, john]).detach()
    )


def residual_at_layer(model: Any) -> torch.Tensor:
    """SAELens-style: the residual stream entering block 6, nothing after it computed."""
    _, cache = model.run_with_cache(CLEAN, names_filter="blocks.5.hook_resid_post", stop_at_layer=6)
    return cache["blocks.5.hook_resid_post"]


# ------------------------------------------------------------------------------------ tests
def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_patching_loop(remote: Any, local: Any) -> None:
    remote_diffs, local_diffs = patching_loop(remote), patching_loop(local)
    close(remote_diffs, local_diffs)
    assert local_diffs[0] > 0 > local_diffs[-1]  # the name matters early, not after the heads moved it


def test_hooks_persist(remote: Any, local: Any) -> None:
    for got, want in zip(hooks_persist(remote), hooks_persist(local), strict=True):
        close(got, want)
    clean, hooked, after_reset = hooks_persist(local)
    assert not torch.allclose(clean, hooked) and torch.equal(clean, after_reset)
    assert not remote.list_hooks() and not local.list_hooks()


def test_layer_norm_snippet(remote: Any, local: Any) -> None:
    got, want = layer_norm_snippet(remote), layer_norm_snippet(local)
    close(got, want)
    _, cache = local.run_with_cache(CLEAN, names_filter="blocks.3.ln2.hook_normalized")
    close(want, cache["blocks.3.ln2.hook_normalized"])


def test_direct_logit_attribution_adds_up(remote: Any, local: Any) -> None:
    (dla, diff), (local_dla, local_diff) = direct_logit_attribution(remote), direct_logit_attribution(local)
    assert abs(local_dla - local_diff) < 1e-3 * abs(local_diff), (local_dla, local_diff)
    assert abs(dla - local_dla) < 1e-3 and abs(diff - local_diff) < 1e-3


def test_stop_at_layer(remote: Any, local: Any) -> None:
    close(residual_at_layer(remote), residual_at_layer(local))


def test_probes_transfer_nothing(remote: Any) -> None:
    before = remote.transport.bytes_received
    assert hasattr(remote, "W_E") and hasattr(remote, "W_U")
    assert remote.W_E.shape == (remote.cfg.d_vocab, remote.cfg.d_model)
    assert remote.transport.bytes_received == before
