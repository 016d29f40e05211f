"""Seed workflows as intervention graphs, local mode, against hand-written run_with_hooks.

Patching loop, IOI-style direct logit attribution and the induction-pattern read-out, on a
random tiny model and on the real SmolLM2: the graph result must equal the hand-written
TransformerLens-style code exactly (fp32, CPU).
"""

from __future__ import annotations

import pytest
import torch

from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer
from telelens.protos import codec


@pytest.fixture(scope="module")
def tiny() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=97, seed=0,
        positional_embedding_type="rotary", normalization_type="RMS", gated_mlp=True, act_fn="silu",
        n_key_value_heads=2, attn_bias=False, attn_out_bias=False, mlp_bias=False,
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def patching_loop_by_hand(model, clean, corrupt, right, wrong, layers):
    _, cache = model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
    out = torch.zeros(len(layers), corrupt.shape[1])
    for i, layer in enumerate(layers):
        for pos in range(corrupt.shape[1]):

            def hook(t, hook, pos=pos, layer=layer):
                t[:, pos] = cache["resid_pre", layer][:, pos]
                return t

            logits = model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)])
            out[i, pos] = logits[0, -1, right] - logits[0, -1, wrong]
    return out


def patching_loop_as_graph(model, clean, corrupt, right, wrong, layers):
    saved = {}
    with model.trace() as t:
        c = t.run(clean)
        for layer in layers:
            for pos in range(corrupt.shape[1]):
                r = t.run(corrupt)
                hook = f"blocks.{layer}.hook_resid_pre"
                r[hook][:, pos] = c[hook][:, pos]
                saved[layer, pos] = t.save(r.logits[0, -1, right] - r.logits[0, -1, wrong])
    out = torch.zeros(len(layers), corrupt.shape[1])
    for i, layer in enumerate(layers):
        for pos in range(corrupt.shape[1]):
            out[i, pos] = saved[layer, pos].value
    return out


def test_patching_loop_graph_equals_hand_written_tiny(tiny):
    gen = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randint(0, 97, (1, 6), generator=gen), torch.randint(0, 97, (1, 6), generator=gen)
    with torch.no_grad():
        expected = patching_loop_by_hand(tiny, clean, corrupt, 3, 5, range(3))
    got = patching_loop_as_graph(tiny, clean, corrupt, 3, 5, range(3))
    # separate runs of one batch are batched by the executor: equal to within float reordering
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_trace_survives_the_wire(tiny):
    """build -> serialize -> parse -> execute equals build -> execute."""
    tokens = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    with tiny.trace() as t:
        r = t.run(tokens)
        r["blocks.1.hook_resid_post"][:, 2] = 0.0
        s = t.save((r.logits.log_softmax(-1)[:, -1] @ t.W_U.transpose(0, 1)).mean(0))
    wire = codec.graph_from_bytes(codec.graph_to_bytes(t.graph))
    from telelens.core.graph import execute

    assert torch.equal(execute(tiny, wire)[s.name], s.value)


@pytest.mark.slow
def test_eiffel_tower_patching_on_smollm2(smollm2):
    model = smollm2
    clean, corrupt = (
        model.to_tokens("The Eiffel Tower is in the city of"),
        model.to_tokens("The Colosseum is in the city of"),
    )
    paris, rome = model.to_single_token(" Paris"), model.to_single_token(" Rome")
    layers = [0, 12, 24]
    with torch.no_grad():
        expected = patching_loop_by_hand(model, clean, corrupt, paris, rome, layers)
    got = patching_loop_as_graph(model, clean, corrupt, paris, rome, layers)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # real behaviour: the clean answer wins, and patching the subject token early restores it
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean), model(corrupt)
    assert clean_logits[0, -1, paris] > clean_logits[0, -1, rome]
    assert corrupt_logits[0, -1, rome] > corrupt_logits[0, -1, paris]
    last = clean.shape[1] - 1
    assert got[0, 3] > 0  # layer 0, token "iffel"/"osse": subject information lives there early
    assert got[2, last] > got[0, last]  # by layer 24 it has moved to the final position


@pytest.mark.slow
def test_ioi_direct_logit_attribution_on_smollm2(smollm2):
    """Per-head DLA of the last position onto (IO - S), as a graph vs by hand from the cache."""
    model = smollm2
    prompt = "When Mary and John went to the store, John gave a drink to"
    tokens = model.to_tokens(prompt)
    io, s = model.to_single_token(" Mary"), model.to_single_token(" John")
    direction = model.W_U[:, io] - model.W_U[:, s]  # [d_model]
    layer = 20
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        z = cache["z", layer][:, -1]  # [batch, head, d_head]
        per_head = z[:, :, None, :] @ model.blocks[layer].attn.W_O  # [batch, head, 1, d_model]
        scale = cache["ln_final.hook_scale"][:, -1]  # [batch, 1]
        expected = ((per_head[:, :, 0] / scale[:, None]) @ direction).mean(0)  # [head]
    with model.trace() as t:
        r = t.run(tokens)
        zz = r[f"blocks.{layer}.attn.hook_z"][:, -1]
        ph = zz[:, :, None, :] @ t.W_O[layer]
        sc = r["ln_final.hook_scale"][:, -1]
        got = t.save(((ph[:, :, 0] / sc[:, None]) @ direction).mean(0))
    # same ops in the same order; only the weight's memory layout differs (contiguous copy): ~1e-8
    torch.testing.assert_close(got.value, expected, atol=1e-6, rtol=0)
    # and it agrees with ActivationCache's own DLA (scaled by ln_final's cached scale)
    stack = cache.stack_head_results(
        layer=-1, pos_slice=-1, apply_ln=True
    )  # [comp, batch, d_model], final scale
    heads = stack[layer * model.cfg.n_heads : (layer + 1) * model.cfg.n_heads]  # this layer's heads
    torch.testing.assert_close((heads @ direction).mean(-1), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_induction_pattern_readout_on_smollm2(smollm2):
    """Mean attention to the token after the previous occurrence, for layers 17-18."""
    model = smollm2
    half = 20
    rand = torch.randint(1000, 10000, (1, half), generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([torch.ones(1, 1, dtype=torch.long), rand, rand], dim=1)  # BOS + repeated sequence
    q = torch.arange(half + 1, 2 * half + 1)
    k = q - half + 1  # induction target: the token after the earlier copy
    layers = [17, 18]
    with torch.no_grad():
        # cache the same patterns the graph reads, so the same layers take the explicit attention path
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
        _, cache = model.run_with_cache(tokens, names_filter=names)
        expected = torch.stack([cache["pattern", layer][0][:, q, k].mean(-1) for layer in layers])
    with model.trace() as t:
        r = t.run(tokens)
        saved = [t.save(r[f"blocks.{layer}.attn.hook_pattern"][0][:, q, k].mean(-1)) for layer in layers]
    got = torch.stack([s.value for s in saved])
    assert torch.equal(got, expected)
    assert got.max() > 0.5, f"expected a real induction head in layers 17-18, best score {got.max():.2f}"
