"""Per-component stacks of a cache: head results, neuron results, and the norm applied to a stack.

:class:`ComponentStacks` is a mixin of :class:`~telelens.lens.activation_cache.ActivationCache`
(TransformerLens's ``stack_head_results``, ``stack_neuron_results``, ``apply_ln_to_stack``...).
Stacks have shape ``[component, *batch_and_pos_dims, d_model]``; the model is reached only
through :class:`~telelens.lens.surface.CacheModel` (``cfg``, ``get_weight``, ``apply_ln_final``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import torch

from telelens.lens.norm import final_norm_kind
from telelens.lens.utils import Slice, SliceInput, as_slice

if TYPE_CHECKING:
    from telelens.lens.surface import CacheModel

logger = logging.getLogger("telelens.lens.activation_cache")  # the name users configure

SliceLike: TypeAlias = Slice | SliceInput
TokensLike: TypeAlias = str | int | torch.Tensor
StackOrLabelled: TypeAlias = torch.Tensor | tuple[torch.Tensor, list[str]]

_NORMED = ("LN", "LNPre", "RMS", "RMSPre")


def _as_2d(project: torch.Tensor | None) -> tuple[torch.Tensor | None, bool]:
    """A [d_model] projection as [d_model, 1], and whether to squeeze the result back."""
    if project is None or project.ndim != 1:
        return project, False
    return project[:, None], True


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate stacks along dim 0 after broadcasting the other dims (pos_embed is [1, pos, d_model])."""
    dev = parts[0].device
    inner = torch.broadcast_shapes(*(p.shape[1:] for p in parts))
    return torch.cat([p.to(dev).expand(p.shape[0], *inner) for p in parts], dim=0)


def _stack(parts: list[torch.Tensor]) -> torch.Tensor:
    """Stack along a new dim 0 after broadcasting (see :func:`_cat`)."""
    return _cat([p[None] for p in parts])


