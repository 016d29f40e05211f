"""Hook points: names, shapes, interventions, fused vs explicit attention, padding, KV cache."""

from __future__ import annotations

import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, NEOX_PARALLEL, tiny_model

from telelens.core.hooked_transformer import HookedTransformer, HookedTransformerKeyValueCache
from telelens.lens.hook_shapes import hook_shape_pattern

ARCHS = {
    "gpt2": GPT2,
    "llama_gqa": {**LLAMA_GQA, "tie_word_embeddings": True},
    "neox_parallel": NEOX_PARALLEL,
}


def make_model(arch: str, **overrides) -> HookedTransformer:
    return tiny_model(ARCHS[arch], norm_noise=0.1, **overrides)


@pytest.fixture(params=list(ARCHS))
def model(request) -> HookedTransformer:
    return make_model(request.param)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(1))


def _dims(model: HookedTransformer, batch: int, pos: int) -> dict[str, int]:
    cfg = model.cfg
    return {
        "batch": batch,
        "pos": pos,
        "query_pos": pos,
        "key_pos": pos,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "head_index": cfg.n_heads,
        "kv_head_index": int(cfg.n_key_value_heads),
        "d_mlp": int(cfg.d_mlp),
        "1": 1,
    }


EXPECTED_PER_BLOCK = [
    "hook_resid_pre",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "mlp.hook_pre",
    "mlp.hook_post",
]


def test_every_hook_fires_with_its_documented_shape(model, tokens):
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    _, cache = model.run_with_cache(tokens)
    names = set(cache.keys())
    for layer in range(model.cfg.n_layers):
        for suffix in [*EXPECTED_PER_BLOCK, "attn.hook_result", "hook_mlp_in"]:
            assert f"blocks.{layer}.{suffix}" in names
        if model.cfg.parallel_attn_mlp:
            assert f"blocks.{layer}.hook_resid_mid" not in model.hook_dict
        else:
            assert f"blocks.{layer}.hook_resid_mid" in names
        if model.cfg.positional_embedding_type == "rotary":
            assert {f"blocks.{layer}.attn.hook_rot_q", f"blocks.{layer}.attn.hook_rot_k"} <= names
        if model.cfg.gated_mlp:
            assert f"blocks.{layer}.mlp.hook_pre_linear" in names
    assert {"hook_embed", "ln_final.hook_scale", "ln_final.hook_normalized"} <= names
    assert ("hook_pos_embed" in names) == (model.cfg.positional_embedding_type == "standard")
    dims = _dims(model, *tokens.shape)
    for name in names:
        expected = tuple(dims[d] for d in hook_shape_pattern(name))
        assert tuple(cache[name].shape) == expected, name


def test_split_qkv_and_attn_in_hooks_fire_and_leave_logits_unchanged(model, tokens):
    ref = model(tokens)
    for setter, hook in [("set_use_split_qkv_input", "hook_q_input"), ("set_use_attn_in", "hook_attn_in")]:
        getattr(model, setter)(True)
        logits, cache = model.run_with_cache(tokens, names_filter=f"blocks.1.{hook}")
        assert cache[f"blocks.1.{hook}"].shape == (*tokens.shape, model.cfg.n_heads, model.cfg.d_model)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
        getattr(model, setter)(False)


def test_switched_off_hooks_are_refused_by_name():
    model = make_model("gpt2")
    with pytest.raises(ValueError, match="set_use_attn_result"):
        model.run_with_cache(torch.zeros(1, 3, dtype=torch.long), names_filter=["blocks.0.attn.hook_result"])
    with pytest.raises(ValueError, match="set_use_split_qkv_input"):
        model.add_hook("blocks.0.hook_q_input", lambda t, hook: t)


def test_unknown_hook_name_suggests_close_names():
    model = make_model("gpt2")
    with pytest.raises(KeyError, match=r"blocks\.0\.hook_resid_pre"):
        model.add_hook("blocks.0.hook_resid_pr", lambda t, hook: t)


