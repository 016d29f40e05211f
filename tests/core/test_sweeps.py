"""The batched patching engine equals the one-forward-pass-per-cell loop, for every helper and model kind.

Random tiny models (an LN GPT-2-like one, a GQA rotary RMS gated one, a parallel-attention
one), fp32 on CPU: every TransformerLens helper computed both ways agrees to <= 1e-5 (the
issue asks 1e-4). Plus: explicit cells, custom setters, fallbacks, metric positions,
padding, memory-bounded blocks and progress. Attribution patching and ablation sweeps are in
test_sweeps_ablation.py, the graph node and the client API in test_sweeps_graph.py.
"""

from __future__ import annotations

import pytest
import torch
from sweep_setup import (
    BATCH,
    GQA_ROTARY_RMS,
    N_LAYERS,
    PARALLEL,
    POS,
    VOCAB,
    make_model,
    make_setup,
    metric,
)

from telelens.core import patching
from telelens.core.sweeps import PatchSite, SweepOptions, SweepUnsupported, sweep_sites
from telelens.core.sweeps.metric import probe_positions
from telelens.core.sweeps.schedule import plan_batches
from telelens.core.sweeps.sites import plan_site
from telelens.lens.utils import get_act_name

TOL = 1e-5

MODELS = {"gpt2": {}, "gqa_rotary_rms": GQA_ROTARY_RMS, "parallel": PARALLEL}


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    return make_setup(MODELS[request.param])


HELPERS = [
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
]


@pytest.mark.parametrize("name", HELPERS)
def test_every_helper_equals_the_naive_loop(setup, name):
    model, _, corrupted, cache = setup
    helper = getattr(patching, name)
    if name == "get_act_patch_resid_mid" and model.cfg.parallel_attn_mlp:  # no resid_mid: both refuse
        for method in ("auto", "naive"):
            with pytest.raises(KeyError):
                helper(model, corrupted, cache, metric, method=method, progress=False)
        return
    fast = helper(model, corrupted, cache, metric, method="fast", progress=False)
    naive = helper(model, corrupted, cache, metric, method="naive", progress=False)
    assert fast.shape == naive.shape and fast.dtype == torch.float32
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
    assert naive.std() > 1e-3  # the patches do something


def test_every_stacks_and_default_method(setup):
    model, _, corrupted, cache = setup
    if model.cfg.parallel_attn_mlp:
        return
    fast = patching.get_act_patch_block_every(model, corrupted, cache, metric, progress=False)
    naive = patching.get_act_patch_block_every(
        model, corrupted, cache, metric, method="naive", progress=False
    )
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
    fast = patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, metric, progress=False)
    naive = patching.get_act_patch_attn_head_all_pos_every(
        model, corrupted, cache, metric, method="naive", progress=False
    )
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)


def test_explicit_cells_and_generic_hooks(setup):
    """index_df rows on any block hook (MLP neurons, keys, scores, ...): engine == loop."""
    model, _, corrupted, cache = setup
    cases = [
        ("post", patching.layer_pos_head_vector_patch_setter, [(0, 2, 5), (2, 5, 31), (1, 0, 0), (2, 3, 7)]),
        ("k", patching.layer_head_vector_patch_setter, [(2, 1), (0, 0)]),
        ("resid_post", patching.layer_pos_patch_setter, [(0, 3), (2, 5), (1, 0)]),
        ("attn_scores", patching.layer_head_pos_pattern_patch_setter, [(1, 2, 4), (2, 0, 5), (0, 3, 1)]),
        ("attn_scores", patching.layer_head_dest_src_pos_pattern_patch_setter, [(1, 2, 4, 1), (2, 0, 5, 5)]),
        ("pre", patching.layer_pos_head_vector_patch_setter, [(1, 4, 3)]),
    ]
    for act, setter, cells in cases:
        args = (model, corrupted, cache, metric, setter, act)
        fast = patching.generic_activation_patch(*args, index_df=cells, method="fast", progress=False)
        naive = patching.generic_activation_patch(*args, index_df=cells, method="naive", progress=False)
        assert fast.shape == (len(cells),)
        torch.testing.assert_close(fast, naive, atol=TOL, rtol=0, msg=act)


