"""Language-model and tensor helpers of ``transformer_lens.utils``: losses, activations, sampling, sums.

Same names, arguments, checks and numbers as TransformerLens 3.9. Torch + numpy only;
the Hugging Face helpers import their library when called.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "check_structure",
    "clear_huggingface_cache",
    "composition_scores",
    "download_file_from_hf",
    "filter_dict_by_prefix",
    "gelu_fast",
    "gelu_new",
    "get_cumsum_along_dim",
    "get_offset_position_ids",
    "get_pos_offset",
    "is_library_available",
    "lm_accuracy",
    "lm_cross_entropy_loss",
    "print_gpu_mem",
    "repeat_along_head_dimension",
    "sample_logits",
    "solu",
]


# ------------------------------------------------------------------------------------ activations
def gelu_new(input: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * input * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


def gelu_fast(input: torch.Tensor) -> torch.Tensor:
    """The same approximation written with 0.7978845608 (= sqrt(2/pi))."""
    return 0.5 * input * (1.0 + torch.tanh(input * 0.7978845608 * (1.0 + 0.044715 * input * input)))


def solu(input: torch.Tensor) -> torch.Tensor:
    """SoLU: ``x * softmax(x)`` over the last dimension (the LayerNorm after it is the MLP's)."""
    return input * F.softmax(input, dim=-1)


# ----------------------------------------------------------------------------------------- losses
def lm_cross_entropy_loss(
    logits: torch.Tensor,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    per_token: bool = False,
) -> torch.Tensor:
    """Next-token loss: logits [batch, pos, d_vocab], tokens [batch, pos] -> mean, or [batch, pos-1]
    per token. Positions whose token or next token is masked out count as zero loss and are not
    in the mean."""
    log_probs = F.log_softmax(logits, dim=-1)
    predicted = log_probs[..., :-1, :].gather(dim=-1, index=tokens[..., 1:, None])[..., 0]  # [batch, pos-1]
    if attention_mask is not None:
        assert attention_mask.shape == tokens.shape, (
            "attention_mask must have the same shape as tokens, "
            f"got {tuple(attention_mask.shape)} and {tuple(tokens.shape)}"
        )
        next_token_mask = torch.logical_and(attention_mask[:, :-1], attention_mask[:, 1:])
        predicted = predicted.masked_fill(~next_token_mask, 0.0)
        n_tokens = next_token_mask.sum().item()
    else:
        n_tokens = predicted.numel()
    if per_token:
        return -predicted
    return -predicted.sum() / n_tokens


def lm_accuracy(logits: torch.Tensor, tokens: torch.Tensor, per_token: bool = False) -> torch.Tensor:
    """Top-1 next-token accuracy (a [batch, pos-1] bool tensor when ``per_token``)."""
    correct = logits.argmax(dim=-1)[:, :-1] == tokens[:, 1:]
    return correct if per_token else correct.sum() / correct.numel()


# --------------------------------------------------------------------------------------- sampling
def _apply_repetition_penalty(logits: torch.Tensor, tokens: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's repetition penalty: seen tokens' positive logits / penalty, negative ones * penalty."""
    logits = logits.clone()
    for b in range(logits.shape[0]):
        seen = tokens[b].unique()
        score = logits[b, seen]
        logits[b, seen] = torch.where(score > 0, score / penalty, score * penalty)
    return logits


def sample_logits(
    final_logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    repetition_penalty: float = 1.0,
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample next tokens from final-position logits [batch, d_vocab] -> [batch], as TransformerLens.

    Repetition penalty (needs ``tokens``), then temperature (0 is greedy), frequency penalty
    (needs ``tokens``), then top-k (clamped to the vocabulary) or else top-p filtering; sampled
    with torch's global generator, so ``torch.manual_seed`` reproduces TransformerLens's draws.
    """
    if repetition_penalty != 1.0 and tokens is not None:
        final_logits = _apply_repetition_penalty(final_logits, tokens, repetition_penalty)
    if temperature == 0.0:
        return final_logits.argmax(dim=-1)
    final_logits = final_logits / temperature
    if freq_penalty > 0:
        assert tokens is not None, "Must provide input_tokens if applying a frequency penalty"
        assert len(tokens.shape) == 2, "Frequency penalty do not support input in the form of embeddings"
        for b in range(final_logits.shape[0]):
            counts = torch.bincount(tokens[b], minlength=final_logits.shape[-1])
            final_logits[b] = final_logits[b] - freq_penalty * counts
    if top_k is not None:
        assert top_k > 0, "top_k has to be greater than 0"
        top_logits, _ = final_logits.topk(min(top_k, final_logits.shape[-1]), dim=-1)
        final_logits = final_logits.masked_fill(final_logits < top_logits[..., -1:], -float("inf"))
    elif top_p is not None:
        assert 1.0 >= top_p > 0.0, "top_p has to be in (0, 1]"
        sorted_logits, sorted_indices = torch.sort(final_logits, descending=True)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()  # keep the token that crosses top_p
        drop[..., 0] = 0
        final_logits = final_logits.masked_fill(drop.scatter(-1, sorted_indices, drop), -float("inf"))
    return torch.distributions.categorical.Categorical(logits=final_logits.to(torch.float32)).sample()


# ------------------------------------------------------------------------------- tensors and dicts
def get_cumsum_along_dim(tensor: torch.Tensor, dim: int, reverse: bool = False) -> torch.Tensor:
    """Cumulative sum along ``dim`` (from the end when ``reverse``)."""
    if reverse:
        return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))
    return tensor.cumsum(dim=dim)