def test_fused_and_explicit_attention_agree(model, tokens):
    fused_logits, fused = model.run_with_cache(
        tokens, names_filter=lambda n: "resid_post" in n or "hook_z" in n
    )
    explicit_logits, explicit = model.run_with_cache(
        tokens, names_filter=lambda n: "resid_post" in n or "hook_z" in n or "hook_pattern" in n
    )
    torch.testing.assert_close(fused_logits, explicit_logits, atol=1e-5, rtol=1e-5)
    for name in fused:
        torch.testing.assert_close(fused[name], explicit[name], atol=1e-5, rtol=1e-5)
    # the pattern really is a causal softmax
    pattern = explicit["pattern", 0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
    assert torch.all(pattern.triu(1) == 0)


def test_zero_ablating_attn_out_equals_recomputation_by_hand(model, tokens):
    layer = 1
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_attn_out", lambda t, hook: torch.zeros_like(t))]):
        logits, cache = model.run_with_cache(tokens)
    resid_pre = cache["resid_pre", layer]
    block = model.blocks[layer]
    if not model.cfg.parallel_attn_mlp:
        torch.testing.assert_close(cache["resid_mid", layer], resid_pre)
    expected_post = resid_pre + block.mlp(block.ln2(resid_pre))
    torch.testing.assert_close(cache["resid_post", layer], expected_post, atol=1e-5, rtol=1e-5)
    resumed = model(cache["resid_post", layer], start_at_layer=layer + 1)
    torch.testing.assert_close(resumed, logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, model(tokens), atol=1e-3)


def test_patching_one_head_of_z_moves_attn_out_by_that_head_only(model, tokens):
    layer, head = 2, 1
    _, clean = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_z", "hook_attn_out")))
    new_z = torch.randn_like(clean["z", layer][:, :, head])

    def set_head(z, hook):
        z[:, :, head] = new_z
        return z

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", set_head)]):
        _, patched = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.hook_attn_out")
    W_O = model.blocks[layer].attn.W_O[head]  # [d_head, d_model]
    expected = clean["attn_out", layer] + (new_z - clean["z", layer][:, :, head]) @ W_O
    torch.testing.assert_close(patched["attn_out", layer], expected, atol=1e-5, rtol=1e-5)


def test_replacing_the_pattern_changes_z_as_pattern_times_v(model, tokens):
    layer = 0
    uniform = torch.tril(torch.ones(tokens.shape[1], tokens.shape[1]))
    uniform = uniform / uniform.sum(-1, keepdim=True)
    with model.hooks(
        fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", lambda p, hook: uniform.expand_as(p).clone())]
    ):
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda n: n.startswith(f"blocks.{layer}.attn.hook_")
        )
    v = cache["v", layer].repeat_interleave(model.cfg.repeat_kv_heads, dim=2)  # [batch, pos, head, d_head]
    expected = torch.einsum("qk,bkhd->bqhd", uniform, v)
    torch.testing.assert_close(cache["z", layer], expected, atol=1e-5, rtol=1e-5)


def test_use_attn_result_sums_to_attn_out(model, tokens):
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.endswith(("hook_result", "hook_attn_out"))
    )
    for layer in range(model.cfg.n_layers):
        total = cache["result", layer].sum(2) + model.blocks[layer].attn.b_O
        torch.testing.assert_close(total, cache["attn_out", layer], atol=1e-5, rtol=1e-5)