def test_custom_setter_runs_in_a_hook(setup):
    """A setter the engine cannot read is called per variant inside the block (all positions)."""
    model, _, corrupted, cache = setup

    def half_mix(corrupted_act, index, clean_act):
        _, pos = index
        corrupted_act[:, pos] = 0.5 * corrupted_act[:, pos] + 0.5 * clean_act[:, pos]
        return corrupted_act

    args = (model, corrupted, cache, metric, half_mix, "attn_out")
    fast = patching.generic_activation_patch(
        *args, index_axis_names=["layer", "pos"], method="fast", progress=False
    )
    naive = patching.generic_activation_patch(
        *args, index_axis_names=["layer", "pos"], method="naive", progress=False
    )
    assert fast.shape == (N_LAYERS, POS)
    torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)


def test_attached_hooks_fall_back_to_the_loop():
    model = make_model()
    gen = torch.Generator().manual_seed(3)
    clean, corrupted = torch.randint(0, VOCAB, (2, 1, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)

    def damp(act, hook):
        return act * 0.5

    model.add_hook("blocks.1.hook_mlp_out", damp)
    try:
        with pytest.raises(SweepUnsupported):
            patching.get_act_patch_resid_pre(model, corrupted, cache, metric, method="fast", progress=False)
        auto = patching.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False)
        naive = patching.get_act_patch_resid_pre(
            model, corrupted, cache, metric, method="naive", progress=False
        )
    finally:
        model.reset_hooks()
    torch.testing.assert_close(auto, naive, atol=0, rtol=0)  # the loop ran, with the user's hook
    plain = patching.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False)
    assert (plain - auto).abs().max() > 1e-4  # and the hook mattered


def test_hooks_outside_the_blocks_are_refused_before_any_pass():
    model = make_model()
    corrupted = torch.randint(0, VOCAB, (1, POS), generator=torch.Generator().manual_seed(4))
    with pytest.raises(SweepUnsupported, match="not a hook of block"):
        sweep_sites(
            model, corrupted, lambda layer: "hook_embed", [PatchSite(0, (2,))], {}.__getitem__, metric
        )
    with pytest.raises(SweepUnsupported, match="unknown hook"):
        plan_site(model, "blocks.0.hook_nope", PatchSite(0, (2,)), 0, custom=False)


# ------------------------------------------------------------------------------------- metric positions
def test_probe_finds_the_positions_a_metric_reads():
    logits = torch.randn(2, 6, 10)
    assert probe_positions(metric, logits) == [5]
    assert probe_positions(lambda x: x[:, 2, 1].sum() + x[0, 4, 0], logits) == [2, 4]
    assert probe_positions(lambda x: x.mean(), logits) == list(range(6))
    assert probe_positions(lambda x: torch.tensor(1.0), logits) == []
    assert probe_positions(lambda x: torch.nan_to_num(x)[:, 3].sum(), logits) == [3]  # NaN-proof: 2nd probe