class ComponentStacks:
    """Stacks of per-head and per-neuron outputs, and the cached-scale norm applied to stacks."""

    if TYPE_CHECKING:  # provided by ActivationCache
        cache_dict: dict[str, torch.Tensor]
        model: CacheModel
        has_batch_dim: bool
        has_embed: bool
        has_pos_embed: bool

        def __getitem__(self, key: str | tuple[Any, ...]) -> torch.Tensor: ...

    # ------------------------------------------------------------------ helpers
    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    def _layer(self, layer: int | None) -> int:
        """None and -1 mean n_layers (the unembed input); other negatives count back from there."""
        if layer is None:
            return self._n_layers
        return self._n_layers + 1 + layer if layer < 0 else layer

    def _empty_stack(self, pos_slice: Slice, width: int | None = None) -> torch.Tensor:
        """A stack of no components with the batch/pos dims of this cache."""
        src = self["hook_embed"] if self.has_embed else self["blocks.0.hook_resid_pre"]
        src = pos_slice.apply(src, dim=-2)
        return src.new_zeros(0, *src.shape[:-1], width or src.shape[-1])

    def _remainder(
        self, stack: torch.Tensor, layer: int, pos_slice: Slice, proj: torch.Tensor | None
    ) -> torch.Tensor:
        """``stack`` with one more component: resid_post of ``layer - 1`` minus the stack's sum."""
        resid = pos_slice.apply(self["resid_post", layer - 1], dim=-2).to(stack.device)
        if proj is not None:
            resid = resid @ proj.to(resid)
        return torch.cat([stack, (resid - stack.sum(0))[None]], dim=0)

    # ------------------------------------------------------------------ attention heads
    def _head_results(self, layer: int) -> None:
        """Cache ``blocks.{layer}.attn.hook_result`` from hook_z and W_O if it is missing."""
        key = f"blocks.{layer}.attn.hook_result"
        if key in self.cache_dict:
            return
        z = self["z", layer, "attn"]  # [*batch_and_pos, head_index, d_head]
        W_O = self.model.get_weight(f"blocks.{layer}.attn.W_O").to(z)  # [head_index, d_head, d_model]
        self.cache_dict[key] = torch.einsum(
            "...hd,hdm->...hm", z, W_O
        )  # [*batch_and_pos, head_index, d_model]

    def compute_head_results(self) -> None:
        """Cache every layer's per-head outputs (``attn.hook_result``) computed from hook_z and W_O.

        ``attn_out`` is their sum over heads plus ``b_O``. Does nothing if they are cached already.
        """
        if "blocks.0.attn.hook_result" in self.cache_dict:
            logger.warning("Tried to compute head results when they were already cached")
            return
        for layer in range(self._n_layers):
            self._head_results(layer)

    @overload
    def stack_head_results(
        self,
        layer: int = -1,
        *,
        return_labels: Literal[False] = False,
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> torch.Tensor: ...
    @overload
    def stack_head_results(
        self,
        layer: int = -1,
        *,
        return_labels: Literal[True],
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> tuple[torch.Tensor, list[str]]: ...
    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: SliceLike = None,
        apply_ln: bool = False,
    ) -> StackOrLabelled:
        """Each head's output for every layer before ``layer``: [layer * n_heads, *batch_and_pos, d_model].

        Labels are ``L{l}H{h}``; ``incl_remainder`` adds the rest of ``resid_post`` of ``layer - 1``.
        Head results are computed from hook_z and W_O when ``hook_result`` was not cached.
        """
        ps = as_slice(pos_slice)
        layer = self._layer(layer)
        parts: list[torch.Tensor] = []
        labels: list[str] = []
        for lay in range(layer):
            self._head_results(lay)
            parts.append(ps.apply(self["result", lay, "attn"], dim=-3))  # [*batch_and_pos, head, d_model]
            labels.extend(f"L{lay}H{h}" for h in range(self.model.cfg.n_heads))
        stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else self._empty_stack(ps)
        if incl_remainder:
            stack = self._remainder(stack, layer, ps, None)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        return (stack, labels) if return_labels else stack

    def stack_activation(
        self, activation_name: str, layer: int = -1, sublayer_type: str | None = None
    ) -> torch.Tensor:
        """``activation_name`` of every layer before ``layer``, stacked: [layers_covered, ...]."""
        return torch.stack(
            [self[activation_name, lay, sublayer_type] for lay in range(self._layer(layer))], dim=0
        )

    # ------------------------------------------------------------------ MLP neurons
    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: SliceLike = None,
        pos_slice: SliceLike = None,
        project_output_onto: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each neuron's output at ``layer``: [*batch_and_pos, neuron, d_model] (not cached: cheap to redo).

        With ``project_output_onto`` ([d_model] or [d_model, n_out]) the projection is applied
        to W_out first, so the per-neuron d_model vectors are never materialised.
        """
        ns, ps = as_slice(neuron_slice), as_slice(pos_slice)
        acts = ns.apply(ps.apply(self["post", layer, "mlp"], dim=-2), dim=-1)  # [*batch_and_pos, neuron]
        W_out = self.model.get_weight(f"blocks.{layer}.mlp.W_out")
        W_out = ns.apply(W_out, dim=0).to(acts)  # [neuron, d_model]
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto.to(acts)  # [neuron(, n_out)]
        return acts * projected if projected.ndim == 1 else acts[..., None] * projected

    def _neuron_stack_ln_projected(
        self, layer: int, pos_slice: Slice, neuron_slice: Slice, proj: torch.Tensor, mlp_input: bool
    ) -> torch.Tensor:
        """LN_s(a_n W_out_n) @ p = (a_n / s) * (centred(W_out_n) @ p): no [..., neuron, d_model] tensor."""
        kind = self.model.cfg.normalization_type
        scale = self._ln_scale(layer, mlp_input, pos_slice) if kind in _NORMED else None
        parts = []
        for lay in range(layer):
            acts = neuron_slice.apply(pos_slice.apply(self["post", lay, "mlp"], dim=-2), dim=-1)
            W_out = self.model.get_weight(f"blocks.{lay}.mlp.W_out")
            W = neuron_slice.apply(W_out, dim=0).to(acts)  # [neuron, d_model]
            if kind in ("LN", "LNPre"):
                W = W - W.mean(-1, keepdim=True)
            if scale is not None:
                acts = acts / scale.to(acts.device)
            parts.append(acts[..., None] * (W @ proj.to(acts)))  # [*batch_and_pos, neuron, n_out]
        if not parts:
            return self._empty_stack(pos_slice, proj.shape[-1])
        return torch.cat(parts, dim=-2).movedim(-2, 0)

    @overload
    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        *,
        return_labels: Literal[False] = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> torch.Tensor: ...
    @overload
    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        *,
        return_labels: Literal[True],
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[str]]: ...
    def stack_neuron_results(
        self,
        layer: int,
        pos_slice: SliceLike = None,
        neuron_slice: SliceLike = None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> StackOrLabelled:
        """Each neuron's output for every layer before ``layer``: [layer * neurons, *batch_and_pos, d_model].

        Labels are ``L{l}N{n}``. Memory-hungry for big models: pass ``neuron_slice`` or
        ``project_output_onto`` ([d_model] or [d_model, n_out]) to keep it small.
        """
        layer = self._layer(layer)
        ps = as_slice(pos_slice)
        ns = Slice.unwrap(neuron_slice)  # an int keeps the neuron dim, so stacks still concatenate
        proj, squeeze = _as_2d(project_output_onto)
        d_mlp = self.model.cfg.d_mlp
        if d_mlp is None:
            raise ValueError("this model has no MLP neurons")
        labels = self._neuron_labels(layer, ns)
        if apply_ln and proj is not None:
            stack = self._neuron_stack_ln_projected(layer, ps, ns, proj, mlp_input=False)
            if incl_remainder:
                # Cached-scale LN is linear: the remainder is LN_s(resid_post) @ p minus the neurons.
                resid = ps.apply(self["resid_post", layer - 1], dim=-2)
                resid = self.apply_ln_to_stack(resid[None], layer, pos_slice=ps)[0] @ proj.to(resid)
                stack = torch.cat([stack, (resid.to(stack.device) - stack.sum(0))[None]], dim=0)
                labels.append("remainder")
        else:
            parts = [self.get_neuron_results(lay, ns, ps, proj) for lay in range(layer)]
            width = None if proj is None else proj.shape[-1]
            stack = torch.cat(parts, dim=-2).movedim(-2, 0) if parts else self._empty_stack(ps, width)
            if incl_remainder:
                stack = self._remainder(stack, layer, ps, proj)
                labels.append("remainder")
            if apply_ln:
                stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    def _neuron_labels(self, layer: int, neuron_slice: Slice) -> list[str]:
        """``L{l}N{n}`` for each layer before ``layer`` and each neuron the slice keeps."""
        neurons = neuron_slice.indices(self.model.cfg.d_mlp or 0).tolist()
        return [f"L{lay}N{n}" for lay in range(layer) for n in neurons]

    # ------------------------------------------------------------------ normalization
    def _ln_scale(
        self, layer: int | None, mlp_input: bool, pos_slice: Slice, batch_slice: Slice | None = None
    ) -> torch.Tensor:
        """The cached ``hook_scale`` of the norm reading the input to ``layer`` (ln_final at n_layers)."""
        if layer is None or layer == self._n_layers:
            key = "ln_final.hook_scale"
        else:
            key = f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        if key not in self.cache_dict:
            raise KeyError(
                f"applying the norm needs {key!r} in the cache (keep it in run_with_cache's names_filter)"
            )
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)  # [*batch_and_pos, 1]
        if batch_slice is not None and self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        return scale

    def apply_ln_to_stack(
        self,
        residual_stack: torch.Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> torch.Tensor:
        """Treat each component as the input to ``layer``'s norm, using that norm's cached scale.

        Centres (LN/LNPre) and divides by the cached ``hook_scale``; the norm's weight and bias
        are *not* applied (fold them into the weights for attribution, as TransformerLens does).
        ``layer`` None/-1/n_layers means ln_final; ``mlp_input`` picks ln2 over ln1.
        ``pos_slice`` is assumed applied to the stack already and is applied to the scale;
        ``batch_slice`` is applied to both. ``recompute_ln`` at the final layer instead runs
        ``model.ln_final`` on each component with its own statistics (the logit lens).
        Models without normalization get the stack back unchanged.
        """
        cfg = self.model.cfg
        if cfg.normalization_type not in _NORMED:
            return residual_stack
        ps, bs = as_slice(pos_slice), as_slice(batch_slice)
        layer = self._layer(layer)
        if has_batch_dim:
            residual_stack = bs.apply(residual_stack, dim=1)
        if recompute_ln and layer == self._n_layers and final_norm_kind(cfg) is not None:
            return self.model.apply_ln_final(residual_stack)
        if cfg.normalization_type in ("LN", "LNPre"):
            residual_stack = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        scale = self._ln_scale(layer, mlp_input, ps, bs)
        return residual_stack / scale.to(residual_stack.device)
