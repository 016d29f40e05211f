"""Residual-stream decomposition and direct logit attribution over a cache.

:class:`ResidDecomposition` is a mixin of :class:`~telelens.lens.activation_cache.ActivationCache`:
``accumulated_resid`` (the logit lens), ``decompose_resid``, ``get_full_resid_decomposition``
and ``logit_attrs``, built on the per-component stacks of :class:`ComponentStacks`.
"""

from __future__ import annotations

from typing import Literal, overload

import torch

from telelens.lens.component_stacks import (
    ComponentStacks,
    SliceLike,
    StackOrLabelled,
    TokensLike,
    _as_2d,
    _cat,
    _stack,
)
from telelens.lens.utils import Slice, as_slice


class ResidDecomposition(ComponentStacks):
    """Splits the residual stream into components and attributes logits to them."""

    # ------------------------------------------------------------------ residual stream
    @overload
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        *,
        return_labels: Literal[False] = False,
    ) -> torch.Tensor: ...
    @overload
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        *,
        return_labels: Literal[True],
    ) -> tuple[torch.Tensor, list[str]]: ...
    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> StackOrLabelled:
        """The residual stream entering each layer up to ``layer`` (logit lens).

        Components are ``{l}_pre`` for l < layer (plus ``{l}_mid`` with ``incl_mid``), the
        input to ``layer`` itself (``{layer}_mid`` too with ``mlp_input``), and ``final_post``
        when layer is n_layers/-1/None. ``apply_ln`` at the final layer runs ``model.ln_final``
        on each component (fresh statistics, weights included); elsewhere it uses the cached
        scale of the layer's norm.
        """
        ps = as_slice(pos_slice)
        layer = self._layer(layer)
        parts: list[torch.Tensor] = []
        labels: list[str] = []
        for lay in range(layer + 1):
            if lay == self._n_layers:
                parts.append(self["resid_post", self._n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", lay])
            labels.append(f"{lay}_pre")
            if (incl_mid and lay < layer) or (mlp_input and lay == layer):
                parts.append(self["resid_mid", lay])
                labels.append(f"{lay}_mid")
        stack = _stack([ps.apply(p, dim=-2) for p in parts])  # [component, *batch_and_pos, d_model]
        if apply_ln:
            stack = self.apply_ln_to_stack(
                stack,
                layer,
                pos_slice=ps,
                mlp_input=mlp_input,
                has_batch_dim=self.has_batch_dim,
                recompute_ln=layer == self._n_layers,
            )
        return (stack, labels) if return_labels else stack

    @overload
    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        *,
        return_labels: Literal[False] = False,
    ) -> torch.Tensor: ...
    @overload
    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        *,
        return_labels: Literal[True],
    ) -> tuple[torch.Tensor, list[str]]: ...
    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> StackOrLabelled:
        """The input to ``layer`` split into embed, pos_embed and each attn/MLP output before it.

        The components sum to ``resid_pre`` of ``layer`` (``resid_mid`` with ``mlp_input``,
        ``resid_post`` of the last block for layer n_layers/-1/None).
        """
        ps = as_slice(pos_slice)
        layer = self._layer(layer)
        incl_attn = mode != "mlp"
        incl_mlp = mode != "attn" and not self.model.cfg.attn_only
        parts: list[torch.Tensor] = []
        labels: list[str] = []
        if incl_embeds:
            if self.has_embed:
                parts.append(self["hook_embed"])
                labels.append("embed")
            if self.has_pos_embed:
                parts.append(self["hook_pos_embed"])
                labels.append("pos_embed")
        for lay in range(layer):
            if incl_attn:
                parts.append(self["attn_out", lay])
                labels.append(f"{lay}_attn_out")
            if incl_mlp:
                parts.append(self["mlp_out", lay])
                labels.append(f"{lay}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = _stack([ps.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    # ------------------------------------------------------------------ full decomposition
    @overload
    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        *,
        return_labels: Literal[False] = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> torch.Tensor: ...
    @overload
    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        *,
        return_labels: Literal[True],
        project_output_onto: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[str]]: ...
    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice: SliceLike = None,
        return_labels: bool = False,
        project_output_onto: torch.Tensor | None = None,
    ) -> StackOrLabelled:
        """The input to ``layer`` split into every head, every neuron (or MLP layer), embeddings and biases.

        Order: head results (``L{l}H{h}``), neuron results (``L{l}N{n}``, or ``{l}_mlp_out``
        without ``expand_neurons``), ``embed``, ``pos_embed``, ``bias`` (the accumulated output
        biases). The components sum to the residual stream entering ``layer``.
        ``project_output_onto`` ([d_model] or [d_model, n_out]) projects each component.
        """
        layer = self._layer(layer)
        ps = as_slice(pos_slice)
        proj, squeeze = _as_2d(project_output_onto)
        folded = apply_ln and proj is not None  # normalize each part in d_model space, then project

        def finish(stack: torch.Tensor) -> torch.Tensor:
            if folded:
                stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=ps)
            return stack if proj is None else stack @ proj.to(stack)

        heads, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=ps, return_labels=True)
        heads = finish(heads)
        parts = [heads]
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                if folded:
                    assert proj is not None
                    neurons = self._neuron_stack_ln_projected(layer, ps, Slice(None), proj, mlp_input)
                    labels.extend(self._neuron_labels(layer, Slice(None)))
                else:
                    neurons, neuron_labels = self.stack_neuron_results(
                        layer, pos_slice=ps, return_labels=True, project_output_onto=proj
                    )
                    labels.extend(neuron_labels)
                parts.append(neurons)
            else:
                mlps, mlp_labels = self.decompose_resid(
                    layer,
                    mlp_input=mlp_input,
                    pos_slice=ps,
                    incl_embeds=False,
                    mode="mlp",
                    return_labels=True,
                )
                parts.append(finish(mlps))
                labels.extend(mlp_labels)
        for present, name in ((self.has_embed, "embed"), (self.has_pos_embed, "pos_embed")):
            if present:
                parts.append(finish(ps.apply(self[name], dim=-2)[None].to(heads.device)))
                labels.append(name)
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons).to(heads)
        if folded:
            bias = finish(bias.expand(1, *heads.shape[1:-1], bias.shape[-1]))
        elif proj is not None:
            bias = bias @ proj.to(bias)
        parts.append(bias.expand(1, *heads.shape[1:]))
        labels.append("bias")
        stack = _cat(parts)
        if apply_ln and not folded:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=ps)
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    # ------------------------------------------------------------------ logit attribution
    def logit_attrs(
        self,
        residual_stack: torch.Tensor,
        tokens: TokensLike,
        incorrect_tokens: TokensLike | None = None,
        pos_slice: SliceLike = None,
        batch_slice: SliceLike = None,
        has_batch_dim: bool = True,
    ) -> torch.Tensor:
        """Each component's direct contribution to the logit of ``tokens`` (or to the logit difference).

        The stack is scaled by the final norm's cached scale (``apply_ln_to_stack`` at the
        unembed) and dotted with the tokens' unembedding directions; the bias ``b_U`` is not
        included. ``tokens`` is a str, an int, or a tensor ([], [batch] or [batch, pos]) that
        broadcasts against the stack's batch/pos dims. Returns [component, *batch_and_pos].
        """
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            if self._token_shape(tokens) != self._token_shape(incorrect_tokens):
                raise ValueError(
                    f"tokens and incorrect_tokens must have the same shape! (tokens.shape="
                    f"{self._token_shape(tokens)}, incorrect_tokens.shape={self._token_shape(incorrect_tokens)})"
                )
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(
            residual_stack,
            layer=-1,
            pos_slice=pos_slice,
            batch_slice=batch_slice,
            has_batch_dim=has_batch_dim,
        )
        return (scaled * directions.to(scaled)).sum(dim=-1)

    @staticmethod
    def _token_shape(tokens: TokensLike) -> torch.Size:
        return torch.Size([]) if isinstance(tokens, (str, int)) else torch.as_tensor(tokens).shape
