"""ActivationCache: the activations of one forward pass, with TransformerLens's helpers.

``logits, cache = model.run_with_cache(tokens)`` returns one. Index it by full hook name
(``cache["blocks.0.hook_resid_pre"]``) or by shorthand (``cache["pattern", 3]``,
``cache["scale", 2, "ln1"]``, negative layers allowed), and decompose the residual stream
for direct logit attribution or the logit lens (``decompose_resid``, ``accumulated_resid``,
``stack_head_results``, ``stack_neuron_results``, ``apply_ln_to_stack``, ``logit_attrs``).

Semantics follow TransformerLens 3.9's ``ActivationCache``. Stacks have shape
``[component, *batch_and_pos_dims, d_model]`` where the batch/pos dims are ``[batch, pos]``,
``[pos]`` after ``remove_batch_dim()``, or fewer when an int ``pos_slice`` drops the position.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import torch

from telelens.lens.norm import final_norm_kind
from telelens.lens.utils import Slice, SliceInput, as_slice, get_act_name, warn_if_mps

if TYPE_CHECKING:
    from telelens.lens.surface import CacheModel

logger = logging.getLogger(__name__)

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


class ActivationCache:
    """Cached activations of a model run, with decomposition helpers.

    Args:
        cache_dict: hook name -> activation.
        model: the model that produced them, local or remote: the helpers read its config and
            weights through :class:`~telelens.lens.surface.CacheModel` (``get_weight``, ...).
        has_batch_dim: whether activations start with a batch dimension.
    """

    def __init__(
        self, cache_dict: dict[str, torch.Tensor], model: CacheModel, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # ------------------------------------------------------------------ dict-like access
    def _resolve(self, key: str | tuple[Any, ...]) -> str:
        """Full hook name of a key: a name, a shorthand, or ``(name, layer[, layer_type])``."""
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        name, *rest = key
        if rest and isinstance(rest[0], int) and rest[0] < 0:
            rest[0] += self.model.cfg.n_layers  # negative layers count from the end
        return get_act_name(name, *rest)

    def __getitem__(self, key: str | tuple[Any, ...]) -> torch.Tensor:
        """``cache["blocks.0.attn.hook_pattern"]``, ``cache["pattern", 0]``, ``cache["scale", 2, "ln1"]``."""
        name = self._resolve(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            hint = "" if name == key else f" (from {key!r})"
            raise KeyError(
                f"{name!r}{hint} is not in the cache; run_with_cache with a names_filter that keeps it"
            ) from None

    def __contains__(self, key: object) -> bool:
        """True for a cached full name, and for a shorthand or tuple key that resolves to one."""
        try:
            return self._resolve(key) in self.cache_dict  # type: ignore[arg-type]
        except (TypeError, ValueError, AttributeError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> KeysView[str]:
        return self.cache_dict.keys()

    def values(self) -> ValuesView[torch.Tensor]:
        return self.cache_dict.values()

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict.keys())}"

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every activation to ``device`` (in place; returns self)."""
        warn_if_mps(device)
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Set torch's *global* autodiff switch (``torch.set_grad_enabled(mode)``)."""
        logger.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    # ------------------------------------------------------------------ batch dimension
    def _batch_size(self) -> int:
        """The most common leading size (broadcast entries such as pos_embed lead with 1)."""
        counts = Counter(v.shape[0] for v in self.cache_dict.values() if v.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension of a batch-of-one cache (in place; returns self)."""
        if not self.has_batch_dim:
            logger.warning("Tried removing batch dimension after already having removed it.")
            return self
        size = self._batch_size()
        if size != 1:
            raise ValueError(f"Cannot remove batch dimension from cache with batch size {size}")
        self.cache_dict = {
            k: v[0] if v.ndim > 0 and v.shape[0] == 1 else v for k, v in self.cache_dict.items()
        }
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: SliceLike) -> ActivationCache:
        """A new cache with ``batch_slice`` applied to every batched activation (an int drops the dim)."""
        bs = as_slice(batch_slice)
        if not self.has_batch_dim and bs.mode != "identity":
            raise ValueError("Cannot index into a cache without a batch dim")
        size = self._batch_size()
        new: dict[str, torch.Tensor] = {}
        for name, t in self.cache_dict.items():
            if t.ndim > 0 and t.shape[0] == size:
                t = bs.apply(t, dim=0)
            elif t.ndim > 0 and t.shape[0] == 1 and bs.mode == "int":
                t = t[0]  # a broadcast entry loses its batch dim along with the others
            new[name] = t
        return ActivationCache(new, self.model, has_batch_dim=self.has_batch_dim and bs.mode != "int")

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

    # ------------------------------------------------------------------ residual stream
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

    # ------------------------------------------------------------------ full decomposition
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

    def _neuron_labels(self, layer: int, neuron_slice: Slice) -> list[str]:
        """``L{l}N{n}`` for each layer before ``layer`` and each neuron the slice keeps."""
        neurons = neuron_slice.indices(self.model.cfg.d_mlp or 0).tolist()
        return [f"L{lay}N{n}" for lay in range(layer) for n in neurons]

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
