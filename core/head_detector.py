"""Head detector: score every attention head against an expected attention pattern.

TransformerLens's ``head_detector`` (same names, arguments and scores). The built-in
patterns are ``"previous_token_head"``, ``"duplicate_token_head"`` and
``"induction_head"``; any lower-triangular [pos, pos] tensor works as a custom pattern.
Only the attention patterns of the layers asked about are cached.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import torch

from telelens.lens.utils import is_lower_triangular, is_square

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

logger = logging.getLogger(__name__)

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES: list[str] = list(get_args(HeadName))
ErrorMeasure = Literal["abs", "mul"]
LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]


# ---------------------------------------------------------------------------- built-in patterns
def get_previous_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: each position attends to the one before it."""
    n = tokens.shape[-1]
    return torch.ones(n, n).tril(-1).triu(-1)  # the first sub-diagonal


def get_duplicate_token_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: each position attends to earlier occurrences of its own token."""
    t = tokens.reshape(-1).cpu()
    same = (t[:, None] == t[None, :]).float()  # [query_pos, key_pos]
    same.fill_diagonal_(0)  # a token is trivially a duplicate of itself
    return same.tril()


def get_induction_head_detection_pattern(tokens: torch.Tensor) -> torch.Tensor:
    """[pos, pos]: each position attends to the token after an earlier occurrence of its own token."""
    dup = get_duplicate_token_head_detection_pattern(tokens)
    shifted = torch.zeros_like(dup)
    shifted[:, 1:] = dup[:, :-1]  # key j+1 for every duplicate at key j
    return shifted.tril()


_BUILT_IN = {
    "previous_token_head": get_previous_token_head_detection_pattern,
    "duplicate_token_head": get_duplicate_token_head_detection_pattern,
    "induction_head": get_induction_head_detection_pattern,
}


def get_supported_heads() -> None:
    """Print the built-in head names."""
    print(f"Supported heads: {HEAD_NAMES}")


# ---------------------------------------------------------------------------- scoring
def compute_head_attention_similarity_score(
    attention_pattern: torch.Tensor,
    detection_pattern: torch.Tensor,
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: ErrorMeasure,
) -> float:
    """How well one head's pattern [query_pos, key_pos] matches ``detection_pattern`` [pos, pos].

    ``"mul"``: share of the head's attention that falls where the detection pattern is 1.
    ``"abs"``: 1 - (sum of |difference|) / pos, rounded to 3 places (1 = perfect match).
    """
    if not is_square(attention_pattern):
        raise ValueError(f"attention pattern is not square; got shape {tuple(attention_pattern.shape)}")
    # Score in float32 whatever the model's dtype; never edit the caller's cache in place.
    attention_pattern = attention_pattern.float()
    detection_pattern = detection_pattern.to(attention_pattern.device, torch.float32)
    if error_measure == "mul":
        pattern = attention_pattern.clone()
        if exclude_bos:
            pattern[:, 0] = 0
        if exclude_current_token:
            pattern.fill_diagonal_(0)
        return ((pattern * detection_pattern).sum() / pattern.sum()).item()

    abs_diff = (attention_pattern - detection_pattern).abs()
    if bool((abs_diff - abs_diff.tril()).any()):
        raise ValueError("attention and detection patterns must both be lower triangular (causal)")
    if exclude_bos:
        abs_diff[:, 0] = 0
    if exclude_current_token:
        abs_diff.fill_diagonal_(0)
    return 1 - round((abs_diff.mean() * len(abs_diff)).item(), 3)


def _layer_to_heads(
    heads: Sequence[LayerHeadTuple] | LayerToHead | None, n_layers: int, n_heads: int
) -> LayerToHead:
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    if isinstance(heads, dict):
        return heads
    grouped: defaultdict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        grouped[layer].append(head)
    return dict(grouped)


def _tokens_of(model: HookedTransformer, seq: str | torch.Tensor) -> torch.Tensor:
    """One sequence as token ids [1, pos] (text goes through the model's tokenizer)."""
    if isinstance(seq, str):
        return model.to_tokens(seq)
    tokens = torch.as_tensor(seq)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(
            f"seq must be one sequence of tokens [pos] or [1, pos], got shape {tuple(tokens.shape)}"
        )
    return tokens


def detect_head(
    model: HookedTransformer,
    seq: str | list[str] | torch.Tensor,
    detection_pattern: torch.Tensor | HeadName,
    heads: list[LayerHeadTuple] | LayerToHead | None = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> torch.Tensor:
    """Score each attention head against a detection pattern; returns [n_layers, n_heads].

    Args:
        model: The model.
        seq: A prompt, a list of prompts (scores are averaged over them) or, beyond
            TransformerLens, one sequence of token ids [pos] or [1, pos].
        detection_pattern: A lower-triangular [pos, pos] tensor (the attention we expect), or
            one of ``"previous_token_head"``, ``"duplicate_token_head"``, ``"induction_head"``.
        heads: Only score these heads (a list of ``(layer, head)`` or ``{layer: [heads]}``);
            every other head scores -1.
        cache: Activations of ``model`` on ``seq`` (ActivationCache or dict holding
            ``blocks.{l}.attn.hook_pattern``), to skip the forward pass. Not with a list of prompts.
        exclude_bos: Ignore attention to the first position.
        exclude_current_token: Ignore attention to the query's own position.
        error_measure: ``"mul"`` (default): the share of each head's attention that lands where
            the pattern is 1 (use a 0/1 pattern). ``"abs"``: 1 - mean absolute difference scaled
            by pos, in [-1, 1], for graded patterns.
    """
    if error_measure not in get_args(ErrorMeasure):
        raise ValueError(
            f"invalid error_measure={error_measure!r}; valid values are {list(get_args(ErrorMeasure))}"
        )
    if isinstance(detection_pattern, str) and detection_pattern not in _BUILT_IN:
        raise ValueError(
            f"detection_pattern must be a tensor or one of the head names {HEAD_NAMES}; got {detection_pattern!r}"
        )
    if isinstance(seq, (list, tuple)):
        if cache is not None:
            raise ValueError("one cache holds one prompt's activations: pass a single prompt with `cache`")
        per_prompt = [
            detect_head(
                model,
                one,
                detection_pattern,
                heads=heads,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure=error_measure,
            )
            for one in seq
        ]
        return torch.stack(per_prompt).mean(0)

    cfg = model.cfg
    tokens = _tokens_of(model, seq)
    seq_len = tokens.shape[-1]
    if not 1 < seq_len <= cfg.n_ctx:
        raise ValueError(f"the sequence must have 2 to n_ctx={cfg.n_ctx} tokens, got {seq_len}")
    if isinstance(detection_pattern, str):
        detection_pattern = _BUILT_IN[detection_pattern](tokens)
    detection_pattern = torch.as_tensor(detection_pattern).float().cpu()
    if not (is_lower_triangular(detection_pattern) and detection_pattern.shape[0] == seq_len):
        raise ValueError(
            f"the detection pattern must be a lower triangular [pos, pos] matrix with pos={seq_len}; "
            f"got shape {tuple(detection_pattern.shape)}"
        )
    if error_measure == "mul" and not set(detection_pattern.unique().tolist()) <= {0.0, 1.0}:
        logger.warning("detection pattern has values other than 0 and 1 with error_measure='mul'")

    layer2heads = _layer_to_heads(heads, cfg.n_layers, cfg.n_heads)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layer2heads]
    if cache is None:
        # Cache only the patterns scored: every other layer keeps the fused attention kernel.
        with torch.inference_mode():
            _, cache = model.run_with_cache(tokens, names_filter=names, return_cache_object=False)

    scores = -torch.ones(cfg.n_layers, cfg.n_heads, dtype=cfg.dtype)
    for layer, layer_heads in layer2heads.items():
        patterns = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head_index, query_pos, key_pos]
        if patterns.dim() == 4:
            patterns = patterns[0]
        for head in layer_heads:
            scores[layer, head] = compute_head_attention_similarity_score(
                patterns[head],
                detection_pattern,
                exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token,
                error_measure=error_measure,
            )
    return scores
