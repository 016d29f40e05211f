"""ActivationCache on tiny random models: indexing, decompositions that sum back, norms, logit attribution."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer
from telelens.lens.activation_cache import ActivationCache

DT = torch.float64
N_LAYERS, D_MODEL, N_HEADS, D_MLP, D_VOCAB = 3, 16, 4, 24, 50

# LN with learned positions and biases; RMS with rotary, grouped-query attention and a gated MLP.
ARCHS: dict[str, dict] = {
    "ln": dict(normalization_type="LN"),
    "rms_gqa": dict(
        normalization_type="RMS",
        positional_embedding_type="rotary",
        n_key_value_heads=2,
        gated_mlp=True,
        act_fn="silu",
        attn_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
    ),
}


def build(seed: int = 0, **kw: object) -> HookedTransformer:
    """A float64 model with random (not identity) norm weights and biases."""
    cfg: dict[str, Any] = dict(
        n_layers=N_LAYERS, d_model=D_MODEL, n_ctx=32, d_head=4, n_heads=N_HEADS, d_vocab=D_VOCAB, d_mlp=D_MLP
    )
    cfg.update(seed=seed, dtype=DT, **kw)
    model = HookedTransformer(HookedTransformerConfig(**cfg))  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(
                    torch.randn(p.shape, generator=gen, dtype=DT) * 0.3
                    + (1.0 if name.endswith(".w") else 0.0)
                )
    return model


def tokens(batch: int = 3, pos: int = 6, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (batch, pos), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b.to(a.dtype).expand_as(a), rtol=tol, atol=tol)


@pytest.fixture(scope="module", params=list(ARCHS))
def run(
    request: pytest.FixtureRequest,
) -> tuple[HookedTransformer, torch.Tensor, torch.Tensor, ActivationCache]:
    model = build(**ARCHS[request.param])
    toks = tokens()
    logits, cache = model.run_with_cache(toks)
    return model, toks, logits, cache


@pytest.fixture(scope="module")
def ln_run() -> tuple[HookedTransformer, torch.Tensor, torch.Tensor, ActivationCache]:
    model = build(**ARCHS["ln"])
    toks = tokens()
    logits, cache = model.run_with_cache(toks)
    return model, toks, logits, cache


# ---------------------------------------------------------------------------------------- indexing
def test_key_forms_equal_full_names(run: tuple) -> None:
    _, _, _, cache = run
    assert isinstance(cache, ActivationCache)
    forms: dict[Any, str] = {
        ("pattern", 2): "blocks.2.attn.hook_pattern",
        ("attn", 1): "blocks.1.attn.hook_pattern",
        ("resid_pre", 0): "blocks.0.hook_resid_pre",
        ("resid_post", -1): f"blocks.{N_LAYERS - 1}.hook_resid_post",
        ("k", -3): "blocks.0.attn.hook_k",
        ("scale", 2, "ln1"): "blocks.2.ln1.hook_scale",
        ("normalized", 1, "ln2"): "blocks.1.ln2.hook_normalized",
        ("scale",): "ln_final.hook_scale",
        ("z", 1, "a"): "blocks.1.attn.hook_z",
        ("post", 0): "blocks.0.mlp.hook_post",
        ("mlp_out", 2): "blocks.2.hook_mlp_out",
        "scale": "ln_final.hook_scale",
        "embed": "hook_embed",
        "pattern1": "blocks.1.attn.hook_pattern",
        "scale2ln1": "blocks.2.ln1.hook_scale",
        "blocks.0.hook_resid_pre": "blocks.0.hook_resid_pre",
    }
    for key, name in forms.items():
        assert cache[key] is cache.cache_dict[name], key
        assert key in cache
    assert "blocks.0.hook_resid_pre" in cache and ("pattern", 9) not in cache and "nope" not in cache
    with pytest.raises(KeyError, match=r"blocks\.0\.mlp\.hook_mid"):
        cache["mid", 0]
    assert len(cache) == len(cache.cache_dict) == len(list(cache)) == len(cache.keys())
    assert list(cache) == list(cache.keys()) and next(iter(cache.values())) is next(iter(cache.items()))[1]
    assert "ActivationCache with keys" in repr(cache)


def test_gqa_shapes(run: tuple) -> None:
    model, toks, _, cache = run
    n_kv = model.cfg.n_key_value_heads or N_HEADS
    assert cache["k", 0].shape == (*toks.shape, n_kv, 4)
    assert cache["z", 0].shape == (*toks.shape, N_HEADS, 4)


# ------------------------------------------------------------------------------ residual stream
def test_decompose_resid_sums_to_resid(run: tuple) -> None:
    model, _, _, cache = run
    stack, labels = cache.decompose_resid(return_labels=True)
    n_embeds = 2 if model.cfg.positional_embedding_type == "standard" else 1
    assert (
        stack.shape[0] == len(labels) == n_embeds + 2 * N_LAYERS and labels[-1] == f"{N_LAYERS - 1}_mlp_out"
    )
    close(stack.sum(0), cache["resid_post", -1])
    for layer in range(N_LAYERS):
        close(cache.decompose_resid(layer).sum(0), cache["resid_pre", layer])
        close(cache.decompose_resid(layer, mlp_input=True).sum(0), cache["resid_mid", layer])
    attn, labels = cache.decompose_resid(mode="attn", incl_embeds=False, return_labels=True)
    assert labels == [f"{layer}_attn_out" for layer in range(N_LAYERS)]
    close(attn, torch.stack([cache["attn_out", layer] for layer in range(N_LAYERS)]))
    # Position slices: int drops the position dim, tuple is start:stop, list picks indices.
    close(cache.decompose_resid(pos_slice=-1).sum(0), cache["resid_post", -1][:, -1])
    close(cache.decompose_resid(pos_slice=(1, 4)).sum(0), cache["resid_post", -1][:, 1:4])
    close(cache.decompose_resid(pos_slice=[0, 3]).sum(0), cache["resid_post", -1][:, [0, 3]])


def test_accumulated_resid_matches_cache(run: tuple) -> None:
    model, _, logits, cache = run
    stack, labels = cache.accumulated_resid(return_labels=True)
    assert labels == [f"{layer}_pre" for layer in range(N_LAYERS)] + ["final_post"]
    close(stack[:-1], cache.stack_activation("resid_pre"))
    close(stack[-1], cache["resid_post", -1])
    mid, labels = cache.accumulated_resid(2, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid"]
    close(mid[-1], cache["resid_mid", 2])
    # At the unembed, apply_ln runs ln_final itself (weights included): the last entry gives the logits.
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    close(lens[-1] @ model.W_U + model.b_U, logits[:, -1])
    # Elsewhere it uses the cached scale: resid_pre of layer 1 becomes ln1's normalized input.
    close(cache.accumulated_resid(1, apply_ln=True)[-1], cache["normalized", 1, "ln1"])


def test_apply_ln_to_stack_matches_cached_normalized(run: tuple) -> None:
    _, _, _, cache = run
    full = cache.accumulated_resid()[-1:]  # [1, batch, pos, d_model]
    close(cache.apply_ln_to_stack(full)[0], cache["ln_final.hook_normalized"])
    close(cache.apply_ln_to_stack(full, layer=N_LAYERS)[0], cache["ln_final.hook_normalized"])
    # The cached scale is linear in the stack: normalized components sum to the normalized stream.
    close(cache.decompose_resid(apply_ln=True).sum(0), cache["ln_final.hook_normalized"])
    close(cache.decompose_resid(1, apply_ln=True).sum(0), cache["normalized", 1, "ln1"])
    close(cache.decompose_resid(1, mlp_input=True, apply_ln=True).sum(0), cache["normalized", 1, "ln2"])
    sliced = cache.apply_ln_to_stack(full[:, :, -1], pos_slice=-1)  # stack already sliced; scale gets sliced
    close(sliced[0], cache["ln_final.hook_normalized"][:, -1])
    batch = cache.apply_ln_to_stack(full, batch_slice=[0, 2])
    close(batch[0], cache["ln_final.hook_normalized"][[0, 2]])


# ---------------------------------------------------------------------------------------- heads
def test_stack_head_results_sum_to_attn_out(run: tuple) -> None:
    model, _, _, cache = run
    heads, labels = cache.stack_head_results(return_labels=True)
    assert heads.shape == (N_LAYERS * N_HEADS, 3, 6, D_MODEL)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[-1] == f"L{N_LAYERS - 1}H{N_HEADS - 1}"
    per_layer = heads.reshape(N_LAYERS, N_HEADS, *heads.shape[1:]).sum(1)
    for layer in range(N_LAYERS):
        close(per_layer[layer] + model.blocks[layer].attn.b_O, cache["attn_out", layer])
    with_rest, labels = cache.stack_head_results(2, incl_remainder=True, return_labels=True)
    assert with_rest.shape[0] == 2 * N_HEADS + 1 and labels[-1] == "remainder"
    close(with_rest.sum(0), cache["resid_post", 1])
    empty = cache.stack_head_results(0, pos_slice=-1)
    assert empty.shape == (0, 3, D_MODEL) and empty.dtype == DT
    close(cache.stack_head_results(pos_slice=2), heads[:, :, 2])
    close(cache.stack_head_results(apply_ln=True), cache.apply_ln_to_stack(heads))


def test_head_results_from_z_equal_cached_hook_result() -> None:
    model = build(**ARCHS["rms_gqa"])
    toks = tokens()
    _, computed = model.run_with_cache(toks)
    assert "blocks.0.attn.hook_result" not in computed
    computed.compute_head_results()
    model.set_use_attn_result(True)
    try:
        _, cached = model.run_with_cache(toks)
    finally:
        model.set_use_attn_result(False)
    for layer in range(N_LAYERS):
        close(computed["result", layer], cached["result", layer])
    close(computed.stack_head_results(), cached.stack_head_results())


def test_stack_activation(run: tuple) -> None:
    _, _, _, cache = run
    scales = cache.stack_activation("scale", sublayer_type="ln2")
    assert scales.shape == (N_LAYERS, 3, 6, 1)
    close(scales[1], cache["blocks.1.ln2.hook_scale"])
    assert cache.stack_activation("pattern", 2).shape == (2, 3, N_HEADS, 6, 6)


# -------------------------------------------------------------------------------------- neurons
def test_stack_neuron_results_sum_to_mlp_out(run: tuple) -> None:
    model, _, _, cache = run
    neurons, labels = cache.stack_neuron_results(N_LAYERS, return_labels=True)
    assert neurons.shape == (N_LAYERS * D_MLP, 3, 6, D_MODEL) and labels[D_MLP] == "L1N0"
    per_layer = neurons.reshape(N_LAYERS, D_MLP, *neurons.shape[1:]).sum(1)
    for layer in range(N_LAYERS):
        close(per_layer[layer] + model.blocks[layer].mlp.b_out, cache["mlp_out", layer])
        close(
            cache.get_neuron_results(layer).sum(-2) + model.blocks[layer].mlp.b_out, cache["mlp_out", layer]
        )
    with_rest = cache.stack_neuron_results(2, incl_remainder=True)
    close(with_rest.sum(0), cache["resid_post", 1])
    picked, labels = cache.stack_neuron_results(2, neuron_slice=5, pos_slice=-1, return_labels=True)
    assert labels == ["L0N5", "L1N5"]
    close(picked, neurons[[5, D_MLP + 5]][:, :, -1])
    picked, labels = cache.stack_neuron_results(1, neuron_slice=[3, 7], return_labels=True)
    assert labels == ["L0N3", "L0N7"]
    close(picked, neurons[[3, 7]])


def test_neuron_projection_equals_full_then_project(run: tuple) -> None:
    _, _, _, cache = run
    proj = torch.randn(D_MODEL, 3, generator=torch.Generator().manual_seed(5), dtype=DT)
    for apply_ln in (False, True):
        full = cache.stack_neuron_results(2, apply_ln=apply_ln, incl_remainder=True)
        close(
            cache.stack_neuron_results(2, apply_ln=apply_ln, incl_remainder=True, project_output_onto=proj),
            full @ proj,
        )
        close(
            cache.stack_neuron_results(2, apply_ln=apply_ln, project_output_onto=proj[:, 0]),
            full[:-1] @ proj[:, 0],
        )


# ----------------------------------------------------------------------------- full decomposition
def test_full_resid_decomposition_sums_to_resid(run: tuple) -> None:
    model, _, _, cache = run
    stack, labels = cache.get_full_resid_decomposition(return_labels=True)
    n_embeds = 2 if model.cfg.positional_embedding_type == "standard" else 1
    assert (
        stack.shape[0] == len(labels) == N_LAYERS * (N_HEADS + D_MLP) + n_embeds + 1 and labels[-1] == "bias"
    )
    close(stack.sum(0), cache["resid_post", -1])
    close(cache.get_full_resid_decomposition(1, mlp_input=True).sum(0), cache["resid_mid", 1])
    mlps, labels = cache.get_full_resid_decomposition(2, expand_neurons=False, return_labels=True)
    assert "1_mlp_out" in labels
    close(mlps.sum(0), cache["resid_pre", 2])
    close(cache.get_full_resid_decomposition(apply_ln=True).sum(0), cache["ln_final.hook_normalized"])
    proj = torch.randn(D_MODEL, 2, generator=torch.Generator().manual_seed(6), dtype=DT)
    for layer, mlp_input in ((None, False), (1, True), (2, False)):
        full = cache.get_full_resid_decomposition(layer, mlp_input, apply_ln=True)
        projected = cache.get_full_resid_decomposition(
            layer, mlp_input, apply_ln=True, project_output_onto=proj
        )
        close(projected, full @ proj)


# ------------------------------------------------------------------------------ logit attribution
@pytest.mark.parametrize("norm", ["LNPre", "RMSPre"])
def test_logit_attrs_sum_to_logits(norm: str) -> None:
    """With weightless norms (as after weight processing) attributions plus b_U are the logits."""
    model = build(normalization_type=norm, unembed_bias=True)
    toks = tokens()
    logits, cache = model.run_with_cache(toks)
    target = torch.randint(0, D_VOCAB, toks.shape, generator=torch.Generator().manual_seed(3))
    wrong = torch.randint(0, D_VOCAB, toks.shape, generator=torch.Generator().manual_seed(4))
    want = logits.gather(-1, target[..., None])[..., 0]  # [batch, pos]
    want_wrong = logits.gather(-1, wrong[..., None])[..., 0]

    # decompose_resid(apply_ln=True) is the normalized stream: unembedding it gives the logits.
    normed = cache.decompose_resid(apply_ln=True)
    close((normed @ model.W_U).sum(0) + model.b_U, logits)
    # logit_attrs applies the final norm's cached scale itself, so it takes the raw stack.
    for stack in (
        cache.decompose_resid(),
        cache.get_full_resid_decomposition(),
        cache.accumulated_resid()[-1:],
    ):
        attrs = cache.logit_attrs(stack, target)
        assert attrs.shape == (stack.shape[0], *toks.shape)
        close(attrs.sum(0) + model.b_U[target], want)
        diff = cache.logit_attrs(stack, target, incorrect_tokens=wrong)
        close(diff.sum(0) + model.b_U[target] - model.b_U[wrong], want - want_wrong)
    raw = cache.decompose_resid()
    last = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), target[:, -1], pos_slice=-1)
    close(last.sum(0) + model.b_U[target[:, -1]], want[:, -1])
    one = cache.logit_attrs(raw, target[1], batch_slice=1)
    close(one.sum(0) + model.b_U[target[1]], want[1])
    scalar = cache.logit_attrs(raw, 7)
    close(scalar.sum(0) + model.b_U[7], logits[..., 7])
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(raw, target, incorrect_tokens=wrong[0])


# ------------------------------------------------------------------------------- batch dimension
def test_remove_batch_dim(run: tuple) -> None:
    model, toks, _, _ = run
    _, cache = model.run_with_cache(toks[:1])
    assert cache.remove_batch_dim() is cache and not cache.has_batch_dim
    assert cache["resid_pre", 0].shape == (6, D_MODEL) and cache["pattern", 0].shape == (N_HEADS, 6, 6)
    close(cache.decompose_resid().sum(0), cache["resid_post", -1])
    close(
        cache.stack_head_results().sum(0).shape and cache.get_full_resid_decomposition().sum(0),
        cache["resid_post", -1],
    )
    close(cache.decompose_resid(apply_ln=True).sum(0), cache["ln_final.hook_normalized"])
    attrs = cache.logit_attrs(cache.decompose_resid(), toks[0], has_batch_dim=False)
    assert attrs.shape[1:] == (6,)
    with pytest.raises(ValueError, match="batch size 3"):
        model.run_with_cache(toks)[1].remove_batch_dim()


def test_apply_slice_to_batch_dim(run: tuple) -> None:
    model, toks, _, cache = run
    one = cache.apply_slice_to_batch_dim(1)
    _, alone = model.run_with_cache(toks[1:2])
    alone.remove_batch_dim()
    # (the shared cache also holds head results that stack_head_results computed and kept)
    assert not one.has_batch_dim and set(alone.keys()) <= set(one.keys())
    for key in alone:
        close(one[key], alone[key], tol=1e-9)
    two = cache.apply_slice_to_batch_dim([0, 2])
    assert two.has_batch_dim and two["resid_pre", 1].shape[0] == 2
    close(two.decompose_resid().sum(0), cache["resid_post", -1][[0, 2]])
    with pytest.raises(ValueError, match="without a batch dim"):
        one.apply_slice_to_batch_dim(0)


def test_to_and_toggle_autodiff(ln_run: tuple, caplog: pytest.LogCaptureFixture) -> None:
    _, _, _, cache = ln_run
    assert cache.to("cpu") is cache and cache["embed"].device.type == "cpu"
    before = torch.is_grad_enabled()
    try:
        with caplog.at_level(logging.WARNING):
            cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled() and "autodiff" in caplog.text
    finally:
        torch.set_grad_enabled(before)
