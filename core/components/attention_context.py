"""What attention needs besides its input: the mask and the rotary tables of one forward pass.

The model builds one :class:`AttentionContext` per pass for every layer
(``telelens.core.forward_context``); a component used alone builds its own from TransformerLens's
arguments (``attention_mask``, the KV cache entry's length) with the same :func:`mask_and_positions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionContext:
    """What every layer needs besides its input, computed once per forward pass.

    ``mask`` is None for a plain causal pass (the fused kernel's ``is_causal``), else a
    bool tensor [batch or 1, 1, query_pos, key_pos] that is True where a query may attend, or a
    float tensor added to the scores (TransformerLens's ``additive_attention_mask``).
    ``rotary`` holds the (cos, sin) tables for this pass's query positions. ``causal`` is False
    for bidirectional attention (then a None mask means every query sees every key).
    """

    mask: torch.Tensor | None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    causal: bool = True

    def to(self, device: torch.device) -> AttentionContext:
        mask = None if self.mask is None else self.mask.to(device)
        rot = None if self.rotary is None else (self.rotary[0].to(device), self.rotary[1].to(device))
        return AttentionContext(mask, rot, self.causal)


def mask_and_positions(
    batch: int,
    q_len: int,
    past: int,
    attention_mask: torch.Tensor | None,
    device: torch.device,
    causal: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The attention mask and the query positions of ``q_len`` new tokens after ``past`` cached ones.

    ``attention_mask`` [batch, past + q_len] (1 for real tokens, 0 for padding) or None. Returns a
    bool mask [batch or 1, 1, query_pos, key_pos] (None for a plain pass) and positions
    [batch or 1, pos], counted from each row's first real token.
    """
    padded = attention_mask is not None and not bool(attention_mask.all())
    if padded:
        assert attention_mask is not None
        key_mask = attention_mask.to(device).bool()  # [batch, key_pos]
        positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -q_len:]  # [batch, pos]
        allowed = torch.ones(q_len, past + q_len, dtype=torch.bool, device=device)
        if causal:
            allowed = allowed.tril(past)
        mask = allowed[None] & key_mask[:, None, :]  # [batch, query_pos, key_pos]
        # A padding query sees no key: let it see all so no NaN appears (its output is unused).
        mask = mask | ~mask.any(-1, keepdim=True)
        return mask[:, None], positions  # [batch, 1, query_pos, key_pos]
    positions = torch.arange(past, past + q_len, device=device)[None]  # [1, pos]
    if causal and past and q_len > 1:
        return torch.ones(q_len, past + q_len, dtype=torch.bool, device=device).tril(past)[
            None, None
        ], positions
    return None, positions


def with_additive_mask(
    ctx: AttentionContext, additive: torch.Tensor, q_len: int, k_len: int
) -> AttentionContext:
    """``ctx`` with TransformerLens's ``additive_attention_mask`` [batch, 1, 1, key_pos] folded into
    a float mask (0 where allowed, -inf where masked, plus ``additive``)."""
    device = additive.device
    allowed = ctx.mask
    if allowed is None:
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
        if ctx.causal:
            allowed = allowed.tril(k_len - q_len)
    scores_mask = torch.zeros(allowed.shape, dtype=additive.dtype, device=device).masked_fill(
        ~allowed.to(device), float("-inf")
    )
    return AttentionContext(scores_mask + additive, ctx.rotary, ctx.causal)
