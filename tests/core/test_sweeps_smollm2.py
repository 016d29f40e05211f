"""The batched engine on the real SmolLM2-135M (30 layers, GQA 9/3 heads, rotary), fp32 CPU.

Eiffel Tower vs Colosseum ("... is in the city of", 10 tokens each, metric: Paris - Rome logit
difference) and an IOI pair of equal length: engine grids equal the one-forward-per-cell loop
to <= 1e-4. The full resid_pre grid is compared; the other helpers on a sample of cells
(explicit ``index_df`` rows) to keep the file short.
"""

from __future__ import annotations

import random

import pytest
import torch

from telelens.client import ops
from telelens.client import patching as client_patching
from telelens.core import patching
from telelens.core.graph.local import LocalBackend

pytestmark = pytest.mark.slow
TOL = 1e-4
LAYERS = (0, 7, 16, 29)


@pytest.fixture(scope="module")
def eiffel(smollm2):
    model = smollm2
    clean = model.to_tokens("The Eiffel Tower is in the city of")
    corrupted = model.to_tokens("The Colosseum is in the city of")
    assert clean.shape == corrupted.shape == (1, 10)
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    metric = ops.logit_diff(paris, rome)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    return model, clean, corrupted, cache, metric


@pytest.fixture(scope="module")
def ioi(smollm2):
    model = smollm2
    clean = model.to_tokens("When John and Mary went to the store, John gave a drink to")
    corrupted = model.to_tokens("When John and Mary went to the store, Mary gave a drink to")
    assert clean.shape == corrupted.shape
    mary, john = model.to_single_token(" Mary"), model.to_single_token(" John")
    metric = ops.logit_diff(mary, john)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    return model, clean, corrupted, cache, metric


def _both(model, corrupted, cache, metric, setter, activation, cells):
    args = (model, corrupted, cache, metric, setter, activation)
    fast = patching.generic_activation_patch(*args, index_df=cells, method="fast", progress=False)
    naive = patching.generic_activation_patch(*args, index_df=cells, method="naive", progress=False)
    return fast, naive


def test_resid_pre_grid(eiffel):
    """The full grid on the engine; its rows at LAYERS against the loop."""
    model, clean, corrupted, cache, metric = eiffel
    fast = patching.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False)
    assert fast.shape == (30, 10)
    cells = [(layer, p) for layer in LAYERS for p in range(10)]
    naive = patching.get_act_patch_resid_pre(
        model, corrupted, cache, metric, method="naive", progress=False, index_df=cells, index_axis_names=None
    )
    torch.testing.assert_close(fast[list(LAYERS)].flatten(), naive, atol=TOL, rtol=0)
    with torch.inference_mode():
        m_clean, m_corrupted = float(metric(model(clean))), float(metric(model(corrupted)))
    assert m_clean > 2 and m_corrupted < -2  # Paris for the Eiffel Tower, Rome for the Colosseum
    # Early layers: the subject tokens (' E' 'iffel' ' Tower' vs ' Col' 'osse' 'um') carry the answer;
    # late layers: the last position does.
    assert fast[0, 2:5].max() > m_corrupted + 1
    assert fast[-1, -1] > (m_clean + m_corrupted) / 2


@pytest.mark.parametrize(
    ("activation", "setter", "units"),
    [
        ("resid_mid", patching.layer_pos_patch_setter, None),
        ("attn_out", patching.layer_pos_patch_setter, None),
        ("mlp_out", patching.layer_pos_patch_setter, None),
        ("z", patching.layer_pos_head_vector_patch_setter, 9),
        ("q", patching.layer_pos_head_vector_patch_setter, 9),
        ("k", patching.layer_pos_head_vector_patch_setter, 3),
        ("v", patching.layer_pos_head_vector_patch_setter, 3),
    ],
)
def test_by_position_helpers_on_sampled_cells(eiffel, activation, setter, units):
    model, _, corrupted, cache, metric = eiffel
    rng = random.Random(activation)
    cells = [(layer, p) for layer in LAYERS for p in range(10)]
    if units is not None:
        cells = [(layer, p, rng.randrange(units)) for layer, p in cells]
    cells = rng.sample(cells, 16)
    fast, naive = _both(model, corrupted, cache, metric, setter, activation, cells)
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    ("activation", "setter", "cell"),
    [
        ("z", patching.layer_head_vector_patch_setter, lambda layer, h: (layer, h)),
        ("pattern", patching.layer_head_pattern_patch_setter, lambda layer, h: (layer, h)),
        ("pattern", patching.layer_head_pos_pattern_patch_setter, lambda layer, h: (layer, h, (3 * h) % 10)),
    ],
)
def test_head_helpers_on_sampled_layers(eiffel, activation, setter, cell):
    model, _, corrupted, cache, metric = eiffel
    cells = [cell(layer, h) for layer in LAYERS for h in range(0, 9, 2)]
    fast, naive = _both(model, corrupted, cache, metric, setter, activation, cells)
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)


def test_ioi_resid_pre_and_heads(ioi):
    model, _, corrupted, cache, metric = ioi
    cells = [(layer, p) for layer in LAYERS for p in range(corrupted.shape[1])]
    fast, naive = _both(model, corrupted, cache, metric, patching.layer_pos_patch_setter, "resid_pre", cells)
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
    assert naive.abs().max() > 1  # the name position matters
    heads = [(layer, h) for layer in (9, 17, 22, 28) for h in range(9)]
    fast, naive = _both(model, corrupted, cache, metric, patching.layer_head_vector_patch_setter, "z", heads)
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)


def test_graph_sweep_on_smollm2(eiffel):
    """The Sweep node (declarative metric, LocalBackend) equals the local engine; sample vs the loop."""
    model, clean, corrupted, cache, metric = eiffel
    grid = client_patching.sweep(
        LocalBackend(model), corrupted, clean, "attn_head_out_all_pos", metric=metric
    )
    local = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric, progress=False)
    assert grid.shape == (30, 9)
    torch.testing.assert_close(grid, local, atol=TOL, rtol=0)
    cells = [(3, 1), (17, 4), (29, 8)]
    _, naive = _both(model, corrupted, cache, metric, patching.layer_head_vector_patch_setter, "z", cells)
    torch.testing.assert_close(torch.stack([grid[c] for c in cells]), naive, atol=TOL, rtol=0)