def test_left_padding_gives_the_unpadded_numbers(model):
    gen = torch.Generator().manual_seed(3)
    short, long = torch.randint(1, 97, (5,), generator=gen), torch.randint(1, 97, (9,), generator=gen)
    tokens = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    tokens[0, 4:], mask[0, 4:] = short, 1
    tokens[1], mask[1] = long, 1
    for names in (None, lambda n: "resid_post" in n):  # explicit and fused attention paths
        logits, _ = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
        torch.testing.assert_close(logits[0, 4:], model(short[None])[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(logits[1], model(long[None])[0], atol=1e-4, rtol=1e-4)


def test_stop_and_start_at_layer_compose(model, tokens):
    resid = model(tokens, stop_at_layer=2)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.2.hook_resid_pre")
    torch.testing.assert_close(resid, cache["resid_pre", 2])
    torch.testing.assert_close(model(resid, start_at_layer=2), model(tokens), atol=1e-5, rtol=1e-5)
    assert model(tokens, return_type=None) is None


def test_kv_cache_steps_match_the_full_forward(model, tokens):
    full = model(tokens)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg)
    first = model(tokens[:, :6], past_kv_cache=cache)
    rest = [model(tokens[:, i : i + 1], past_kv_cache=cache) for i in range(6, tokens.shape[1])]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_with_multi_token_continuation(model, tokens):
    full = model(tokens)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg)
    a = model(tokens[:, :4], past_kv_cache=cache)
    b = model(tokens[:, 4:], past_kv_cache=cache)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_hooks_context_and_permanent_hooks(model, tokens):
    calls = []
    model.add_perma_hook("blocks.0.hook_resid_pre", lambda t, hook: calls.append("perma"))
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: calls.append("temp"))]):
        model(tokens)
    model(tokens)
    model.reset_hooks()
    model(tokens)
    assert calls == ["perma", "temp", "perma", "perma"]
    model.reset_hooks(including_permanent=True)
    model(tokens)
    assert len(calls) == 4
    assert all(not hp._forward_hooks for hp in model.hook_points())


def test_run_with_hooks_by_filter_and_hook_context(model, tokens):
    seen = []

    def record(t, hook):
        seen.append((hook.name, hook.layer()))

    model.run_with_hooks(tokens, fwd_hooks=[(lambda n: n.endswith("hook_resid_post"), record)])
    assert seen == [(f"blocks.{i}.hook_resid_post", i) for i in range(model.cfg.n_layers)]
    assert all(not hp._forward_hooks for hp in model.hook_points())


def test_backward_cache_holds_gradients(model, tokens):
    model.train()
    _, cache = model.run_with_cache(
        tokens, return_type="loss", names_filter=lambda n: n.endswith("hook_resid_post"), incl_bwd=True
    )
    grad = cache["blocks.1.hook_resid_post_grad"]
    assert grad.shape == cache["resid_post", 1].shape and grad.abs().sum() > 0


def test_loss_matches_cross_entropy(model, tokens):
    logits = model(tokens)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(model(tokens, return_type="loss"), expected, atol=1e-5, rtol=1e-5)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, tokens.shape[1] - 1)


def test_generate_greedy_with_and_without_kv_cache(model, tokens):
    a = model.generate(tokens[:1, :5], max_new_tokens=6, do_sample=False, stop_at_eos=False, verbose=False)
    b = model.generate(
        tokens[:1, :5],
        max_new_tokens=6,
        do_sample=False,
        stop_at_eos=False,
        use_past_kv_cache=False,
        verbose=False,
    )
    assert torch.equal(a, b) and a.shape == (1, 11)
    # each new token is the argmax of the full forward on its prefix
    for i in range(5, 11):
        assert model(a[:, :i])[0, -1].argmax() == a[0, i]
    topk1 = model.generate(tokens[:1, :5], max_new_tokens=6, top_k=1, stop_at_eos=False, verbose=False)
    assert torch.equal(topk1, a)


def test_generate_sampling_is_seeded_and_stops_at_eos(model, tokens):
    kw = dict(max_new_tokens=8, temperature=0.9, top_p=0.9, stop_at_eos=False, verbose=False)
    x = model.generate(tokens[:, :4], seed=5, **kw)
    y = model.generate(tokens[:, :4], seed=5, **kw)
    assert torch.equal(x, y)
    greedy = model.generate(
        tokens[:1, :4], max_new_tokens=1, do_sample=False, stop_at_eos=False, verbose=False
    )
    eos = int(greedy[0, -1])
    out = model.generate(tokens[:1, :4], max_new_tokens=8, do_sample=False, eos_token_id=eos, verbose=False)
    assert out.shape[1] == 5 and int(out[0, -1]) == eos


def test_in_place_hooks_on_split_projections_work_under_autograd(model, tokens):
    def zero_head(t, hook):
        t[:, :, 0] = 0.0
        return t

    names = ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v", "blocks.0.mlp.hook_pre"]
    if model.cfg.gated_mlp:
        names.append("blocks.0.mlp.hook_pre_linear")
    loss = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(n, zero_head) for n in names])
    loss.backward()
    assert model.embed.W_E.grad is not None
