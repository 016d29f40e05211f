"""``HookedTransformer.generate``: the shared token loop (``telelens.lens.generation``) around a
KV-cached forward step in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from telelens.lens.generation import generation_loop, sample_logits

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer, ModelInput

__all__ = ["generate", "sample_logits"]


def generate(
    model: HookedTransformer,
    input: ModelInput = "",
    max_new_tokens: int = 10,
    use_past_kv_cache: bool = True,
    **kwargs: Any,
) -> Any:
    """TransformerLens's ``generate`` (see :func:`telelens.lens.generation.generation_loop` for the
    options). With ``use_past_kv_cache`` each step runs only the new tokens through the model."""
    from telelens.core.hooked_transformer import HookedTransformerKeyValueCache

    device = model._module_device(model.embed)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg) if use_past_kv_cache else None

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

    return generation_loop(model, input, step, device, max_new_tokens=max_new_tokens, **kwargs)
