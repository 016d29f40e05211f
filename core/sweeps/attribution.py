"""Attribution patching: the first-order approximation of activation patching.

Patching activation ``a`` from the clean run into the corrupted run changes the metric by
about ``(a_clean - a_corrupted) . d metric / d a`` (gradient at the corrupted run). One
forward and one backward pass of the corrupted tokens give that estimate for every
element of every requested activation at once (plus one clean forward pass, unless a clean
cache is passed). Summing the estimate over the dims a patch covers gives the grid the
matching patching helper would compute: over batch and ``d_model`` for ``resid_pre``
([layer, pos]), over batch, positions and ``d_head`` for head outputs ([layer, head]).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from telelens.lens.hook_shapes import hook_shape_pattern
from telelens.lens.utils import get_act_name

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

DEFAULT_ACTIVATIONS = ("resid_pre", "attn_out", "mlp_out", "z")


@dataclass
class AttributionResult:
    """Attribution scores per hook, and grids shaped like the patching helpers' results.

    Attributes:
        per_hook: Hook name -> ``(clean - corrupted) * grad``, the activation's shape
            ([batch, ...]); its sum over the cells of a patch estimates that patch's effect.
        clean_metric: The metric of the clean run (when the clean tokens ran here).
        corrupted_metric: The metric of the corrupted run.
        layers: The layers attributed (the grids' first axis).
    """

    per_hook: dict[str, torch.Tensor]
    corrupted_metric: float
    clean_metric: float | None
    layers: list[int]

    def grid(self, activation: str, all_pos: bool = False) -> torch.Tensor:
        """Per-layer grid for a short activation name, summed over batch and the feature dim.

        ``[batch, pos, d]`` hooks give [n_layers, pos] (``all_pos``: [n_layers]); per-head
        hooks give [n_layers, pos, head] (``all_pos``: [n_layers, head]); patterns give
        [n_layers, head, dest_pos] (``all_pos``: [n_layers, head]).
        """
        out = []
        for layer in self.layers:
            name = get_act_name(activation, layer)
            if name not in self.per_hook:
                raise KeyError(f"no attribution for {name}: pass {activation!r} in activation_names")
            t = self.per_hook[name].sum(0).sum(-1)  # no batch, no feature / key dim
            if hook_shape_pattern(name)[1:3] == ("head_index", "query_pos"):  # [head, dest_pos]
                out.append(t.sum(-1) if all_pos else t)
            else:  # [pos] or [pos, head]
                out.append(t.sum(0) if all_pos else t)
        return torch.stack(out)

    @property
    def resid_pre(self) -> torch.Tensor:
        """[n_layers, pos]: the estimate of ``get_act_patch_resid_pre``."""
        return self.grid("resid_pre")

    @property
    def head_out(self) -> torch.Tensor:
        """[n_layers, n_heads]: the estimate of ``get_act_patch_attn_head_out_all_pos``."""
        return self.grid("z", all_pos=True)


def attribution_patch(
    model: HookedTransformer,
    clean_tokens: torch.Tensor,
    corrupted_tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], Any],
    activation_names: Sequence[str] = DEFAULT_ACTIVATIONS,
    *,
    clean_cache: Any = None,
    layers: Sequence[int] | None = None,
) -> AttributionResult:
    """Attribution patching of ``activation_names`` (short names like ``"resid_pre"``, ``"z"``).

    Args:
        model: The model.
        clean_tokens: Clean tokens [batch, pos] (not run when ``clean_cache`` is given).
        corrupted_tokens: Corrupted tokens, the same shape.
        metric: Logits [batch, pos, d_vocab_out] -> scalar, differentiable.
        activation_names: Activations to attribute (block hooks), every layer.
        clean_cache: Clean activations by hook name (skips the clean forward pass).
        layers: Only these layers (default: all).

    Returns:
        An :class:`AttributionResult`; ``result.resid_pre`` is [n_layers, pos] and
        ``result.head_out`` [n_layers, n_heads] when those activations were asked for.
    """
    layer_list = list(range(model.cfg.n_layers)) if layers is None else [int(x) for x in layers]
    hooks = [get_act_name(a, layer) for a in activation_names for layer in layer_list]
    for name in hooks:
        if name not in model.hook_dict:
            raise KeyError(f"unknown hook {name!r}")
    first = "blocks.0.hook_resid_pre"

    clean_metric = None
    if clean_cache is None:
        with torch.inference_mode():
            clean_logits, clean_cache = model.run_with_cache(
                clean_tokens, names_filter=lambda n: n in set(hooks), return_cache_object=False
            )
            clean_metric = float(metric(clean_logits))

    store: dict[str, torch.Tensor] = {}

    def leaf(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # Gradients start here: every later activation depends on it, so all of them get a
        # grad_fn, with or without trainable weights.
        act = act.detach().requires_grad_(True)
        if hook.name in wanted:
            store[hook.name] = act
        return act

    def keep(act: torch.Tensor, hook: Any) -> None:
        store[hook.name] = act

    wanted = set(hooks)
    fwd_hooks: list[tuple[str, Any]] = [(first, leaf)]
    fwd_hooks += [(name, keep) for name in hooks if name != first]
    with torch.inference_mode(False), torch.enable_grad(), model.hooks(fwd_hooks=fwd_hooks):
        value = metric(model(corrupted_tokens))
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError("attribution patching needs a metric that returns a scalar tensor")
        missing = [n for n in hooks if n not in store]
        if missing:
            raise ValueError(f"these hooks never fired in the forward pass: {missing}")
        grads = torch.autograd.grad(value.reshape(()), [store[n] for n in hooks], allow_unused=True)
    per_hook = {}
    for name, grad in zip(hooks, grads):
        corr = store[name].detach()
        delta = clean_cache[name].to(corr.device, corr.dtype) - corr
        per_hook[name] = delta * (torch.zeros_like(corr) if grad is None else grad)
    return AttributionResult(per_hook, float(value.detach()), clean_metric, layer_list)
