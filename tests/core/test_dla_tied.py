"""Direct logit attribution adds up for tied embeddings (TransformerLens's recipe, TransformerLens's layout).

``from_pretrained``'s processing folds ``ln_final``'s weight into ``W_U`` (giving a tied model's
``W_U`` its own tensor, as TransformerLens's always is), so the residual decomposition, scaled
by ``ln_final``'s statistics and projected on ``W_U`` directions, sums to the logit difference.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import GPT2, LLAMA_GQA, tiny_model

from telelens.core.hooked_transformer import HookedTransformer

IOI = "When Mary and John went to the store, John gave a drink to"


@torch.no_grad()
def dla_and_logit_diff(
    model: HookedTransformer, tokens: torch.Tensor, right: int, wrong: int
) -> tuple[float, float]:
    """TransformerLens's recipe: the decomposition at the last position times the logit-difference direction."""
    logits, cache = model.run_with_cache(tokens)
    parts = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1, expand_neurons=False)
    direction = model.tokens_to_residual_directions(right) - model.tokens_to_residual_directions(wrong)
    dla = (parts[:, 0] @ direction).sum()  # [components] summed
    diff = logits[0, -1, right] - logits[0, -1, wrong]
    b_U = model.b_U
    return float(dla + b_U[right] - b_U[wrong]), float(diff)


@pytest.mark.parametrize("preset", [GPT2, LLAMA_GQA], ids=["ln", "rms"])
def test_dla_adds_up_for_a_tied_tiny_model(preset: dict) -> None:
    model = tiny_model({**preset, "tie_word_embeddings": True}, norm_noise=0.3)
    model.process_weights_()  # from_pretrained's default processing
    tokens = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(0))
    dla, diff = dla_and_logit_diff(model, tokens, 5, 7)
    assert abs(dla - diff) < 1e-4, (dla, diff)


@pytest.mark.slow
def test_dla_adds_up_for_smollm2(smollm2_path) -> None:
    model = HookedTransformer.from_pretrained(str(smollm2_path), device="cpu")
    assert not model.cfg.tie_word_embeddings and model.cfg.normalization_type == "RMSPre"
    assert model.ln_final is not None and model.ln_final.kind == "RMSPre"
    tokens = model.to_tokens(IOI)
    dla, diff = dla_and_logit_diff(
        model, tokens, model.to_single_token(" Mary"), model.to_single_token(" John")
    )
    assert abs(dla - diff) < 1e-3 * abs(diff), (dla, diff)
    assert 4.5 < diff < 5.5  # 5.287 here
