"""Attribution patching (vs its autograd definition and vs true patching) and ablation sweeps (vs hooks)."""

from __future__ import annotations

import itertools

import pytest
import torch
from sweep_setup import (
    GQA_ROTARY_RMS,
    N_HEADS,
    N_LAYERS,
    POS,
    VOCAB,
    make_model,
    make_setup,
    metric,
)

from telelens.core import patching
from telelens.lens.utils import get_act_name

TOL = 1e-5

MODELS = {"gpt2": {}, "gqa_rotary_rms": GQA_ROTARY_RMS}


@pytest.fixture(scope="module", params=list(MODELS))
def setup(request):
    return make_setup(MODELS[request.param])


# ------------------------------------------------------------------------------------- attribution
def test_attribution_patching_is_its_definition(setup):
    model, clean, corrupted, cache = setup
    names = ("resid_pre", "attn_out", "z", "pattern")
    result = patching.attribution_patch(model, clean, corrupted, metric, names)
    hooks = [get_act_name(a, layer) for a in names for layer in range(N_LAYERS)]

    # By hand: keep each activation, take d metric / d activation with autograd.
    store = {}

    def keep(act, hook):
        act.retain_grad()
        store[hook.name] = act

    with model.hooks(fwd_hooks=[(h, keep) for h in hooks]):
        value = metric(model(corrupted))
    model.zero_grad()
    value.backward()
    model.zero_grad()
    for h in hooks:
        expected = (cache[h] - store[h].detach()) * store[h].grad
        torch.testing.assert_close(result.per_hook[h], expected, atol=1e-5, rtol=1e-4, msg=h)
    assert result.resid_pre.shape == (N_LAYERS, POS)
    assert result.head_out.shape == (N_LAYERS, N_HEADS)
    assert result.grid("z").shape == (N_LAYERS, POS, N_HEADS)
    assert result.grid("pattern").shape == (N_LAYERS, N_HEADS, POS)
    torch.testing.assert_close(
        result.head_out[1, 2], result.per_hook["blocks.1.attn.hook_z"][:, :, 2].sum(), atol=1e-5, rtol=1e-5
    )
    with torch.inference_mode():
        assert result.corrupted_metric == pytest.approx(float(metric(model(corrupted))), abs=1e-5)
        assert result.clean_metric == pytest.approx(float(metric(model(clean))), abs=1e-5)
        # Inside inference mode, with frozen weights: the same numbers.
        model.requires_grad_(False)
        try:
            again = patching.attribution_patch(model, clean, corrupted, metric, ("resid_pre",))
        finally:
            model.requires_grad_(True)
    torch.testing.assert_close(again.resid_pre, result.resid_pre, atol=1e-5, rtol=1e-5)


def test_attribution_tracks_true_patching_for_small_changes():
    """First order: with a clean run barely different from the corrupted one, estimate ~ patch."""
    model = make_model(**MODELS["gqa_rotary_rms"])
    corrupted = torch.randint(0, VOCAB, (1, POS), generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        _, cache = model.run_with_cache(corrupted, return_cache_object=False)
    gen = torch.Generator().manual_seed(8)
    clean_cache = {k: v + 1e-3 * torch.randn(v.shape, generator=gen) for k, v in cache.items()}
    result = patching.attribution_patch(
        model, None, corrupted, metric, ("resid_pre",), clean_cache=clean_cache, layers=[1, 2]
    )
    assert result.clean_metric is None and result.resid_pre.shape == (2, POS)
    cells = [(layer, p) for layer in (1, 2) for p in range(POS)]
    true = patching.generic_activation_patch(
        model, corrupted, clean_cache, metric, patching.layer_pos_patch_setter, "resid_pre", index_df=cells,
        progress=False,
    )  # fmt: skip
    with torch.inference_mode():
        base = float(metric(model(corrupted)))
    torch.testing.assert_close(result.resid_pre.flatten(), true - base, atol=2e-5, rtol=0.05)


# ------------------------------------------------------------------------------------- ablation
@pytest.mark.parametrize(("kind", "over"), list(itertools.product(["zero", "mean"], ["heads", "neurons"])))
def test_ablation_sweep_equals_hooks(setup, kind, over):
    model, _, corrupted, _ = setup
    layers = [0, 2]
    out = patching.ablation_sweep(
        model, corrupted, metric, kind=kind, over=over, layers=layers, progress=False
    )
    units = N_HEADS if over == "heads" else model.cfg.d_mlp
    assert out.shape == (2, units)
    suffix = "attn.hook_z" if over == "heads" else "mlp.hook_post"
    step = 1 if over == "heads" else 5  # a sample of the neurons
    with torch.inference_mode():
        for i, layer in enumerate(layers):
            for u in range(0, units, step):

                def ablate(act, hook, u=u):
                    act = act.clone()
                    act[:, :, u] = 0.0 if kind == "zero" else act[:, :, u].mean(0, keepdim=True)
                    return act

                logits = model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{layer}.{suffix}", ablate)])
                assert abs(out[i, u].item() - float(metric(logits))) <= TOL, (layer, u)


def test_ablation_with_hooks_attached_uses_the_loop():
    model = make_model()
    tokens = torch.randint(0, VOCAB, (2, POS), generator=torch.Generator().manual_seed(9))
    fast = patching.ablation_sweep(model, tokens, metric, progress=False)
    model.add_hook("blocks.0.hook_resid_pre", lambda act, hook: act)  # attached, harmless
    try:
        loop = patching.ablation_sweep(model, tokens, metric, progress=False)
    finally:
        model.reset_hooks()
    torch.testing.assert_close(fast, loop, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="kind"):
        patching.ablation_sweep(model, tokens, metric, kind="resample")  # type: ignore[arg-type]
