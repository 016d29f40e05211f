"""The corrupted run, recorded once: residual streams, keys/values and the activations the patches need."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


@dataclass
class CorruptedRun:
    """What every patched variant reuses.

    ``resid[l]`` is the residual stream entering block ``l`` ([batch, pos, d_model]);
    ``resid[n_layers]`` leaves the last block. ``keys[l]``/``values[l]`` are block ``l``'s
    post-rotary keys and values ([batch, pos, n_kv_heads, d_head]). ``acts`` holds other
    hooks by name (only those some patch needs). ``logits`` are the run's [batch, pos, vocab].
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor | None
    resid: list[torch.Tensor]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor
    acts: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])


def record_corrupted(
    model: HookedTransformer,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor | None,
    extra_hooks: Iterable[str] = (),
) -> CorruptedRun:
    """One forward pass of the corrupted tokens that keeps what the sweep will reuse."""
    from telelens.core.hooked_transformer import HookedTransformerKeyValueCache

    n_layers = model.cfg.n_layers
    wanted = {f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)}
    wanted.add(f"blocks.{n_layers - 1}.hook_resid_post")
    wanted.update(extra_hooks)
    store: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act

    kv = HookedTransformerKeyValueCache(n_layers)
    with model.hooks(fwd_hooks=[(name, keep) for name in sorted(wanted)]):
        logits = model(tokens, attention_mask=attention_mask, past_kv_cache=kv)
    resid = [store.pop(f"blocks.{layer}.hook_resid_pre") for layer in range(n_layers)]
    resid.append(store[f"blocks.{n_layers - 1}.hook_resid_post"])
    keys = [e.k for e in kv.entries]
    values = [e.v for e in kv.entries]
    assert all(k is not None for k in keys) and all(v is not None for v in values)
    return CorruptedRun(tokens, attention_mask, resid, keys, values, logits, store)  # type: ignore[arg-type]
