"""Activation patching helpers: every cell equals a hand-written run_with_hooks patch; TL shapes; GQA."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from telelens.core import patching
from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer

N_LAYERS, N_HEADS, POS = 2, 4, 4


def make_model(**overrides) -> HookedTransformer:
    # A large init so every patch moves the metric (the default 0.02 leaves attention ~uniform).
    kwargs: dict[str, Any] = dict(
        n_layers=N_LAYERS, d_model=16, n_ctx=16, d_head=4, n_heads=N_HEADS, d_mlp=32, d_vocab=50
    )
    kwargs.update(act_fn="gelu", initializer_range=0.4, seed=0)
    cfg = HookedTransformerConfig(**{**kwargs, **overrides})
    return HookedTransformer(cfg).eval()


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 7] - logits[:, -1, 3]).mean()


def make_setup(model: HookedTransformer) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    clean = torch.randint(0, 50, (2, POS), generator=gen)
    corrupted = torch.randint(0, 50, (2, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    return clean, corrupted, cache


def manual_patch(model, corrupted, cache, hook_name: str, where: tuple) -> float:
    """The reference: copy cache[hook_name][where] into the corrupted run with run_with_hooks."""

    def hook(act: torch.Tensor, hook) -> torch.Tensor:
        act = act.clone()
        act[where] = cache[hook_name][where]
        return act

    with torch.inference_mode():
        return metric(model.run_with_hooks(corrupted, fwd_hooks=[(hook_name, hook)])).item()


@pytest.fixture(scope="module")
def mha():
    model = make_model()
    clean, corrupted, cache = make_setup(model)
    return model, clean, corrupted, cache


@pytest.fixture(scope="module")
def gqa():
    model = make_model(
        n_key_value_heads=2,
        positional_embedding_type="rotary",
        normalization_type="RMS",
        gated_mlp=True,
        act_fn="silu",
    )
    clean, corrupted, cache = make_setup(model)
    return model, clean, corrupted, cache


ALL = slice(None)
# (helper, hook name for layer l, expected shape, [(cell, index into the activation)])
CASES = [
    (
        "get_act_patch_resid_pre",
        "blocks.{}.hook_resid_pre",
        (N_LAYERS, POS),
        [((0, 0), (ALL, 0)), ((1, 2), (ALL, 2))],
    ),
    ("get_act_patch_resid_mid", "blocks.{}.hook_resid_mid", (N_LAYERS, POS), [((1, 3), (ALL, 3))]),
    ("get_act_patch_attn_out", "blocks.{}.hook_attn_out", (N_LAYERS, POS), [((0, 3), (ALL, 3))]),
    ("get_act_patch_mlp_out", "blocks.{}.hook_mlp_out", (N_LAYERS, POS), [((1, 1), (ALL, 1))]),
    (
        "get_act_patch_attn_head_out_by_pos",
        "blocks.{}.attn.hook_z",
        (N_LAYERS, POS, N_HEADS),
        [((1, 2, 3), (ALL, 2, 3))],
    ),
    (
        "get_act_patch_attn_head_q_by_pos",
        "blocks.{}.attn.hook_q",
        (N_LAYERS, POS, N_HEADS),
        [((0, 3, 1), (ALL, 3, 1))],
    ),
    (
        "get_act_patch_attn_head_k_by_pos",
        "blocks.{}.attn.hook_k",
        (N_LAYERS, POS, N_HEADS),
        [((1, 1, 2), (ALL, 1, 2))],
    ),
    (
        "get_act_patch_attn_head_v_by_pos",
        "blocks.{}.attn.hook_v",
        (N_LAYERS, POS, N_HEADS),
        [((0, 0, 0), (ALL, 0, 0))],
    ),
    (
        "get_act_patch_attn_head_pattern_by_pos",
        "blocks.{}.attn.hook_pattern",
        (N_LAYERS, N_HEADS, POS),
        [((1, 2, 3), (ALL, 2, 3))],
    ),
    (
        "get_act_patch_attn_head_pattern_dest_src_pos",
        "blocks.{}.attn.hook_pattern",
        (N_LAYERS, N_HEADS, POS, POS),
        [((0, 1, 3, 1), (ALL, 1, 3, 1)), ((1, 3, 2, 0), (ALL, 3, 2, 0))],
    ),
    (
        "get_act_patch_attn_head_out_all_pos",
        "blocks.{}.attn.hook_z",
        (N_LAYERS, N_HEADS),
        [((1, 0), (ALL, ALL, 0))],
    ),
    (
        "get_act_patch_attn_head_q_all_pos",
        "blocks.{}.attn.hook_q",
        (N_LAYERS, N_HEADS),
        [((0, 2), (ALL, ALL, 2))],
    ),
    (
        "get_act_patch_attn_head_k_all_pos",
        "blocks.{}.attn.hook_k",
        (N_LAYERS, N_HEADS),
        [((1, 3), (ALL, ALL, 3))],
    ),
    (
        "get_act_patch_attn_head_v_all_pos",
        "blocks.{}.attn.hook_v",
        (N_LAYERS, N_HEADS),
        [((0, 1), (ALL, ALL, 1))],
    ),
    (
        "get_act_patch_attn_head_pattern_all_pos",
        "blocks.{}.attn.hook_pattern",
        (N_LAYERS, N_HEADS),
        [((1, 2), (ALL, 2))],
    ),
]


@pytest.fixture(scope="module")
def results(mha):
    model, _, corrupted, cache = mha
    return {name: getattr(patching, name)(model, corrupted, cache, metric) for name, *_ in CASES}


@pytest.mark.parametrize(("name", "hook", "shape", "cells"), CASES, ids=[c[0] for c in CASES])
def test_helper_matches_manual_patch(mha, results, name, hook, shape, cells):
    model, _, corrupted, cache = mha
    out = results[name]
    assert tuple(out.shape) == shape
    assert out.dtype == torch.float32
    for cell, where in cells:
        expected = manual_patch(model, corrupted, cache, hook.format(cell[0]), where)
        assert abs(out[cell].item() - expected) <= 1e-6, (name, cell)
    # The patches do something: cells differ from each other.
    assert out.std() > 0


def test_last_layer_resid_mid_semantics(mha, results):
    """After the last resid_mid only a per-position MLP runs: the last position carries the clean metric,
    earlier positions change nothing (the metric reads the last position only)."""
    model, clean, corrupted, _ = mha
    with torch.inference_mode():
        clean_metric = metric(model(clean)).item()
        corrupted_metric = metric(model(corrupted)).item()
    assert abs(clean_metric - corrupted_metric) > 1e-2
    last = results["get_act_patch_resid_mid"][-1]  # [pos]
    assert abs(last[-1].item() - clean_metric) < 1e-5
    torch.testing.assert_close(last[:-1], torch.full_like(last[:-1], corrupted_metric), atol=1e-5, rtol=0)


def test_every_helpers_stack_the_single_ones(mha, results):
    model, _, corrupted, cache = mha
    block = patching.get_act_patch_block_every(model, corrupted, cache, metric)
    assert block.shape == (3, N_LAYERS, POS)
    for i, name in enumerate(["get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out"]):
        torch.testing.assert_close(block[i], results[name], atol=1e-6, rtol=0)

    all_pos = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
    assert all_pos.shape == (5, N_LAYERS, N_HEADS)
    for i, kind in enumerate(["out", "q", "k", "v", "pattern"]):
        torch.testing.assert_close(
            all_pos[i], results[f"get_act_patch_attn_head_{kind}_all_pos"], atol=1e-6, rtol=0
        )

    by_pos = patching.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, metric)
    assert by_pos.shape == (5, N_LAYERS, POS, N_HEADS)
    for i, kind in enumerate(["out", "q", "k", "v"]):
        torch.testing.assert_close(
            by_pos[i], results[f"get_act_patch_attn_head_{kind}_by_pos"], atol=1e-6, rtol=0
        )
    pattern = results["get_act_patch_attn_head_pattern_by_pos"]  # [layer, head, dest_pos]
    torch.testing.assert_close(by_pos[4], pattern.permute(0, 2, 1), atol=1e-6, rtol=0)


def test_clean_into_clean_gives_the_clean_metric(mha):
    model, clean, _, cache = mha
    with torch.inference_mode():
        clean_metric = metric(model(clean)).item()
    for fn in (patching.get_act_patch_block_every, patching.get_act_patch_attn_head_all_pos_every):
        out = fn(model, clean, cache, metric)
        torch.testing.assert_close(out, torch.full_like(out, clean_metric), atol=1e-5, rtol=0)
    out = patching.get_act_patch_resid_mid(model, clean, cache, metric)
    torch.testing.assert_close(out, torch.full_like(out, clean_metric), atol=1e-5, rtol=0)


def test_gqa_key_value_heads(gqa):
    model, _, corrupted, cache = gqa
    n_kv = model.cfg.n_key_value_heads
    assert n_kv == 2
    k_all = patching.get_act_patch_attn_head_k_all_pos(model, corrupted, cache, metric)
    v_all = patching.get_act_patch_attn_head_v_all_pos(model, corrupted, cache, metric)
    q_all = patching.get_act_patch_attn_head_q_all_pos(model, corrupted, cache, metric)
    assert k_all.shape == v_all.shape == (N_LAYERS, n_kv)
    assert q_all.shape == (N_LAYERS, N_HEADS)
    assert (
        abs(k_all[1, 1].item() - manual_patch(model, corrupted, cache, "blocks.1.attn.hook_k", (ALL, ALL, 1)))
        <= 1e-6
    )
    assert (
        abs(v_all[0, 1].item() - manual_patch(model, corrupted, cache, "blocks.0.attn.hook_v", (ALL, ALL, 1)))
        <= 1e-6
    )

    v_by_pos = patching.get_act_patch_attn_head_v_by_pos(model, corrupted, cache, metric)
    assert v_by_pos.shape == (N_LAYERS, POS, n_kv)
    assert (
        abs(
            v_by_pos[1, 2, 0].item()
            - manual_patch(model, corrupted, cache, "blocks.1.attn.hook_v", (ALL, 2, 0))
        )
        <= 1e-6
    )

    every = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric)
    assert every.shape == (5, N_LAYERS, N_HEADS)
    torch.testing.assert_close(every[2, :, :n_kv], k_all, atol=1e-6, rtol=0)
    torch.testing.assert_close(every[3, :, :n_kv], v_all, atol=1e-6, rtol=0)
    assert (every[2:4, :, n_kv:] == 0).all()  # zero padding up to n_heads, as in TransformerLens


def test_explicit_index_df_and_return_index_df(mha, results):
    model, _, corrupted, cache = mha
    grid = results["get_act_patch_attn_head_out_by_pos"]
    cells = [(1, 2, 3), (0, 0, 1), (1, 3, 0)]
    for index_df in (cells, torch.tensor(cells)):
        flat = patching.generic_activation_patch(
            model,
            corrupted,
            cache,
            metric,
            patching.layer_pos_head_vector_patch_setter,
            "z",
            index_df=index_df,
        )
        assert flat.shape == (3,)
        torch.testing.assert_close(flat, torch.stack([grid[c] for c in cells]), atol=1e-6, rtol=0)

    class FakeFrame:  # the part of a pandas DataFrame the helper reads
        def itertuples(self, index: bool = True, name: str | None = "Pandas"):
            assert index is False and name is None
            return iter(cells)

    flat, table = patching.generic_activation_patch(
        model,
        corrupted,
        cache,
        metric,
        patching.layer_pos_head_vector_patch_setter,
        "z",
        index_df=FakeFrame(),
        return_index_df=True,
    )
    assert isinstance(table, FakeFrame)
    torch.testing.assert_close(flat, torch.stack([grid[c] for c in cells]), atol=1e-6, rtol=0)

    out, table = patching.get_act_patch_attn_out(model, corrupted, cache, metric, return_index_df=True)
    # A pandas DataFrame when pandas is installed, else a LongTensor [n_cells, n_axes].
    rows = table.tolist() if isinstance(table, torch.Tensor) else table.values.tolist()
    assert rows == [[layer, pos] for layer in range(N_LAYERS) for pos in range(POS)]
    torch.testing.assert_close(out, results["get_act_patch_attn_out"], atol=1e-6, rtol=0)


def test_bad_arguments(mha):
    model, _, corrupted, cache = mha
    setter = patching.layer_pos_patch_setter
    with pytest.raises(ValueError, match="exactly one"):
        patching.generic_activation_patch(model, corrupted, cache, metric, setter, "resid_pre")
    with pytest.raises(ValueError, match="exactly one"):
        patching.generic_activation_patch(
            model,
            corrupted,
            cache,
            metric,
            setter,
            "resid_pre",
            index_axis_names=["layer"],
            index_df=[(0, 1)],
        )
    with pytest.raises(ValueError, match="unknown index axis"):
        patching.generic_activation_patch(
            model, corrupted, cache, metric, setter, "resid_pre", index_axis_names=["lyr"]
        )


def test_patch_leaves_the_clean_cache_alone(mha):
    model, _, corrupted, cache = mha
    before = {k: v.clone() for k, v in cache.items() if k.startswith("blocks.0.")}
    patching.get_act_patch_attn_head_q_all_pos(model, corrupted, cache, metric)
    patching.get_act_patch_resid_pre(model, corrupted, cache, metric)
    for k, v in before.items():
        assert torch.equal(cache[k], v), k


def test_accepts_an_activation_cache(mha, results):
    model, clean, corrupted, _ = mha
    _, cache = model.run_with_cache(clean)  # ActivationCache, as TransformerLens users pass
    out = patching.get_act_patch_attn_head_v_all_pos(model, corrupted, cache, metric)
    torch.testing.assert_close(out, results["get_act_patch_attn_head_v_all_pos"], atol=1e-6, rtol=0)


def test_helpers_are_rows_of_the_shared_helper_table():
    """Core's helpers and the graph front end's HELPER_AXES read the one shared table."""
    from telelens.trace.helper_grids import HELPER_AXES, HELPER_GRIDS

    assert set(patching.HELPERS) == set(HELPER_GRIDS)
    for name, grid in HELPER_GRIDS.items():
        helper = getattr(patching, f"get_act_patch_{name}")
        assert helper.keywords["activation_name"] == grid.activation, name
        assert tuple(helper.keywords["index_axis_names"]) == grid.axes, name
    assert set(HELPER_AXES) <= set(HELPER_GRIDS)
    assert HELPER_AXES["attn_head_pattern_all_pos"] == ("pattern", ("layer", "head"))
