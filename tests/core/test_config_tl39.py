"""HookedTransformerConfig as TransformerLens 3.9 documents it: inferred fields, TL's fields, unwrap.

Expected values come from TransformerLens 3.9 (tests/fixtures/tl39/make_api.py -> api.json).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from tl39_fixtures import API, make_tokenizer

from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer

TL = API["config"]


@pytest.mark.parametrize("case", TL["cases"], ids=lambda c: ",".join(sorted(c["kwargs"])))
def test_inferred_fields_match_transformer_lens(case):
    cfg = HookedTransformerConfig(**case["kwargs"])
    for name, expected in case["inferred"].items():
        got = getattr(cfg, name)
        if name == "attn_scale" and not cfg.use_attn_scale:
            # TL leaves -1.0 and skips the division; telelens stores the divisor it uses: 1.
            assert expected == -1.0 and got == 1.0
        elif isinstance(expected, float):
            assert got == pytest.approx(expected, rel=1e-12), name
        else:
            assert got == expected, name


def test_every_transformer_lens_field_is_accepted_with_its_default():
    cfg = HookedTransformerConfig(d_model=16, d_head=4, n_layers=1, n_ctx=8, d_vocab=10)
    assert set(TL["required"]) == {"d_model", "d_head", "n_layers", "n_ctx"}
    inferred = {"n_heads", "d_mlp", "d_vocab", "d_vocab_out", "attn_scale", "initializer_range", "n_params"}
    # Deliberate: telelens keeps n_key_value_heads = n_heads, device None (cpu), and False for
    # tokenizer_prepends_bos until a tokenizer is attached.
    kept = {"n_key_value_heads", "device", "tokenizer_prepends_bos"}
    for name, default in TL["fields"].items():
        assert hasattr(cfg, name), name
        if name in inferred | kept:
            continue
        got = getattr(cfg, name)
        got = str(got).removeprefix("torch.") if isinstance(got, torch.dtype) else got
        assert got == default, f"{name}: {got!r} != TL's {default!r}"


def test_tl_fields_are_accepted_and_round_trip():
    cfg = HookedTransformerConfig(
        d_model=32, d_head=8, n_layers=2, n_ctx=16, d_vocab=50, attention_dir="causal", use_local_attn=False,
        window_size=4, attn_types=["global", "global"], rotary_base_local=10.0, ungroup_grouped_query_attention=False,
        init_mode="gpt2", original_architecture="GPT2LMHeadModel", checkpoint_index=3, checkpoint_label_type="step",
        checkpoint_value=1000, use_NTK_by_parts_rope=False, normalization_type="LNPre", from_checkpoint=True,
    )  # fmt: skip
    again = HookedTransformerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.checkpoint_value == 1000 and again.window_size == 4


@pytest.mark.parametrize(
    "field,value",
    [
        ("attention_dir", "bidirectional"), ("use_local_attn", True), ("ungroup_grouped_query_attention", True),
        ("init_mode", "xavier_uniform"), ("use_NTK_by_parts_rope", True), ("normalization_type", "BatchNorm"),
        ("positional_embedding_type", "shortformer"), ("act_fn", "solu_ln"), ("attn_scores_soft_cap", 50.0),
        ("num_experts", 4), ("final_rms", True), ("rotary_scaling_factor", 8.0), ("post_embedding_ln", True),
    ],
)  # fmt: skip
def test_values_the_core_cannot_build_are_refused_by_name(field, value):
    kwargs = dict(d_model=32, d_head=8, n_layers=1, n_ctx=16, d_vocab=20)
    if field == "use_local_attn":
        kwargs.update(window_size=4, attn_types=["local"])
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        HookedTransformerConfig(**kwargs, **{field: value})


def test_n_heads_must_divide():
    with pytest.raises(ValueError, match="divisible"):
        HookedTransformerConfig(d_model=30, d_head=8, n_layers=1, n_ctx=4, d_vocab=5)


def test_unwrap_takes_a_config_or_a_dict():
    d = dict(d_model=32, d_head=8, n_layers=1, n_ctx=16, d_vocab=20)
    cfg = HookedTransformerConfig.unwrap(d)
    assert isinstance(cfg, HookedTransformerConfig) and cfg.n_heads == 4
    assert HookedTransformerConfig.unwrap(cfg) is cfg

    class Other:  # any config-like object with to_dict (TL's TransformerLensConfig path)
        def to_dict(self):
            return d

    assert HookedTransformerConfig.unwrap(Other()) == cfg


def test_methods_and_seed_everywhere():
    cfg = HookedTransformerConfig(d_model=32, d_head=8, n_layers=1, n_ctx=16, d_vocab=20, seed=11)
    a = (torch.rand(3), random.random(), np.random.rand())
    cfg.set_seed_everywhere(11)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert not cfg.is_layer_norm_activation()
    assert repr(cfg).startswith("HookedTransformerConfig:\n{")


def test_d_vocab_from_the_tokenizer():
    cfg = HookedTransformerConfig(d_model=32, d_head=8, n_layers=1, n_ctx=16, act_fn="relu")
    assert cfg.d_vocab == -1
    model = HookedTransformer(cfg, tokenizer=make_tokenizer())
    assert {"d_vocab": model.cfg.d_vocab, "d_vocab_out": model.cfg.d_vocab_out} == TL["from_tokenizer"]
    assert model.W_E.shape == (TL["from_tokenizer"]["d_vocab"], 32)
    with pytest.raises(ValueError, match="tokenizer"):
        HookedTransformer(dict(d_model=32, d_head=8, n_layers=1, n_ctx=16))


def test_model_from_a_dict_and_init_weights_flag():
    model = HookedTransformer(dict(d_model=16, d_head=4, n_layers=1, n_ctx=8, d_vocab=11, init_weights=False))
    assert model.cfg.n_heads == 4 and model.cfg.act_fn == "relu"
    assert model.cfg.n_params == 1 * (4 * 16 * 4 * 4 + 2 * 16 * 64)
