"""The real SmolLM2-135M-Instruct: behaviour that TransformerLens users rely on, checked against HF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from telelens import HookedTransformer
from telelens.head_detector import detect_head

pytestmark = pytest.mark.slow


def repeated_random_tokens(half: int = 20, seed: int = 0) -> torch.Tensor:
    rand = torch.randint(1000, 10000, (1, half), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.ones(1, 1, dtype=torch.long), rand, rand], dim=1)  # BOS + sequence twice


def test_greedy_generate_matches_hf(smollm2, smollm2_hf):
    hf, _ = smollm2_hf
    tokens = smollm2.to_tokens("The capital of France is")
    ours = smollm2.generate(tokens, max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        theirs = hf.generate(
            tokens, attention_mask=torch.ones_like(tokens), max_new_tokens=8, do_sample=False
        )
    assert torch.equal(ours, theirs)
    text = smollm2.generate("The capital of France is", max_new_tokens=3, do_sample=False, verbose=False)
    assert text.split("The capital of France is")[1].startswith(" Paris")


def test_left_padded_batch_generate_equals_each_prompt_alone(smollm2):
    prompts = ["The capital of France is", "Once upon a time, in a small village, there"]
    batch = smollm2.generate(prompts, max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)
    alone = [
        smollm2.generate(p, max_new_tokens=5, do_sample=False, stop_at_eos=False, verbose=False)
        for p in prompts
    ]
    assert batch == alone


def test_induction_heads_found_and_patterns_match_hf(smollm2, smollm2_hf):
    hf, _ = smollm2_hf
    tokens = repeated_random_tokens()
    scores = detect_head(smollm2, tokens, "induction_head")  # [n_layers, n_heads]
    top = scores.flatten().topk(3).indices
    assert {int(i) // smollm2.cfg.n_heads for i in top} <= {17, 18}, scores.max(dim=1)
    assert scores.max() > 0.3
    prev = detect_head(smollm2, tokens, "previous_token_head")
    assert prev[16, 0] > 0.8 and prev[11, 1] > 0.8  # the known previous-token heads

    _, cache = smollm2.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = hf(tokens, output_attentions=True).attentions
    finally:
        hf.set_attn_implementation("sdpa")
    for layer in (2, 11, 16, 17, 18):
        torch.testing.assert_close(cache["pattern", layer], attentions[layer], atol=1e-4, rtol=1e-4)


def test_processed_weights_keep_hf_log_probs(smollm2_path, smollm2_hf):
    hf, _ = smollm2_hf
    processed = HookedTransformer.from_pretrained(str(smollm2_path), device="cpu")  # TL's default processing
    # fold_ln gives W_U its own tensor (as TransformerLens), so ln_final folds into it
    assert not processed.cfg.tie_word_embeddings and processed.unembed.weight is not processed.embed.W_E
    assert processed.ln_final is not None and processed.ln_final.kind == "RMSPre"
    assert processed.blocks[0].ln1.kind == "RMSPre"
    tokens = processed.to_tokens("The Eiffel Tower is in the city of Paris, which is in")
    with torch.no_grad():
        ours = F.log_softmax(processed(tokens), dim=-1)
        theirs = F.log_softmax(hf(tokens).logits, dim=-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_fused_attention_is_used_unless_a_pattern_is_requested(smollm2, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    tokens = smollm2.to_tokens("The quick brown fox")
    smollm2.run_with_cache(tokens, names_filter=lambda n: n.endswith("resid_post"))
    assert len(calls) == smollm2.cfg.n_layers
    calls.clear()
    smollm2.run_with_cache(tokens, names_filter="blocks.5.attn.hook_pattern")
    assert len(calls) == smollm2.cfg.n_layers - 1  # only layer 5 took the explicit path
