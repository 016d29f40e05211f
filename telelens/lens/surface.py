"""One model surface: what ``HookedTransformer`` and ``RemoteModel`` answer the same way.

:class:`ModelSurface` writes TransformerLens's model-level API once (weight views, ``QK``/``OV``,
``accumulated_bias``, head labels, ``loss_fn``, ``tokens_to_residual_directions``, hook shapes,
the final norm and ``generate``'s front door) over a few primitives each side supplies:
``get_weight(name)`` (names as ``telelens.core.graph.weights`` resolves them), ``has_weight``,
``execute(graph)`` and one generation step. A subclass may override a method for speed (the
remote model fetches only the requested unembedding columns) but not re-implement its logic.

:class:`CacheModel` is what :class:`~telelens.lens.activation_cache.ActivationCache` needs from
a model: a declared protocol, not a module tree. Torch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.nn.functional as F

from telelens.lens.factored_matrix import FactoredMatrix
from telelens.lens.generation import StepFn, generation_loop, generation_options
from telelens.lens.hook_shapes import hook_shape_pattern
from telelens.lens.norm import final_norm_kind
from telelens.lens.tokens import TokenMethods
from telelens.lens.views import NormView

if TYPE_CHECKING:
    from telelens.protos import ir

ModelInput = str | Sequence[str] | torch.Tensor
TokensInput = str | int | torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def block_param_count(cfg: Any) -> int:
    """Parameters in the blocks (embeddings excluded), as TransformerLens counts them."""
    kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
    attn = cfg.d_model * cfg.d_head * (2 * cfg.n_heads + 2 * kv)
    d_mlp = int(getattr(cfg, "d_mlp", None) or 0)
    mlp = 0 if getattr(cfg, "attn_only", False) else (3 if getattr(cfg, "gated_mlp", False) else 2)
    return cfg.n_layers * (attn + mlp * cfg.d_model * d_mlp)


class CacheModel(Protocol):
    """What an ``ActivationCache`` reads from the model that produced it."""

    cfg: Any

    def get_weight(self, name: str) -> torch.Tensor:
        """A weight by name (``"blocks.3.attn.W_O"``, ``"W_U"``, ...)."""
        ...

    def apply_ln_final(self, residual: torch.Tensor) -> torch.Tensor:
        """The final norm, weights included, with fresh statistics."""
        ...

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor: ...

    def tokens_to_residual_directions(self, tokens: TokensInput) -> torch.Tensor: ...


class ModelSurface(TokenMethods):
    """TransformerLens's model surface over ``get_weight`` and ``execute`` (see the module doc).

    The host provides ``cfg``, ``tokenizer``, :meth:`get_weight`, :meth:`has_weight`,
    :meth:`execute`, ``hook_dict`` and :meth:`_generation_step`.
    """

    cfg: Any
    tokenizer: Any

    # ------------------------------------------------------------------ primitives
    def get_weight(self, name: str) -> torch.Tensor:
        """One weight by name: ``"W_U"``, ``"W_O"`` (stacked [n_layers, ...]), ``"blocks.3.attn.W_O"``,
        ``"ln_final.w"``, ``"blocks.3.ln1.w"``."""
        raise NotImplementedError

    def has_weight(self, name: str) -> bool:
        """Whether this model has the weight ``name`` (a folded norm has no ``w``)."""
        raise NotImplementedError

    def get_weights(self, names: Sequence[str]) -> dict[str, torch.Tensor]:
        """Several weights by name (a remote model fetches them in one request)."""
        return {name: self.get_weight(name) for name in names}

    def execute(self, graph: ir.Graph, allow_code: bool = False) -> dict[str, torch.Tensor]:
        """Validate and run an intervention graph; every saved value by its save name."""
        raise NotImplementedError

    def _generation_step(self, use_past_kv_cache: bool) -> tuple[StepFn, torch.device | str]:
        """The step :func:`~telelens.lens.generation.generation_loop` calls, and the tokens' device."""
        raise NotImplementedError

    # ------------------------------------------------------------------ weights
    def _weight_attr(self, name: str) -> torch.Tensor:
        """The weight behind an attribute (``model.W_E``, ``blocks[3].attn.W_O``): ``get_weight`` here;
        a remote model returns a lazy tensor, so probing an attribute transfers nothing."""
        return self.get_weight(name)

    def _mlp_weight(self, name: str) -> torch.Tensor:
        if getattr(self.cfg, "attn_only", False):
            raise AttributeError("an attention-only model has no MLP weights")
        return self._weight_attr(name)

    @property
    def W_U(self) -> torch.Tensor:
        """[d_model, d_vocab_out]"""
        return self._weight_attr("W_U")

    @property
    def b_U(self) -> torch.Tensor:
        """[d_vocab_out]"""
        return self._weight_attr("b_U")

    @property
    def W_E(self) -> torch.Tensor:
        """[d_vocab, d_model]"""
        return self._weight_attr("W_E")

    @property
    def W_pos(self) -> torch.Tensor:
        """[n_ctx, d_model] (learned positions only)."""
        if getattr(self.cfg, "positional_embedding_type", "standard") != "standard":
            raise AttributeError("this model uses rotary positions: it has no W_pos")
        return self._weight_attr("W_pos")

    @property
    def W_E_pos(self) -> torch.Tensor:
        """W_E and W_pos concatenated: [d_vocab + n_ctx, d_model]."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def W_Q(self) -> torch.Tensor:
        """[n_layers, n_heads, d_model, d_head]"""
        return self._weight_attr("W_Q")

    @property
    def W_K(self) -> torch.Tensor:
        """[n_layers, n_key_value_heads, d_model, d_head]"""
        return self._weight_attr("W_K")

    @property
    def W_V(self) -> torch.Tensor:
        """[n_layers, n_key_value_heads, d_model, d_head]"""
        return self._weight_attr("W_V")

    @property
    def W_O(self) -> torch.Tensor:
        """[n_layers, n_heads, d_head, d_model]"""
        return self._weight_attr("W_O")

    @property
    def b_Q(self) -> torch.Tensor:
        """[n_layers, n_heads, d_head]"""
        return self._weight_attr("b_Q")

    @property
    def b_K(self) -> torch.Tensor:
        return self._weight_attr("b_K")

    @property
    def b_V(self) -> torch.Tensor:
        return self._weight_attr("b_V")

    @property
    def b_O(self) -> torch.Tensor:
        """[n_layers, d_model]"""
        return self._weight_attr("b_O")

    @property
    def W_in(self) -> torch.Tensor:
        """[n_layers, d_model, d_mlp]"""
        return self._mlp_weight("W_in")

    @property
    def W_gate(self) -> torch.Tensor | None:
        """[n_layers, d_model, d_mlp]; None for an MLP that is not gated."""
        return self._mlp_weight("W_gate") if getattr(self.cfg, "gated_mlp", False) else None

    @property
    def W_out(self) -> torch.Tensor:
        """[n_layers, d_mlp, d_model]"""
        return self._mlp_weight("W_out")

    @property
    def b_in(self) -> torch.Tensor:
        """[n_layers, d_mlp]"""
        return self._mlp_weight("b_in")

    @property
    def b_out(self) -> torch.Tensor:
        """[n_layers, d_model]"""
        return self._mlp_weight("b_out")

    @property
    def QK(self) -> FactoredMatrix:
        """[n_layers, n_heads, d_model, d_model] as a FactoredMatrix."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """[n_layers, n_heads, d_model, d_model] as a FactoredMatrix."""
        return FactoredMatrix(self.W_V, self.W_O)

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> torch.Tensor:
        """Sum of the output biases written before ``layer`` (plus that layer's attention if ``mlp_input``)."""
        if mlp_input and layer >= self.cfg.n_layers:
            raise ValueError("mlp_input needs a layer below n_layers")
        with_mlp = include_mlp_biases and not getattr(self.cfg, "attn_only", False)
        w = self.get_weights(["b_O", "b_out"] if with_mlp else ["b_O"])
        b_O = w["b_O"]  # [n_layers, d_model]
        total = torch.zeros(self.cfg.d_model, dtype=b_O.dtype, device=b_O.device)
        for i in range(layer):  # one order on both sides, so the numbers match exactly
            total = total + b_O[i]
            if with_mlp:
                total = total + w["b_out"][i]
        if mlp_input:
            total = total + b_O[layer]
        return total

    def all_head_labels(self) -> list[str]:
        """``L{l}H{h}`` for every head."""
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def hook_shapes(self) -> dict[str, tuple[str, ...]]:
        """Every hook name with its TransformerLens shape pattern (dims by name)."""
        hook_dict: dict[str, Any] = getattr(self, "hook_dict")  # noqa: B009 (a module attribute locally)
        return {name: hook_shape_pattern(name) for name in hook_dict}

    # ------------------------------------------------------------------ unembedding and norms
    def tokens_to_residual_directions(self, tokens: TokensInput) -> torch.Tensor:
        """Unembedding directions of tokens: [d_model] for one token, [..., d_model] for many."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        return self._unembed_directions(torch.as_tensor(tokens, dtype=torch.long))

    def _unembed_directions(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rows of W_U.T for token ids of any shape: [*tokens.shape, d_model]."""
        W_U = self.W_U
        return W_U.T[tokens.to(W_U.device)]

    def apply_ln_final(self, residual: torch.Tensor) -> torch.Tensor:
        """``ln_final`` with its weights and fresh statistics (the logit lens), on ``residual``'s device;
        ``residual`` unchanged for a model without a final norm."""
        return NormView(self, "ln_final", final_norm_kind(self.cfg))(residual)

    # ------------------------------------------------------------------ loss
    def loss_fn(
        self,
        logits: torch.Tensor,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        per_token: bool = False,
    ) -> torch.Tensor:
        """Next-token cross-entropy; padding positions (attention_mask 0) are left out."""
        tokens = tokens.to(logits.device)
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]  # [batch, pos - 1]
        if attention_mask is not None:
            keep = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.device).bool()
            if per_token:
                return nll * keep
            return nll[keep].mean()
        return nll if per_token else nll.mean()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()  # not inference_mode: the returned tokens must be usable in autograd later
    def generate(
        self,
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
        return_type: Literal["input", "str", "tokens", "embeds"] = "input",
        verbose: bool = True,
        seed: int | None = None,
        attention_mask: torch.Tensor | None = None,
        **generation_kwargs: Any,
    ) -> Any:
        """TransformerLens's ``generate``: sample a continuation (greedy with ``do_sample=False``).

        TransformerLens 3.9's arguments, in its order; ``seed`` and ``attention_mask`` are telelens's.
        Of Hugging Face's ``generation_kwargs``, ``output_logits=True`` returns the tokens and each
        step's logits (``.sequences``, ``.logits``); others are ignored with a warning, as there.

        The loop is :func:`telelens.lens.generation.generation_loop`; each side supplies only
        its step (a KV-cached forward locally; one graph per step on a server, which keeps no
        state between requests, so there ``use_past_kv_cache`` is accepted and ignored).
        """
        step, device = self._generation_step(use_past_kv_cache)
        return generation_loop(
            self, input, step, device, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos,
            eos_token_id=eos_token_id, do_sample=do_sample, top_k=top_k, top_p=top_p, temperature=temperature,
            freq_penalty=freq_penalty, prepend_bos=prepend_bos, padding_side=padding_side,
            return_type=return_type, verbose=verbose, seed=seed, attention_mask=attention_mask,
            output_logits=generation_options(generation_kwargs),
        )  # fmt: skip
