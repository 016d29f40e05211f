"""Weight processing (fold LN, centre, fold value biases, refactor) keeps what the model computes."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from telelens.core import weight_processing as wp
from telelens.core.hooked_transformer import HookedTransformer

ARCHS: dict[str, dict] = {
    # GPT-2-like: LN, learned positions, every bias, an unembedding bias.
    "gpt2": dict(act_fn="gelu_new", unembed_bias=True),
    # LLaMA-like: RMS, rotary, gated, GQA, no biases at all.
    "llama_gqa": dict(
        positional_embedding_type="rotary",
        normalization_type="RMS",
        gated_mlp=True,
        act_fn="silu",
        n_key_value_heads=2,
        attn_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
    ),
    # Qwen2-like: RMS + GQA with Q/K/V biases but no output bias (value bias folds per KV head).
    "qwen_gqa": dict(
        positional_embedding_type="rotary",
        normalization_type="RMS",
        gated_mlp=True,
        act_fn="silu",
        n_key_value_heads=2,
        attn_out_bias=False,
        mlp_bias=False,
    ),
    # GPT-NeoX-like: parallel attention + MLP, partial rotary, LN.
    "neox_parallel": dict(
        positional_embedding_type="rotary", rotary_dim=4, parallel_attn_mlp=True, act_fn="gelu"
    ),
    # GPT-Neo-like: LN but no attention/MLP biases (folding has to create them).
    "ln_no_bias": dict(attn_bias=False, attn_out_bias=False, mlp_bias=False, act_fn="gelu"),
    # LN with a gated MLP: the LN bias must reach the gate rows too.
    "ln_gated": dict(gated_mlp=True, act_fn="silu", n_key_value_heads=2),
    "attn_only": dict(attn_only=True),
    # Tied embeddings, LN and RMS.
    "tied_ln": dict(tie_word_embeddings=True),
    "tied_rms": dict(
        positional_embedding_type="rotary",
        normalization_type="RMS",
        gated_mlp=True,
        act_fn="silu",
        attn_bias=False,
        attn_out_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
    ),
}
UNTIED = [a for a, kw in ARCHS.items() if not kw.get("tie_word_embeddings")]
TIED = [a for a, kw in ARCHS.items() if kw.get("tie_word_embeddings")]
LN_ARCHS = [a for a, kw in ARCHS.items() if kw.get("normalization_type", "LN") == "LN"]


def make_model(arch: str, **overrides) -> HookedTransformer:
    # norms at 1 and biases at 0 would make folding trivial: perturb them
    sizes = dict(n_layers=2, n_ctx=32, d_vocab=61, d_mlp=48, initializer_range=0.2)
    return tiny_model(ARCHS[arch], norm_noise=0.5, **{**sizes, **overrides})


TOKENS = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(2))


def log_probs(model: HookedTransformer) -> torch.Tensor:
    with torch.no_grad():
        return F.log_softmax(model(TOKENS).double(), dim=-1)


def assert_same_log_probs(before: torch.Tensor, model: HookedTransformer) -> None:
    after = log_probs(model)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


def params_snapshot(model: HookedTransformer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- whole pipeline
@pytest.mark.parametrize("arch", list(ARCHS))
def test_full_pipeline_keeps_log_probs(arch: str) -> None:
    model = make_model(arch)
    before = log_probs(model)
    hooks_before = set(model.hook_dict)
    model.process_weights_()
    assert_same_log_probs(before, model)
    assert set(model.hook_dict) == hooks_before  # no hook point added or lost
    assert model.cfg.normalization_type in ("LNPre", "RMSPre")
    # fold_ln gives a tied model's W_U its own tensor (TransformerLens's layout): ln_final folds too
    assert model.unembed.weight is not model.embed.W_E and not model.cfg.tie_word_embeddings
    assert model.ln_final is not None and model.ln_final.w is None


@pytest.mark.parametrize("arch", UNTIED)
def test_processed_model_rebuilds_from_its_cfg(arch: str) -> None:
    """Created biases are reflected in cfg: a model built from cfg loads the state dict strictly."""
    model = make_model(arch)
    wp.process_weights(model)
    fresh = HookedTransformer(copy.deepcopy(model.cfg), init_weights=False).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(log_probs(fresh), log_probs(model), atol=0, rtol=0)


def test_full_pipeline_matches_expected_gpt2_structure() -> None:
    model = make_model("gpt2")
    wp.process_weights(model)
    W_U = model.W_U  # [d_model, d_vocab]
    torch.testing.assert_close(W_U.mean(1), torch.zeros(32), atol=1e-6, rtol=0)  # centred over vocab
    torch.testing.assert_close(W_U.mean(0), torch.zeros(61), atol=1e-6, rtol=0)  # centred over d_model
    torch.testing.assert_close(model.b_U.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(model.b_V, torch.zeros_like(model.b_V), atol=0, rtol=0)
    torch.testing.assert_close(model.b_O.mean(-1), torch.zeros(2), atol=1e-6, rtol=0)
    for W in (model.W_Q, model.W_K, model.W_V):  # reading weights centred over d_model by fold_ln
        torch.testing.assert_close(W.mean(-2), torch.zeros_like(W.mean(-2)), atol=1e-6, rtol=0)
    assert model.ln_final is not None
    assert model.ln_final.w is None and model.ln_final.b is None


# ---------------------------------------------------------------------------- steps alone
STEPS = {
    "fold_ln": wp.fold_layer_norm,
    "center_writing_weights": wp.center_writing_weights,
    "fold_value_biases": wp.fold_value_biases,
}


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_step_alone_keeps_log_probs(arch: str, step: str) -> None:
    model = make_model(arch)
    before = log_probs(model)
    STEPS[step](model)
    assert_same_log_probs(before, model)


@pytest.mark.parametrize("arch", UNTIED)
def test_center_unembed_shifts_logits_by_a_constant_per_position(arch: str) -> None:
    model = make_model(arch)
    with torch.no_grad():
        before = model(TOKENS)
    wp.center_unembed(model)
    with torch.no_grad():
        after = model(TOKENS)
    shift = after - before  # [batch, pos, d_vocab]
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), atol=1e-5, rtol=0)
    assert shift[..., 0].abs().max() > 1e-3  # the logits did move
    torch.testing.assert_close(model.W_U.mean(1), torch.zeros(32), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- fold_ln details
def _cache(model: HookedTransformer) -> dict[str, torch.Tensor]:
    names = lambda n: n.endswith(("hook_normalized", "hook_scale")) or "resid" in n  # noqa: E731
    with torch.no_grad():
        _, cache = model.run_with_cache(TOKENS, names_filter=names, return_cache_object=False)
    return {k: v.clone() for k, v in cache.items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama_gqa", "neox_parallel", "attn_only"])
def test_fold_ln_makes_pre_norms_and_keeps_normalized_activations(arch: str) -> None:
    model = make_model(arch)
    before = _cache(model)
    wp.fold_layer_norm(model)
    after = _cache(model)
    pre = "RMSPre" if ARCHS[arch].get("normalization_type") == "RMS" else "LNPre"
    assert model.cfg.normalization_type == pre
    norms = [model.ln_final] + [getattr(b, n) for b in model.blocks for n in ("ln1", "ln2") if hasattr(b, n)]
    for norm in norms:
        assert norm.kind == pre and norm.w is None and norm.b is None
        assert "w" not in dict(norm.named_parameters())
    assert not any(k.endswith((".w", ".b")) for k in model.state_dict())
    # fold_ln does not touch the residual stream; normalized values (before the affine part) agree.
    assert set(after) == set(before) and any(k.endswith("hook_normalized") for k in after)
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=1e-5, rtol=1e-5, msg=k)


def test_fold_ln_folds_ln_bias_into_gate_rows() -> None:
    model = make_model("ln_gated")
    before = log_probs(model)
    wp.fold_layer_norm(model)
    assert_same_log_probs(before, model)
    mlp = model.blocks[0].mlp
    gate_rows = mlp.in_weight[: mlp.d_mlp]
    in_rows = mlp.in_weight[mlp.d_mlp :]
    torch.testing.assert_close(in_rows.mean(-1), torch.zeros(mlp.d_mlp), atol=1e-6, rtol=0)  # W_in centred
    assert gate_rows.mean(-1).abs().max() > 1e-3  # W_gate is not (as in TransformerLens)


def test_fold_ln_creates_missing_biases_and_sets_cfg() -> None:
    model = make_model("ln_no_bias")
    assert model.blocks[0].attn.qkv_bias is None and model.unembed.bias is None
    before = log_probs(model)
    wp.fold_layer_norm(model)
    assert_same_log_probs(before, model)
    cfg = model.cfg
    assert cfg.attn_bias and cfg.mlp_bias and cfg.unembed_bias
    for block in model.blocks:
        assert block.attn.qkv_bias is not None and block.mlp.in_bias is not None
        assert block.mlp.out_bias is not None and not block.mlp.out_bias.any()
    assert model.unembed.bias is not None and model.unembed.bias.abs().max() > 0


def test_rms_fold_creates_no_biases() -> None:
    model = make_model("llama_gqa")
    wp.process_weights(model)
    assert model.blocks[0].attn.qkv_bias is None and model.blocks[0].mlp.in_bias is None
    assert model.unembed.bias is None and not model.cfg.attn_bias


def test_fold_ln_twice_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("gpt2")
    wp.fold_layer_norm(model)
    snap = params_snapshot(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.fold_layer_norm(model)
    assert "already folded" in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_no_norm_model_is_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("gpt2", normalization_type=None)
    before = log_probs(model)
    snap = params_snapshot(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.process_weights(model)
    assert "no normalization" in caplog.text and "skipped" in caplog.text
    assert_same_log_probs(before, model)
    assert torch.equal(model.embed.W_E, snap["embed.W_E"])


# ---------------------------------------------------------------------------- centring
@pytest.mark.parametrize("arch", ["gpt2", "neox_parallel", "ln_no_bias", "attn_only"])
def test_center_writing_weights_zero_means_and_residual(arch: str) -> None:
    model = make_model(arch)
    before = _cache(model)
    wp.center_writing_weights(model)
    after = _cache(model)
    zero = lambda t: torch.testing.assert_close(t, torch.zeros_like(t), atol=1e-6, rtol=0)  # noqa: E731
    zero(model.W_E.mean(-1))
    if hasattr(model, "pos_embed"):
        zero(model.W_pos.mean(-1))
    zero(model.W_O.mean(-1))
    zero(model.b_O.mean(-1))
    if not model.cfg.attn_only:
        zero(model.W_out.mean(-1))
        zero(model.b_out.mean(-1))
    # Everything writing to the residual is linear, so the residual just loses its mean.
    for k in before:
        if "resid" in k:
            expected = before[k] - before[k].mean(-1, keepdim=True)
            torch.testing.assert_close(after[k], expected, atol=1e-5, rtol=1e-5, msg=k)
            zero(after[k].mean(-1))
        else:  # norms see the same thing
            torch.testing.assert_close(after[k], before[k], atol=1e-5, rtol=1e-5, msg=k)


@pytest.mark.parametrize("arch", ["llama_gqa", "tied_rms"])
def test_center_writing_weights_skips_rms(arch: str, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model(arch)
    snap = params_snapshot(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.center_writing_weights(model)
    assert "skipped for normalization_type=RMS" in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


# ---------------------------------------------------------------------------- value biases
@pytest.mark.parametrize("arch", ["gpt2", "qwen_gqa", "ln_gated"])
def test_fold_value_biases_zeroes_b_V(arch: str) -> None:
    model = make_model(arch)
    before = log_probs(model)
    assert model.b_V.abs().max() > 0
    b_O_before = model.b_O.clone()
    wp.fold_value_biases(model)
    assert_same_log_probs(before, model)
    assert not model.b_V.any()
    attn = model.blocks[0].attn
    assert attn._b_V.shape == (attn.n_kv_heads, attn.d_head)
    assert not torch.allclose(model.b_O, b_O_before)
    if arch == "qwen_gqa":  # b_O had to be created
        assert model.cfg.attn_out_bias and attn.o_bias is not None


def test_fold_value_biases_matches_the_formula_under_gqa() -> None:
    model = make_model("qwen_gqa")
    attn = model.blocks[1].attn
    expected = torch.einsum("hd,hdm->m", attn.b_V, attn.W_O)  # b_V repeated to query heads
    wp.fold_value_biases(model)
    torch.testing.assert_close(attn.b_O, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- tied embeddings
@pytest.mark.parametrize("arch", TIED)
def test_tied_fold_ln_unties_and_folds_final_norm(arch: str, caplog: pytest.LogCaptureFixture) -> None:
    """As TransformerLens: W_U = diag(ln_final.w) @ W_E.T as its own tensor (LN: centred over
    d_model, ln_final.b folded into b_U); W_E is unchanged; ln_final becomes Pre."""
    model = make_model(arch)
    assert model.ln_final is not None
    kind, w = model.ln_final.kind, model.ln_final.w.detach().clone()
    b = None if model.ln_final.b is None else model.ln_final.b.detach().clone()
    W_E = model.embed.W_E.detach().clone()
    before = log_probs(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.fold_layer_norm(model)
    assert "embeddings are tied" in caplog.text and "MiB extra" in caplog.text
    assert_same_log_probs(before, model)
    assert model.ln_final.kind == kind + "Pre" and model.ln_final.w is None
    assert "ln_final_kind" not in model.cfg.extra
    assert all(b.ln1.kind == kind + "Pre" for b in model.blocks)
    assert torch.equal(model.embed.W_E, W_E) and model.unembed.weight is not model.embed.W_E
    assert not model.cfg.tie_word_embeddings and not model.has_weight("ln_final.w")
    W_U = W_E.T * w[:, None]  # [d_model, d_vocab]
    if kind == "LN":
        W_U = W_U - W_U.mean(0, keepdim=True)
        torch.testing.assert_close(model.b_U, W_E @ b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.W_U, W_U, atol=1e-6, rtol=1e-5)
    cache = _cache(model)
    assert "ln_final.hook_normalized" in cache and "blocks.0.ln1.hook_normalized" in cache


def test_tied_center_writing_weights_leaves_W_E(caplog: pytest.LogCaptureFixture) -> None:
    model = make_model("tied_ln")
    W_E = model.embed.W_E.detach().clone()
    before = log_probs(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.center_writing_weights(model)
    assert "W_E is left uncentred" in caplog.text
    assert torch.equal(model.embed.W_E, W_E)
    assert_same_log_probs(before, model)
    torch.testing.assert_close(model.W_pos.mean(-1), torch.zeros(32), atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", TIED)
def test_tied_center_unembed_raises_and_changes_nothing(arch: str) -> None:
    model = make_model(arch)
    snap = params_snapshot(model)
    with pytest.raises(ValueError, match="untie_embeddings"):
        wp.center_unembed(model)
    with pytest.raises(ValueError, match="tie"):
        wp.process_weights(model, fold_ln=False)  # center_unembed=True by default; nothing unties
    with pytest.raises(ValueError, match="tie"):
        model.process_weights_(fold_ln=False)
    assert model.cfg.normalization_type == ARCHS[arch].get("normalization_type", "LN")
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


@pytest.mark.parametrize("arch", TIED)
def test_untie_then_full_pipeline(arch: str, caplog: pytest.LogCaptureFixture) -> None:
    model = make_model(arch)
    W_E = model.embed.W_E.detach().clone()
    before = log_probs(model)
    with caplog.at_level(logging.WARNING, logger=wp.__name__):
        wp.untie_embeddings(model)
    assert "MiB extra" in caplog.text
    assert not model.cfg.tie_word_embeddings and model.unembed.weight is not model.embed.W_E
    wp.center_unembed(model)
    assert torch.equal(model.embed.W_E, W_E)  # only the unembedding's copy moved
    assert_same_log_probs(before, model)
    wp.process_weights(model)  # now everything applies, ln_final folds too
    assert_same_log_probs(before, model)
    assert model.ln_final is not None
    assert model.ln_final.w is None and "ln_final_kind" not in model.cfg.extra
    fresh = HookedTransformer(copy.deepcopy(model.cfg), init_weights=False).eval()
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_untie_is_a_no_op_when_untied() -> None:
    model = make_model("gpt2")
    weight = model.unembed.weight
    wp.untie_embeddings(model)
    assert model.unembed.weight is weight


# ---------------------------------------------------------------------------- refactor
@pytest.mark.parametrize("arch", ["gpt2", "ln_no_bias", "attn_only"])
def test_refactor_factored_attn_matrices_keeps_log_probs(arch: str) -> None:
    model = make_model(arch)
    QK = model.QK.AB.clone()
    OV = model.OV.AB.clone()
    before = log_probs(model)
    model.process_weights_(refactor_factored_attn_matrices=True)
    assert_same_log_probs(before, model)
    model2 = make_model(arch)
    model2.process_weights_()
    torch.testing.assert_close(model.OV.AB, model2.OV.AB, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(model.OV.AB, OV) and not torch.allclose(model.QK.AB, QK)  # processed
    # W_O is now a rotation-like factor (orthonormal rows per head); W_Q and W_K balanced.
    W_O = model.W_O  # [layer, head, d_head, d_model]
    eye = torch.eye(8).expand(W_O.shape[0], W_O.shape[1], 8, 8)
    torch.testing.assert_close(W_O @ W_O.transpose(-1, -2), eye, atol=1e-4, rtol=0)
    # Balanced counting the bias as an extra input row (its coordinate is always 1).
    q_eff = torch.cat([model.W_Q, model.b_Q[:, :, None]], dim=-2)
    k_eff = torch.cat([model.W_K, model.b_K[:, :, None]], dim=-2)
    torch.testing.assert_close(q_eff.norm(dim=-2), k_eff.norm(dim=-2), atol=1e-4, rtol=1e-4)


def test_refactor_refuses_rotary_and_gqa_before_changing_anything() -> None:
    rotary = make_model("neox_parallel")
    snap = params_snapshot(rotary)
    with pytest.raises(ValueError, match="rotary"):
        wp.process_weights(rotary, refactor_factored_attn_matrices=True)
    for k, v in rotary.state_dict().items():
        assert torch.equal(v, snap[k]), k
    gqa = make_model("ln_gated")  # learned positions, 2 KV heads for 4 query heads
    with pytest.raises(NotImplementedError, match="grouped-query"):
        wp.refactor_factored_attn_matrices(gqa)


# ---------------------------------------------------------------------------- dtype
def test_bf16_processing_keeps_dtype_and_is_close() -> None:
    model = make_model("llama_gqa")
    before = log_probs(model)
    model = model.to(torch.bfloat16)
    model.cfg.dtype = torch.bfloat16
    wp.process_weights(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    torch.testing.assert_close(log_probs(model), before, atol=0.15, rtol=0)