def repeat_along_head_dimension(
    tensor: torch.Tensor, n_heads: int, clone_tensor: bool = True
) -> torch.Tensor:
    """[batch, pos, d_model] -> [batch, pos, n_heads, d_model] (a copy unless ``clone_tensor=False``)."""
    repeated = tensor.unsqueeze(2).expand(-1, -1, n_heads, -1)
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries under ``prefix.`` with the prefix (and its dot) stripped from the keys."""
    search = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(search) :]: v for k, v in dictionary.items() if k.startswith(search)}


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counted from each row's first attended token (pads get 0), from ``past_kv_pos_offset``."""
    shifted = attention_mask.cumsum(dim=1) - 1  # [batch, pos]
    return shifted.masked_fill(shifted < 0, 0)[:, past_kv_pos_offset:]


def get_pos_offset(past_kv_cache: Any, batch_size: int) -> int:
    """How many positions a KV cache already holds (0 without one)."""
    if past_kv_cache is None:
        return 0
    if hasattr(past_kv_cache, "past_length"):
        return int(past_kv_cache.past_length)
    return int(past_kv_cache.entries[0].past_keys.shape[1])


def check_structure(t1: torch.Tensor, t2: torch.Tensor, *, verbose: bool = False) -> None:
    """Print whether two square matrices order their neighbouring rows and columns the same way."""
    assert t1.ndim == 2
    assert t1.shape == t2.shape
    n_rows, n_cols = cast(tuple[int, int], t1.shape)

    def mismatches(a: torch.Tensor, b: torch.Tensor, n: int, what: str) -> list[int]:
        if verbose:
            print(f"Checking {what}")
        out = []
        for i in range(n - 1):
            r1, r2 = a[i].ge(a[i + 1]), b[i].ge(b[i + 1])
            if any(r1 != r2):
                out.append(i)
                if verbose:
                    print(f"\trows {i}:{i + 1}")
                    print(f"\tt1: {r1.tolist()}")
                    print(f"\tt2: {r2.tolist()}")
        return out

    row_mismatch = mismatches(t1, t2, n_rows, "rows")
    col_mismatch = mismatches(t1.T, t2.T, n_cols, "columns")
    if not row_mismatch and not col_mismatch:
        print("PASSED")
    elif row_mismatch:
        print(f"row mismatch: {row_mismatch}")
    else:
        print(f"column mismatch: {col_mismatch}")


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> torch.Tensor:
    """``||L R|| / (||L|| ||R||)`` for FactoredMatrix ``left``/``right`` (see ``all_composition_scores``)."""
    if broadcast_dims:
        r_leading, l_leading = right.ndim - 2, left.ndim - 2
        for i in range(l_leading):
            right = right.unsqueeze(i)
        for i in range(r_leading):
            left = left.unsqueeze(i + l_leading)
    assert left.rdim == right.ldim, (
        f"Composition scores require left.rdim==right.ldim, shapes were left: {left.shape}, right:{right.shape}"
    )
    new_right, new_left = right.collapse_r(), left.collapse_l()
    r_norms = new_right.norm(dim=[-2, -1])
    l_norms = new_left.norm(dim=[-2, -1])
    return (new_left @ new_right).norm(dim=[-2, -1]) / r_norms / l_norms


# ---------------------------------------------------------------------------------- environment
def is_library_available(name: str) -> bool:
    """Whether ``name`` is importable, without importing it."""
    return name in sys.modules or importlib.util.find_spec(name) is not None


def print_gpu_mem(step_name: str = "") -> None:
    """Print the GPU memory torch has allocated (TransformerLens's formula, kept as is)."""
    print(f"{step_name} ~ {np.round(torch.cuda.memory_allocated() / 2e30, 2)} GiB allocated on GPU.")


def download_file_from_hf(
    repo_name: str, file_name: str, subfolder: str = ".", cache_dir: str | None = None, force_is_torch: bool = False,
    **kwargs: Any,
) -> Any:  # fmt: skip
    """Download ``subfolder/file_name`` from a Hub repo: a ``.pth``/``.json`` file comes back loaded,
    anything else as its local path (needs ``huggingface_hub``)."""
    import json

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(
        repo_id=repo_name, filename=file_name, subfolder=subfolder, cache_dir=cache_dir, **kwargs
    )
    if path.endswith(".pth") or force_is_torch:
        return torch.load(path, map_location="cpu", weights_only=False)
    if path.endswith(".json"):
        with open(path) as f:
            return json.load(f)
    print("File type not supported:", path.split(".")[-1])
    return path


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face Hub cache directory and all its contents."""
    import shutil

    from huggingface_hub.constants import HF_HUB_CACHE

    print("Deleting Hugging Face cache directory and all its contents.")
    shutil.rmtree(HF_HUB_CACHE, ignore_errors=True)
