"""Text generation that does not care where the model runs: sampling and the token loop.

``HookedTransformer.generate`` (a KV-cached step in this process) and
``RemoteModel.generate`` (one graph per step on a server) both run :func:`generation_loop`,
so batching, left padding, EOS handling and sampling are the same code. Torch only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from telelens.lens.utils_lm import sample_logits

StepFn = Callable[
    [torch.Tensor, "torch.Tensor | None", torch.Tensor, "torch.Tensor | None", bool], torch.Tensor
]
"""``step(all_tokens, all_mask, new_tokens, new_mask, greedy)``: the next token ids [batch] when
``greedy``, else the last position's logits [batch, d_vocab]. ``new_tokens`` are the tokens added
since the previous step (all of them at the first step), for a step that keeps a KV cache."""


@dataclass
class GenerateOutput:
    """``generate(..., output_logits=True)``'s result, shaped like Hugging Face's
    ``GenerateDecoderOnlyOutput`` that TransformerLens returns: the token ids
    ``sequences`` [batch, pos + new_tokens] and one final-position ``logits`` [batch, d_vocab] per step."""

    sequences: torch.Tensor
    logits: tuple[torch.Tensor, ...]


RETURN_TYPES = ("input", "str", "tokens", "embeds")


def generation_options(generation_kwargs: dict[str, Any]) -> bool:
    """TransformerLens's ``**generation_kwargs``: ``output_logits`` (returned), ``return_dict_in_generate``
    (ignored); anything else is ignored with a warning, as TransformerLens does."""
    output_logits = bool(generation_kwargs.pop("output_logits", False))
    generation_kwargs.pop("return_dict_in_generate", None)
    if generation_kwargs:
        warnings.warn(
            f"generate received unsupported generation kwargs; ignoring: {sorted(generation_kwargs)}",
            UserWarning,
            stacklevel=3,
        )
    return output_logits


def generation_loop(
    host: Any,
    input: Any,
    step: StepFn,
    device: torch.device | str = "cpu",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    return_type: Literal["input", "str", "tokens", "embeds"] = "input",
    verbose: bool = True,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
    output_logits: bool = False,
) -> Any:
    """TransformerLens's ``generate`` around ``step``: text in gives text out (``return_type="input"``).

    ``host`` tokenizes (``_encode``, ``tokenizer``; see ``telelens.lens.tokens.TokenMethods``).
    Batches of texts are padded on the left, so every row continues right after its own last
    token. Rows that finished repeat the EOS token, as in TransformerLens (whose texts, unlike these,
    drop special tokens such as BOS). ``output_logits`` returns a :class:`GenerateOutput` with each step's logits.
    """
    if return_type not in RETURN_TYPES:
        raise ValueError(f"return_type must be one of {list(RETURN_TYPES)}, got {return_type!r}")
    if isinstance(input, torch.Tensor) and input.is_floating_point():
        raise NotImplementedError(
            "generate from embeddings [batch, pos, d_model] is not supported; pass tokens"
        )
    input_was_text = isinstance(input, (str, list, tuple))
    if isinstance(input, torch.Tensor):
        tokens = input if input.dim() == 2 else input[None]
        mask = attention_mask
    else:
        # Left padding: generation appends on the right, so real tokens must end there.
        tokens, mask = host._encode(input, prepend_bos, padding_side or "left")
        if bool(mask.all()):
            mask = None
    tokens = tokens.to(device)
    if mask is not None:
        mask = mask.to(device)

    tokenizer = host.tokenizer
    if eos_token_id is None and stop_at_eos:
        if tokenizer is None or tokenizer.eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id or a tokenizer with an EOS token")
        eos_token_id = tokenizer.eos_token_id
    eos_ids = torch.tensor(
        [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id),
        device=device,
    )
    # Finished rows repeat the EOS token (TransformerLens's eos_token_for_padding).
    if isinstance(eos_token_id, int):
        pad_id = eos_token_id
    elif tokenizer is not None and tokenizer.eos_token_id is not None:
        pad_id = tokenizer.eos_token_id
    else:
        pad_id = eos_token_id[0] if eos_token_id else 0
    if seed is not None:  # TransformerLens samples from torch's global generator: so do we
        torch.manual_seed(seed)
    greedy = not do_sample or temperature == 0.0
    step_logits: list[torch.Tensor] = []

    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=device)
    all_tokens, all_mask = tokens, mask
    new_tokens, new_mask = tokens, mask
    for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
        out = step(all_tokens, all_mask, new_tokens, new_mask, greedy and not output_logits)
        if output_logits:
            step_logits.append(out.clone())
        if greedy:
            nxt = out.argmax(dim=-1) if output_logits else out
        else:
            nxt = sample_logits(
                out,
                top_k=top_k,
                top_p=top_p,
                temperature=temperature,
                freq_penalty=freq_penalty,
                tokens=all_tokens,
            ).to(device)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        if eos_ids.numel():
            finished |= torch.isin(nxt, eos_ids)
        all_tokens = torch.cat((all_tokens, nxt[:, None]), dim=1)
        if all_mask is not None:
            all_mask = torch.cat((all_mask, torch.ones_like(nxt)[:, None]), dim=1)
        new_tokens = nxt[:, None]
        new_mask = None if all_mask is None else torch.ones_like(new_tokens)
        if stop_at_eos and bool(finished.all()):
            break

    if output_logits:
        return GenerateOutput(sequences=all_tokens, logits=tuple(step_logits))
    if return_type == "tokens" or (return_type == "input" and not input_was_text):
        return all_tokens
    if return_type == "embeds":
        return host.get_weight("W_E")[all_tokens]  # [batch, pos + new_tokens, d_model]
    texts = []
    for i, row in enumerate(all_tokens):
        keep = row if all_mask is None else row[all_mask[i].bool()]
        texts.append(host._require_tokenizer().decode(keep.tolist()))
    return texts[0] if isinstance(input, str) else texts
