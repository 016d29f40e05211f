"""Ablation sweeps: knock out each head (or MLP neuron) in turn and record the metric.

Zero ablation sets the unit's activation to 0 at every position; mean ablation replaces it
by its mean over the batch (per position, as ``ops.mean_ablate`` and TransformerLens's
tutorials do; with one sequence that changes nothing). Heads are ablated at ``hook_z``,
neurons at ``mlp.hook_post``. Each ablation is one patched variant for the engine of
:mod:`telelens.core.sweeps.engine`, whose "clean" activation is the ablated value: the
variants run batched, resumed after the ablated layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from tqdm.auto import tqdm

from telelens.core.sweeps.engine import SweepOptions, has_active_hooks, sweep_sites
from telelens.core.sweeps.metric import LogitPositions
from telelens.core.sweeps.sites import PatchSite

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

AblationKind = Literal["zero", "mean"]
AblationOver = Literal["heads", "neurons"]


def ablation_sweep(
    model: HookedTransformer,
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], Any],
    kind: AblationKind = "zero",
    over: AblationOver = "heads",
    layers: Sequence[int] | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    logit_positions: LogitPositions = "auto",
    memory_budget: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """The metric with each head (or neuron) ablated: [len(layers), n_heads] (or [.., d_mlp]).

    Args:
        model: The model.
        tokens: Tokens [batch, pos].
        metric: Logits [batch, pos, d_vocab_out] -> scalar.
        kind: ``"zero"`` or ``"mean"`` (mean over the batch, per position).
        over: ``"heads"`` (``hook_z``) or ``"neurons"`` (``mlp.hook_post``).
        layers: Layers to sweep (default: all).
        attention_mask: Mask of ``tokens`` (left padding allowed).
        logit_positions: Positions the metric reads (``"auto"``: probed).
        memory_budget: Bytes one block of variants may use.
        progress: Show a progress bar.
    """
    if kind not in ("zero", "mean"):
        raise ValueError(f"kind must be 'zero' or 'mean', got {kind!r}")
    if over not in ("heads", "neurons"):
        raise ValueError(f"over must be 'heads' or 'neurons', got {over!r}")
    cfg = model.cfg
    if over == "neurons" and (cfg.attn_only or not cfg.d_mlp):
        raise ValueError("this model has no MLP neurons to ablate")
    layer_list = list(range(cfg.n_layers)) if layers is None else [int(x) for x in layers]
    suffix = "attn.hook_z" if over == "heads" else "mlp.hook_post"
    units = cfg.n_heads if over == "heads" else int(cfg.d_mlp or 0)
    hooks = {layer: f"blocks.{layer}.{suffix}" for layer in layer_list}
    if tokens.dim() == 1:
        tokens = tokens[None]

    with torch.inference_mode():
        _, cache = model.run_with_cache(
            tokens,
            attention_mask=attention_mask,
            names_filter=lambda n: n in set(hooks.values()),
            return_cache_object=False,
        )
    replaced: dict[str, torch.Tensor] = {}
    for name in hooks.values():
        act = cache[name]
        replaced[name] = torch.zeros_like(act) if kind == "zero" else act.mean(0, keepdim=True).expand_as(act)

    sites = [PatchSite(layer, (None, u)) for layer in layer_list for u in range(units)]
    if has_active_hooks(model):  # the engine calls blocks directly: keep the user's hooks working
        return _naive(model, tokens, metric, hooks, replaced, sites, attention_mask, progress).reshape(
            len(layer_list), units
        )
    with tqdm(total=len(sites), disable=not progress) as bar:
        flat = sweep_sites(
            model,
            tokens,
            lambda layer: hooks[layer],
            sites,
            lambda name: replaced[name],
            metric,
            attention_mask=attention_mask,
            options=SweepOptions(logit_positions=logit_positions, memory_budget=memory_budget),
            progress=bar.update,
        )
    return flat.reshape(len(layer_list), units)


def _naive(
    model: HookedTransformer,
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], Any],
    hooks: dict[int, str],
    replaced: dict[str, torch.Tensor],
    sites: list[PatchSite],
    attention_mask: torch.Tensor | None,
    progress: bool,
) -> torch.Tensor:
    """One forward pass per ablated unit."""
    values = []
    with torch.inference_mode():
        for site in tqdm(sites, disable=not progress):
            name, unit = hooks[site.layer], site.index[1]

            def ablate(act: torch.Tensor, hook: Any, name: str = name, unit: Any = unit) -> torch.Tensor:
                act = act.clone()
                act[:, :, unit] = replaced[name][:, :, unit].to(act.dtype)
                return act

            logits = model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=[(name, ablate)])
            values.append(float(metric(logits)))
    return torch.tensor(values, dtype=torch.float32)
