"""detect_head against hand-computed scores, forced attention patterns, errors; utils.test_prompt output."""

from __future__ import annotations

import re

import pytest
import torch

from telelens.core import head_detector as hd
from telelens.core.config import HookedTransformerConfig
from telelens.core.hooked_transformer import HookedTransformer
from telelens.lens import utils

CORPUS = [
    "Why did the elephant cross the road",
    "the cat sat on the mat",
    "The Eiffel Tower is in Paris",
    "the dog ran down the road to the park",
    "a [/b] tag",  # a token that looks like rich markup
]


def make_tokenizer():
    """A tiny byte-level BPE trained in memory (no hub); words keep their leading space, punctuation included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", "merged_with_next"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    tokenizer = make_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=32,
        d_head=4,
        n_heads=4,
        d_mlp=32,
        d_vocab=len(tokenizer),
        act_fn="gelu",
        initializer_range=0.4,
        seed=0,
    )
    return HookedTransformer(cfg, tokenizer=tokenizer).eval()


TOKENS = torch.tensor([[0, 5, 9, 5, 9, 7, 5, 9]])  # repeats, so duplicate/induction patterns are non-empty
POS = TOKENS.shape[1]


def patterns_of(model, tokens) -> torch.Tensor:
    """[n_layers, n_heads, pos, pos] from a plain cached run."""
    _, cache = model.run_with_cache(tokens, return_cache_object=False)
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(model.cfg.n_layers)])


def test_builtin_detection_patterns():
    tokens = torch.tensor([[1, 2, 1, 2]])
    torch.testing.assert_close(
        hd.get_previous_token_head_detection_pattern(tokens),
        torch.tensor([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).float(),
    )
    torch.testing.assert_close(
        hd.get_duplicate_token_head_detection_pattern(tokens),
        torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]).float(),
    )
    torch.testing.assert_close(
        hd.get_induction_head_detection_pattern(tokens),
        torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]).float(),
    )


@pytest.mark.parametrize("exclude_bos", [False, True])
@pytest.mark.parametrize("exclude_current_token", [False, True])
def test_custom_pattern_mul_matches_manual(model, exclude_bos, exclude_current_token):
    gen = torch.Generator().manual_seed(0)
    detection = (torch.rand(POS, POS, generator=gen) > 0.5).float().tril()
    scores = hd.detect_head(
        model, TOKENS, detection, exclude_bos=exclude_bos, exclude_current_token=exclude_current_token
    )
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    pats = patterns_of(model, TOKENS).clone()
    if exclude_bos:
        pats[..., 0] = 0
    if exclude_current_token:
        pats = pats * (1 - torch.eye(POS))
    expected = (pats * detection).sum((-1, -2)) / pats.sum((-1, -2))
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    assert scores.std() > 0  # heads differ


def test_custom_pattern_abs_matches_manual(model):
    detection = torch.ones(POS, POS).tril() / torch.arange(1, POS + 1)[:, None]  # uniform causal attention
    scores = hd.detect_head(model, TOKENS, detection, error_measure="abs")
    diff = (patterns_of(model, TOKENS) - detection).abs().sum((-1, -2)) / POS
    expected = 1 - torch.round(diff * 1000) / 1000
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_heads_subset_and_cache_argument(model):
    _, cache = model.run_with_cache(TOKENS, return_cache_object=False)
    full = hd.detect_head(model, TOKENS, "duplicate_token_head")
    subset = hd.detect_head(model, TOKENS, "duplicate_token_head", heads=[(1, 2), (0, 0)], cache=cache)
    # (the full cache ran every layer's explicit attention: equal up to float rounding)
    assert subset[1, 2].item() == pytest.approx(full[1, 2].item(), abs=1e-6)
    assert subset[0, 0].item() == pytest.approx(full[0, 0].item(), abs=1e-6)
    mask = torch.ones_like(full, dtype=torch.bool)
    mask[1, 2] = mask[0, 0] = False
    assert (subset[mask] == -1).all()
    by_dict = hd.detect_head(model, TOKENS, "duplicate_token_head", heads={1: [2], 0: [0]})
    torch.testing.assert_close(by_dict, subset)
    for remove_batch_dim in (False, True):  # an ActivationCache, with or without the batch dim
        _, act_cache = model.run_with_cache(TOKENS, remove_batch_dim=remove_batch_dim)
        with_cache = hd.detect_head(model, TOKENS, "duplicate_token_head", cache=act_cache)
        torch.testing.assert_close(with_cache, full, atol=1e-6, rtol=0)


def test_only_the_needed_patterns_are_cached(model, monkeypatch):
    seen: list = []
    original = type(model).run_with_cache

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("names_filter"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "run_with_cache", spy)
    hd.detect_head(model, TOKENS, "induction_head", heads=[(1, 0), (1, 3)])
    assert seen == [["blocks.1.attn.hook_pattern"]]


def test_forced_previous_token_head_scores_one(model):
    layer, head = 1, 2

    def force(pattern: torch.Tensor, hook) -> torch.Tensor:
        perfect = torch.zeros(POS, POS)
        perfect[0, 0] = 1  # the first position has nothing before it
        perfect[torch.arange(1, POS), torch.arange(POS - 1)] = 1
        pattern = pattern.clone()
        pattern[:, head] = perfect
        return pattern

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", force)]):
        mul = hd.detect_head(model, TOKENS, "previous_token_head", exclude_bos=True)
        abs_ = hd.detect_head(model, TOKENS, "previous_token_head", exclude_bos=True, error_measure="abs")
        with_bos = hd.detect_head(model, TOKENS, "previous_token_head")
    assert mul[layer, head].item() == pytest.approx(1.0, abs=1e-6)
    assert abs_[layer, head].item() == pytest.approx(1.0, abs=1e-6)
    # Position 0 attends to itself, which is not a previous token: (pos - 1) / pos of the attention matches.
    assert with_bos[layer, head].item() == pytest.approx((POS - 1) / POS, abs=1e-6)
    others = mul.clone()
    others[layer, head] = 0
    assert (others < 0.9).all()


def test_text_prompts_and_lists(model):
    text = "the cat sat on the mat"
    from_text = hd.detect_head(model, text, "induction_head")
    from_tokens = hd.detect_head(model, model.to_tokens(text), "induction_head")
    torch.testing.assert_close(from_text, from_tokens)
    prompts = ["the cat sat on the mat", "the dog ran down the road to the park"]
    mean = hd.detect_head(model, prompts, "previous_token_head")
    expected = torch.stack([hd.detect_head(model, p, "previous_token_head") for p in prompts]).mean(0)
    torch.testing.assert_close(mean, expected)


def test_errors_are_clear(model):
    with pytest.raises(
        ValueError, match=re.escape("['previous_token_head', 'duplicate_token_head', 'induction_head']")
    ):
        hd.detect_head(model, TOKENS, "previous_token")
    with pytest.raises(ValueError, match="error_measure"):
        hd.detect_head(model, TOKENS, "induction_head", error_measure="l2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lower triangular"):
        hd.detect_head(model, TOKENS, torch.ones(POS, POS))
    with pytest.raises(ValueError, match="pos=8"):
        hd.detect_head(model, TOKENS, torch.eye(POS - 1))
    with pytest.raises(ValueError, match="cache"):
        hd.detect_head(model, ["a b", "c d"], "induction_head", cache={})
    with pytest.raises(ValueError, match="2 to n_ctx"):
        hd.detect_head(model, TOKENS[:, :1], "induction_head")


def test_mul_warns_on_non_binary_pattern(model, caplog):
    with caplog.at_level("WARNING"):
        hd.detect_head(model, TOKENS, torch.ones(POS, POS).tril() * 0.5)
    assert "other than 0 and 1" in caplog.text


# ------------------------------------------------------------------------------------ test_prompt
def expected_rank(model, tokens: torch.Tensor, target: int) -> tuple[int, float, float]:
    with torch.inference_mode():
        logits = model(tokens)[0, -1]
    probs = logits.softmax(-1)
    return int((probs > probs[target]).sum()), logits[target].item(), probs[target].item()


def test_test_prompt_single_answer(model, capsys):
    prompt = "Why did the elephant cross the"
    utils.test_prompt(prompt, "road", model, top_k=3)
    out = capsys.readouterr().out.splitlines()
    answer_id = model.to_single_token(" road")
    rank, logit, prob = expected_rank(model, model.to_tokens(prompt), answer_id)
    assert out[0] == f"Tokenized prompt: {model.to_str_tokens(prompt)}"
    assert out[1] == "Tokenized answer: [' road']"
    assert out[2] == "Performance on answer token:"
    assert out[3] == f"Rank: {rank: <8} Logit: {logit:5.2f} Prob: {prob:6.2%} Token: | road|"
    assert len([line for line in out if line.startswith("Top ")]) == 3
    with torch.inference_mode():
        top = model(model.to_tokens(prompt))[0, -1].argmax().item()
    assert out[4].startswith("Top 0th token. Logit:") and out[4].endswith(f"Token: |{model.to_string(top)}|")
    assert out[-1] == f"Ranks of the answer tokens: [(' road', {rank})]"


def test_test_prompt_multi_token_and_multiple_answers(model, capsys):
    prompt = "the cat sat on"
    utils.test_prompt(prompt, " the mat", model, prepend_space_to_answer=False, top_k=2)
    out = capsys.readouterr().out
    n_answer_tokens = len(model.to_str_tokens(" the mat", prepend_bos=False))
    assert n_answer_tokens > 1
    assert out.count("Performance on answer token:") == n_answer_tokens
    assert out.count("Top 1th token.") == n_answer_tokens

    utils.test_prompt(prompt, ["the", "mat", "[/b]"], model, print_details=True, top_k=1)
    out = capsys.readouterr().out
    assert "Tokenized answers: [[' the'], [' mat'], [' [/b]']]" in out
    assert "Performance on answer tokens:" in out
    assert "Token: | [/b]|" in out  # markup-like tokens print literally
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"Ranks of the answer tokens: \[\[\(' the', \d+\), \(' mat', \d+\), \(' \[/b\]', \d+\)\]\]", last
    )

    utils.test_prompt(prompt, "mat", model, print_details=False)
    assert capsys.readouterr().out.strip().startswith("Ranks of the answer tokens: [(' mat', ")
