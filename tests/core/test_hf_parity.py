"""Golden tests: telelens logits equal Hugging Face's for every supported architecture.

Tiny seeded random models of each architecture are saved with ``save_pretrained`` and
loaded back with ``from_pretrained_no_processing``; the real SmolLM2-135M comes from its
GGUF. Hugging Face runs its default attention (sdpa): fused-kernel differences stay far
below the 1e-4 tolerance.
"""

from __future__ import annotations

import pytest
import torch

from telelens.core.hooked_transformer import HookedTransformer
from telelens.core.loading import cache as gguf_cache

TOL = 1e-4


def load(folder, **kwargs):
    return HookedTransformer.from_pretrained_no_processing(str(folder), device="cpu", **kwargs)


def tokens(vocab: int, batch: int = 2, pos: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# One architecture per case; some cases also exercise a checkpoint format.
CASES = {
    "gpt2": {"fmt": "gpt2_hub_bin"},  # pytorch_model.bin laid out like the hub's gpt2
    "llama_gqa": {"max_shard_size": "40KB"},  # sharded safetensors + index
    "llama3_rope": {},
    "llama_tied": {},
    "mistral": {},
    "qwen2": {},
    "neox_parallel": {},
    "neox_sequential": {"max_shard_size": "40KB"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_hf(tiny_hf, name):
    hf, folder = tiny_hf(name, **CASES[name])
    model = load(folder)
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(toks).logits
        got = model(toks)
    assert got.shape == expected.shape
    assert max_diff(got, expected) <= TOL, name
    assert model.cfg.original_architecture == type(hf).__name__


def test_checkpoint_formats_were_exercised(tiny_hf):
    _, bin_folder = tiny_hf("gpt2", **CASES["gpt2"])
    assert (bin_folder / "pytorch_model.bin").is_file() and not list(bin_folder.glob("*.safetensors"))
    _, sharded = tiny_hf("llama_gqa", **CASES["llama_gqa"])
    assert (sharded / "model.safetensors.index.json").is_file() and len(
        list(sharded.glob("*.safetensors"))
    ) > 1


def test_sharded_bin(tiny_hf):
    hf, folder = tiny_hf("neox_parallel", fmt="sharded_bin")
    assert (folder / "pytorch_model.bin.index.json").is_file()
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        assert max_diff(load(folder)(toks), hf(toks).logits) <= TOL


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "qwen2", "neox_parallel"])
def test_left_padded_batch_matches_hf(tiny_hf, name):
    hf, folder = tiny_hf(name)
    model = load(folder)
    toks = tokens(hf.config.vocab_size, batch=3, pos=12)
    mask = torch.ones_like(toks)
    mask[1, :4] = 0  # left padding
    mask[2, :7] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(toks, attention_mask=mask, position_ids=position_ids).logits
        got = model(toks, attention_mask=mask)
    real = mask.bool()
    assert max_diff(got[real], expected[real]) <= TOL


def test_llama3_scaled_rope_frequencies(tiny_hf):
    hf, folder = tiny_hf("llama3_rope")
    model = load(folder)
    assert model.cfg.rope_scaling is not None and model.cfg.rope_scaling["rope_type"] == "llama3"
    hf_inv_freq = hf.model.rotary_emb.inv_freq
    plain = 1.0 / (
        model.cfg.rotary_base ** (torch.arange(0, model.cfg.rotary_dim, 2).float() / model.cfg.rotary_dim)
    )
    assert not torch.allclose(hf_inv_freq, plain)  # the scaling really changes something here
    torch.testing.assert_close(model.rotary.inv_freq, hf_inv_freq, rtol=0, atol=0)
    assert model.rotary.attention_scaling == pytest.approx(hf.model.rotary_emb.attention_scaling)


def test_neox_partial_rotary_and_parallel_residual_config(tiny_hf):
    _, folder = tiny_hf("neox_parallel")
    cfg = load(folder).cfg
    assert cfg.rotary_dim == cfg.d_head // 4 and cfg.parallel_attn_mlp
    _, folder = tiny_hf("neox_sequential")
    cfg = load(folder).cfg
    assert cfg.rotary_dim == cfg.d_head // 2 and not cfg.parallel_attn_mlp


def test_hf_model_argument_matches_hf(tiny_hf):
    hf, _ = tiny_hf("qwen2")
    model = HookedTransformer.from_pretrained_no_processing("qwen2-tiny", hf_model=hf, device="cpu")
    toks = tokens(hf.config.vocab_size)
    with torch.no_grad():
        assert max_diff(model(toks), hf(toks).logits) <= TOL


# ------------------------------------------------------------------------------------ SmolLM2
PROMPTS = ["The capital of France is", "Hello"]


@pytest.mark.slow
def test_smollm2_gguf_matches_hf_and_cache_is_exact(smollm2_path, smollm2_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("TELELENS_CACHE", str(tmp_path / "cache"))
    hf, hf_tok = smollm2_hf
    assert gguf_cache.cached_folder(smollm2_path) is None
    first = load(smollm2_path)  # de-quantizes, writes the cache
    cached = gguf_cache.cached_folder(smollm2_path)
    assert cached is not None and cached.is_relative_to(tmp_path)
    second = load(smollm2_path)  # reads the cache
    assert second.tokenizer is not None and second.cfg == first.cfg

    ids = torch.tensor([[hf_tok.bos_token_id, *hf_tok.encode(PROMPTS[0], add_special_tokens=False)]])
    with torch.no_grad():
        expected = hf(ids).logits
        a, b = first(ids), second(ids)
    assert max_diff(a, expected) <= TOL
    assert torch.equal(a, b)
    # Tokenizers from the GGUF and from the cache agree with Hugging Face's.
    for text in [*PROMPTS, "<|im_start|>user\nhi<|im_end|>", " naïve café 123"]:
        ref = hf_tok.encode(text, add_special_tokens=False)
        assert first.tokenizer.encode(text, add_special_tokens=False) == ref
        assert second.tokenizer.encode(text, add_special_tokens=False) == ref


@pytest.mark.slow
def test_smollm2_config_and_tokens(smollm2, smollm2_hf, smollm2_path):
    cfg = smollm2.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_key_value_heads, cfg.d_head) == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and smollm2.unembed.weight is smollm2.embed.W_E
    assert cfg.rotary_base == 100000.0 and cfg.normalization_type == "RMS" and cfg.gated_mlp
    assert cfg.model_name == smollm2_path.stem and not cfg.tokenizer_prepends_bos
    toks = smollm2.to_tokens(PROMPTS[0])
    _, hf_tok = smollm2_hf
    assert toks[0].tolist() == [hf_tok.bos_token_id, *hf_tok.encode(PROMPTS[0], add_special_tokens=False)]


@pytest.mark.slow
def test_smollm2_left_padded_batch_matches_hf(smollm2, smollm2_hf):
    hf, _ = smollm2_hf
    rows = [smollm2.to_tokens(p)[0] for p in PROMPTS]
    width = max(len(r) for r in rows)
    toks = torch.zeros(len(rows), width, dtype=torch.long)  # pad id 0: masked out anyway
    mask = torch.zeros_like(toks)
    for i, r in enumerate(rows):
        toks[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    assert not bool(mask.all())
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(toks, attention_mask=mask, position_ids=position_ids).logits
        got = smollm2(toks, attention_mask=mask)
    real = mask.bool()
    assert max_diff(got[real], expected[real]) <= TOL
    # And the model's own left padding of text gives the same logits.
    with torch.no_grad():
        by_text = smollm2(PROMPTS, padding_side="left")
    assert max_diff(by_text[real], got[real]) <= TOL