@pytest.mark.parametrize(
    "read",
    [
        lambda x: x[:, 2, 7].mean() - x[:, 2, 3].mean(),  # an earlier position: later cells are skipped
        lambda x: x[:, :, 7].mean(),  # every position
        lambda x: x[:, 1, 7].mean() * x[:, 4, 3].mean(),
    ],
)
def test_metrics_reading_other_positions(read):
    model = make_model(**MODELS["gqa_rotary_rms"])
    gen = torch.Generator().manual_seed(5)
    clean, corrupted = torch.randint(0, VOCAB, (2, BATCH, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    for helper in (patching.get_act_patch_resid_pre, patching.get_act_patch_attn_head_out_by_pos):
        fast = helper(model, corrupted, cache, read, method="fast", progress=False)
        naive = helper(model, corrupted, cache, read, method="naive", progress=False)
        torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
        explicit = helper(model, corrupted, cache, read, method="fast", progress=False, logit_positions="all")
        torch.testing.assert_close(explicit, naive, atol=TOL, rtol=0)


def test_left_padded_batch():
    """A corrupted batch with left padding (attention mask) equals the masked naive loop."""
    model = make_model(**MODELS["gqa_rotary_rms"])
    gen = torch.Generator().manual_seed(6)
    clean, corrupted = torch.randint(0, VOCAB, (2, BATCH, POS), generator=gen)
    mask = torch.ones(BATCH, POS, dtype=torch.long)
    mask[1, :2] = 0
    _, cache = model.run_with_cache(clean, attention_mask=mask, return_cache_object=False)
    cells = [(layer, p) for layer in range(N_LAYERS) for p in range(POS)]
    sites = [PatchSite(layer, (p,)) for layer, p in cells]
    for act in ("resid_pre", "attn_out", "k"):
        index = (lambda p: (p, 1)) if act == "k" else (lambda p: (p,))
        sites = [PatchSite(layer, index(p)) for layer, p in cells]
        fast = sweep_sites(
            model, corrupted, lambda layer, act=act: get_act_name(act, layer), sites, cache.__getitem__, metric,
            attention_mask=mask,
        )  # fmt: skip
        naive = []
        with torch.inference_mode():
            for (layer, _), site in zip(cells, sites):
                name = get_act_name(act, layer)
                where = (slice(None), *site.index)

                def hook(x, hook, name=name, where=where):
                    x = x.clone()
                    x[where] = cache[name][where]
                    return x

                logits = model.run_with_hooks(corrupted, attention_mask=mask, fwd_hooks=[(name, hook)])
                naive.append(float(metric(logits)))
        torch.testing.assert_close(fast, torch.tensor(naive), atol=TOL, rtol=0, msg=act)


# ------------------------------------------------------------------------------------- scheduling
def test_blocks_respect_the_budget_and_merging_gives_the_same_grid(setup):
    model, _, corrupted, cache = setup
    sites = [PatchSite(layer, (p, h)) for layer in range(N_LAYERS) for p in range(POS) for h in (0, 3)]
    hook = lambda layer: get_act_name("z", layer)  # noqa: E731
    base = sweep_sites(model, corrupted, hook, sites, cache.__getitem__, metric)
    for options in (
        SweepOptions(merge=False),
        SweepOptions(memory_budget=1),  # one variant per block
        SweepOptions(overhead=1e9),  # everything merged into start 0
    ):
        out = sweep_sites(model, corrupted, hook, sites, cache.__getitem__, metric, options=options)
        torch.testing.assert_close(out, base, atol=TOL, rtol=0)


def test_cell_batches_group_by_start_and_merge_when_calls_are_dear():
    model = make_model()
    sites = [PatchSite(layer, (p,)) for layer in range(N_LAYERS) for p in range(POS)]
    entries = [plan_site(model, get_act_name("resid_pre", s.layer), s, i, False) for i, s in enumerate(sites)]
    exact = plan_batches(model, entries, 1, POS, 1, 1 << 30, overhead=0.0)
    assert [(c.start, len(c.entries)) for c in exact] == [(p, N_LAYERS) for p in range(POS)]
    assert all([e.entry for e in c.entries] == sorted(e.entry for e in c.entries) for c in exact)
    merged = plan_batches(model, entries, 1, POS, 1, 1 << 30, overhead=1e6)
    assert [(c.start, len(c.entries)) for c in merged] == [(0, len(sites))]
    tiny = plan_batches(model, entries, 1, POS, 1, 1, overhead=1e6)
    assert len(tiny) == len(sites)  # the budget wins over merging


def test_progress_counts_every_cell(setup):
    model, _, corrupted, cache = setup
    seen: list[int] = []
    sites = [PatchSite(layer, (p,)) for layer in range(N_LAYERS) for p in range(POS)]
    sweep_sites(
        model, corrupted, lambda layer: get_act_name("resid_pre", layer), sites, cache.__getitem__,
        lambda x: x[:, 3, 7].mean(), progress=seen.append,
    )  # fmt: skip
    assert sum(seen) == len(sites)
    assert seen[0] == 2 * N_LAYERS  # positions 4, 5 cannot reach the metric's position 3: done at once


def test_one_clean_prompt_for_a_corrupted_batch():
    """A batch-1 clean cache broadcasts over the corrupted rows, as the setters' assignment does."""
    model = make_model(**MODELS["gqa_rotary_rms"])
    gen = torch.Generator().manual_seed(10)
    clean = torch.randint(0, VOCAB, (1, POS), generator=gen)
    corrupted = torch.randint(0, VOCAB, (3, POS), generator=gen)
    _, cache = model.run_with_cache(clean, return_cache_object=False)
    for helper in (
        patching.get_act_patch_resid_pre,
        patching.get_act_patch_attn_head_out_all_pos,
        patching.get_act_patch_attn_head_pattern_by_pos,
        patching.get_act_patch_attn_head_k_by_pos,
    ):
        fast = helper(model, corrupted, cache, metric, method="fast", progress=False)
        naive = helper(model, corrupted, cache, metric, method="naive", progress=False)
        torch.testing.assert_close(fast, naive, atol=TOL, rtol=0)
