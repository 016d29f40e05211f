"""The KV cache and ``generate`` as TransformerLens documents them, against TransformerLens 3.9.

A tiny LLaMA-like model (RMS norms, rotary, grouped-query attention, gated MLP) built by
tests/fixtures/tl39/make_components.py with TransformerLens: telelens loads TransformerLens's own
``state_dict()``, gives its logits, and generates its greedy tokens with and without the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

import telelens
from telelens import HookedTransformer
from telelens.core.forward_context import HookedTransformerKeyValueCache

FIXTURES = Path(__file__).parents[1] / "fixtures" / "tl39"
TENSORS = load_file(FIXTURES / "components.safetensors")
CFG = next(c for c in json.loads((FIXTURES / "components.json").read_text()) if c["name"] == "model")["cfg"]


def _model() -> HookedTransformer:
    model = HookedTransformer(dict(CFG))
    state = {k.removeprefix("model.sd."): v for k, v in TENSORS.items() if k.startswith("model.sd.")}
    model.load_state_dict(state, strict=True)  # TransformerLens's names: W_Q, _W_K, W_gate, W_U, ...
    return model


def test_transformer_lens_state_dict_loads_and_gives_its_logits() -> None:
    model = _model()
    with torch.no_grad():
        logits = model(TENSORS["model.tokens"])
    torch.testing.assert_close(logits, TENSORS["model.logits"], atol=1e-5, rtol=1e-5)
    assert "blocks.0.attn.qkv_weight" in model.state_dict()  # the model's own names are unchanged


def test_greedy_generation_matches_transformer_lens_with_and_without_the_cache() -> None:
    model = _model()
    tokens = TENSORS["model.tokens"]
    kw = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    cached = model.generate(tokens, use_past_kv_cache=True, **kw)
    uncached = model.generate(tokens, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, TENSORS["model.generated"])


def test_cache_used_by_hand_as_transformer_lens_documents() -> None:
    """``init_cache(cfg, device, batch_size)``, a prefix pass, then one token at a time; a frozen
    cache is read and left as it is."""
    model = _model()
    tokens = TENSORS["model.tokens"]
    with torch.no_grad():
        full = model(tokens)
        cache = HookedTransformerKeyValueCache.init_cache(model.cfg, "cpu", tokens.shape[0])
        assert cache[0].past_keys.shape == (2, 0, CFG["n_key_value_heads"], CFG["d_head"])  # type: ignore[union-attr]
        model(tokens[:, :-1], past_kv_cache=cache)
        assert cache[1].past_keys.shape[1] == tokens.shape[1] - 1  # type: ignore[union-attr]
        cache.freeze()
        last = model(tokens[:, -1:], past_kv_cache=cache)
        again = model(tokens[:, -1:], past_kv_cache=cache)
        assert cache.entries[0].frozen and cache[0].past_keys.shape[1] == tokens.shape[1] - 1  # type: ignore[union-attr]
        cache.unfreeze()
        model(tokens[:, -1:], past_kv_cache=cache)
        assert cache[0].past_keys.shape[1] == tokens.shape[1]  # type: ignore[union-attr]
    torch.testing.assert_close(last[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, last)


def test_transformer_lens_cache_names() -> None:
    assert telelens.TransformerLensKeyValueCache is HookedTransformerKeyValueCache
    entry = telelens.TransformerLensKeyValueCacheEntry.init_cache_entry(dict(CFG), "cpu", 3)
    keys, values = entry.append(torch.ones(3, 2, 2, 4), torch.zeros(3, 2, 2, 4))
    assert keys.shape == values.shape == entry.past_values.shape == (3, 2, 2, 4)  # type: ignore[union-attr]


def test_sampled_generation_matches_transformer_lens_under_a_seed() -> None:
    """Sampling draws from torch's global generator with TransformerLens's ``sample_logits``: after the
    same ``torch.manual_seed``, the same tokens (top-k, temperature, frequency penalty)."""
    model = _model()
    kw = dict(
        max_new_tokens=8, do_sample=True, top_k=20, temperature=0.8, freq_penalty=0.5, stop_at_eos=False
    )
    for use_past_kv_cache in (True, False):
        torch.manual_seed(7)
        sampled = model.generate(
            TENSORS["model.tokens"], verbose=False, use_past_kv_cache=use_past_kv_cache, **kw
        )
        assert torch.equal(sampled, TENSORS["model.sampled"])
