"""``HookedTransformer.generate``'s step: a KV-cached forward pass in this process.

The token loop itself (batching, left padding, EOS, sampling) is the shared
:func:`telelens.lens.generation.generation_loop`, run by ``ModelSurface.generate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from telelens.core.forward_context import HookedTransformerKeyValueCache
from telelens.lens.generation import StepFn, sample_logits

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

__all__ = ["forward_step", "sample_logits"]


def forward_step(model: HookedTransformer, use_past_kv_cache: bool = True) -> StepFn:
    """One generation step of ``model``; with ``use_past_kv_cache`` each step runs only the new tokens."""
    device = model._module_device(model.embed)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, device) if use_past_kv_cache else None

    def step(
        all_tokens: torch.Tensor,
        all_mask: torch.Tensor | None,
        new_tokens: torch.Tensor,
        new_mask: torch.Tensor | None,
        greedy: bool,
    ) -> torch.Tensor:
        if cache is not None:
            logits = model(new_tokens, attention_mask=new_mask, past_kv_cache=cache)
        else:
            logits = model(all_tokens, attention_mask=all_mask)
        final = logits[:, -1, :]
        return final.argmax(dim=-1) if greedy else final

    return step
