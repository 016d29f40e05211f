"""Text generation for HookedTransformer: greedy or sampled, with a KV cache, left padding, EOS stops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer, ModelInput


def sample_logits(
    logits: torch.Tensor,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    tokens: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick the next token from final-position logits [batch, d_vocab] -> [batch].

    ``temperature == 0`` is greedy. Frequency penalty, then temperature, then top-k, then
    top-p (nucleus) filtering, as TransformerLens and Hugging Face apply them.
    """
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if freq_penalty > 0 and tokens is not None:
        counts = torch.zeros_like(logits).scatter_add_(
            -1, tokens, torch.ones_like(tokens, dtype=logits.dtype)
        )
        logits = logits - freq_penalty * counts
    if top_k is not None and top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()  # keep the token that crosses top_p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate(
    model: HookedTransformer,
    input: ModelInput = "",
    max_new_tokens: int = 10,
    stop_at_eos: bool = True,
    eos_token_id: int | list[int] | None = None,
    do_sample: bool = True,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float = 1.0,
    freq_penalty: float = 0.0,
    use_past_kv_cache: bool = True,
    prepend_bos: bool | None = None,
    padding_side: Literal["left", "right"] | None = None,
    return_type: Literal["input", "str", "tokens"] = "input",
    verbose: bool = True,
    seed: int | None = None,
    attention_mask: torch.Tensor | None = None,
) -> Any:
    """TransformerLens's ``generate``: text in gives text out (``return_type="input"``).

    Batches of texts are padded on the left, so every row continues right after its
    own last token; rows that reach EOS keep emitting the pad token. With
    ``use_past_kv_cache`` each step runs only the new token through the model.
    """
    from telelens.core.hooked_transformer import HookedTransformerKeyValueCache

    input_was_text = isinstance(input, (str, list, tuple))
    if isinstance(input, torch.Tensor):
        tokens = input if input.dim() == 2 else input[None]
        mask = attention_mask
    else:
        # Left padding: generation appends on the right, so real tokens must end there.
        tokens, mask = model._encode(input, prepend_bos, padding_side or "left")
        if bool(mask.all()):
            mask = None
    device = model._module_device(model.embed)
    tokens = tokens.to(device)
    if mask is not None:
        mask = mask.to(device)

    if eos_token_id is None and stop_at_eos:
        if model.tokenizer is None or model.tokenizer.eos_token_id is None:
            raise ValueError("stop_at_eos needs eos_token_id or a tokenizer with an EOS token")
        eos_token_id = model.tokenizer.eos_token_id
    eos_ids = torch.tensor(
        [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id),
        device=device,
    )
    pad_id = model.tokenizer.pad_token_id if model.tokenizer is not None else 0
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None

    batch = tokens.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, device, batch) if use_past_kv_cache else None
    all_tokens = tokens
    all_mask = mask
    step_input, step_mask = tokens, mask
    for _ in tqdm(range(max_new_tokens), disable=not verbose, desc="generate"):
        if cache is not None:
            logits = model(step_input, attention_mask=step_mask, past_kv_cache=cache)
        else:
            logits = model(all_tokens, attention_mask=all_mask)
        final = logits[:, -1, :]
        if do_sample:
            nxt = sample_logits(final, top_k, top_p, temperature, freq_penalty, all_tokens, generator)
        else:
            nxt = final.argmax(dim=-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        if eos_ids.numel():
            finished |= torch.isin(nxt, eos_ids)
        all_tokens = torch.cat((all_tokens, nxt[:, None]), dim=1)
        if all_mask is not None:
            all_mask = torch.cat((all_mask, torch.ones_like(nxt)[:, None]), dim=1)
        step_input = nxt[:, None]
        step_mask = None if all_mask is None else torch.ones_like(step_input)
        if stop_at_eos and bool(finished.all()):
            break

    if return_type == "tokens" or (return_type == "input" and not input_was_text):
        return all_tokens
    texts = []
    for i, row in enumerate(all_tokens):
        keep = row if all_mask is None else row[all_mask[i].bool()]
        texts.append(model.tokenizer.decode(keep.tolist()))
    return texts[0] if isinstance(input, str) else texts
