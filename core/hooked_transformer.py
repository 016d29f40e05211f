"""HookedTransformer: a TransformerLens-compatible transformer with a hook on every activation."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import nn

from telelens.core import devices
from telelens.core.components import BlockList, Embed, PosEmbed, Rotary, TransformerBlock, Unembed, make_norm
from telelens.core.components.attention import AttentionContext
from telelens.core.config import HookedTransformerConfig
from telelens.core.forward_context import HookedTransformerKeyValueCache, attention_context
from telelens.core.hook_points import HookedRootModule, HookPoint
from telelens.core.pretrained import PretrainedConstructors
from telelens.lens.surface import ModelSurface
from telelens.trace.layer_range import resolve_layer

if TYPE_CHECKING:
    from telelens.lens.activation_cache import ActivationCache
    from telelens.lens.generation import StepFn
    from telelens.protos import ir

__all__ = ["HookedTransformer", "HookedTransformerKeyValueCache", "ModelInput"]

logger = logging.getLogger(__name__)

ModelInput = str | Sequence[str] | torch.Tensor


class HookedTransformer(PretrainedConstructors, ModelSurface, HookedRootModule):
    """A decoder-only transformer with TransformerLens's hook names, shapes and methods.

    Build one from a config (random weights) with ``HookedTransformer(cfg)``, or load
    weights with :meth:`from_pretrained` (hub name, TransformerLens alias, local Hugging
    Face folder, or ``.gguf`` file; see :class:`~telelens.core.pretrained.PretrainedConstructors`).
    The weight views (``W_U``, ``W_O``, ``QK``, ...),
    ``accumulated_bias``, ``loss_fn`` and ``generate`` come from
    :class:`~telelens.lens.surface.ModelSurface`, shared with ``RemoteModel``, over this
    class's :meth:`get_weight` and :meth:`execute`.
    """

    def __init__(
        self,
        cfg: HookedTransformerConfig | dict[str, Any],
        tokenizer: Any = None,
        move_to_device: bool = True,
        default_padding_side: Literal["left", "right"] = "right",
        init_weights: bool = True,
    ) -> None:
        super().__init__()
        cfg = HookedTransformerConfig.unwrap(cfg)
        self.cfg = cfg
        self.tokenizer: Any = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer, default_padding_side=default_padding_side)
        elif cfg.d_vocab == -1:
            raise ValueError("Must provide a tokenizer if d_vocab is not provided (cfg.d_vocab=-1)")
        self.cfg.default_padding_side = default_padding_side

        if cfg.use_hook_tokens:
            self.hook_tokens = HookPoint()  # [batch, pos]
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        else:
            self.rotary = Rotary(cfg)
        self.blocks = BlockList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        # Older versions kept a tied model's final norm unfolded (cfg.extra["ln_final_kind"]).
        final_kind = cfg.extra.get("ln_final_kind", cfg.normalization_type)
        self.ln_final = make_norm(cfg, kind=final_kind) if final_kind is not None else None
        self.unembed = Unembed(cfg)
        if cfg.tie_word_embeddings:
            self.unembed.weight = self.embed.W_E  # one tensor, two names
        if init_weights and cfg.init_weights:
            self.init_weights()
        self.setup()
        if move_to_device:
            self.move_model_modules_to_device()

    # ------------------------------------------------------------------ construction
    def init_weights(self) -> None:
        """Random normal(0, initializer_range) weights; norms at 1, biases at 0 (seeded by cfg.seed)."""
        gen = torch.Generator().manual_seed(self.cfg.seed) if self.cfg.seed is not None else None
        for name, p in self.named_parameters():
            if p.device.type == "meta":
                continue
            with torch.no_grad():
                if name.endswith((".w",)) and p.dim() == 1:
                    p.fill_(1.0)
                elif p.dim() == 1:
                    p.zero_()
                else:
                    p.copy_(
                        torch.randn(p.shape, generator=gen, dtype=torch.float32) * self.cfg.initializer_range
                    )

    def set_tokenizer(self, tokenizer: Any, default_padding_side: Literal["left", "right"] = "right") -> None:
        """Attach a Hugging Face tokenizer (a pad token is borrowed from EOS when missing)."""
        if tokenizer.pad_token is None:
            tokenizer.pad_token = (
                tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.bos_token
            )
        tokenizer.padding_side = default_padding_side
        self.tokenizer = tokenizer
        self.cfg.default_padding_side = default_padding_side
        # d_vocab=-1 means "the tokenizer's": its largest id + 1, as TransformerLens infers it.
        if self.cfg.d_vocab == -1:
            self.cfg.d_vocab = max(tokenizer.get_vocab().values()) + 1
        if self.cfg.d_vocab_out == -1:
            self.cfg.d_vocab_out = self.cfg.d_vocab

    # ------------------------------------------------------------------ devices
    def move_model_modules_to_device(self) -> None:
        """Place embeddings, blocks and unembed per ``cfg.device_map`` / ``cfg.n_devices``."""
        placement = devices.block_devices(self.cfg)
        first = placement[0] if placement else devices.base_device(self.cfg)
        self.embed.to(first)
        if hasattr(self, "pos_embed"):
            self.pos_embed.to(first)
        if hasattr(self, "rotary"):
            self.rotary.to(first)
        for block, dev in zip(self.blocks, placement):
            block.to(dev)
        last = placement[-1] if placement else first
        if self.ln_final is not None:
            self.ln_final.to(last)
        # Tied embeddings stay one tensor: the unembed then lives with the embedding.
        self.unembed.to(first if self.cfg.tie_word_embeddings else last)
        if self.cfg.tie_word_embeddings:
            self.unembed.weight = self.embed.W_E

    @staticmethod
    def _module_device(module: nn.Module) -> torch.device:
        for p in module.parameters():
            return p.device
        for b in module.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ tokenization
    # to_tokens, to_str_tokens, to_single_token, ...: telelens.lens.tokens.TokenMethods (shared with RemoteModel)
    def _tokens_device(self) -> torch.device:
        return self._module_device(self.embed)

    # ------------------------------------------------------------------ the surface's primitives
    def get_weight(self, name: str) -> torch.Tensor:
        """One weight by name, as ``Weight`` graph nodes resolve it (``telelens.core.graph.weights``):
        the stored tensor itself (``W_E``, ``blocks.3.attn.W_O``), a view (``W_U``), or the layers
        stacked (``W_O`` [n_layers, n_heads, d_head, d_model])."""
        from telelens.core.graph import weights

        error = weights.weight_error(self, name)
        if error is not None:
            raise AttributeError(error)
        return weights.get_weight(self, name)

    @property
    def n_params_total(self) -> int:
        """Every parameter, embeddings, biases and norms included (a tied weight counted once), as
        TransformerLens counts it; ``cfg.n_params`` counts only the blocks' weight matrices."""
        return sum(p.numel() for p in self.parameters())

    def has_weight(self, name: str) -> bool:
        from telelens.core.graph.weights import weight_error

        return weight_error(self, name) is None

    @property
    def hook_names(self) -> list[str]:
        """Hook points that fire under the current switches, in forward order (as a server lists them)."""
        from telelens.core.graph.local import LocalBackend

        return LocalBackend(self).hook_names

    def execute(self, graph: ir.Graph, allow_code: bool = False) -> dict[str, torch.Tensor]:
        """Validate and run an intervention graph in this process (code hooks need ``allow_code``)."""
        from telelens.core.graph.local import LocalBackend

        return LocalBackend(self).execute(graph, allow_code=allow_code)

    def _generation_step(self, use_past_kv_cache: bool) -> tuple[StepFn, torch.device]:
        from telelens.core.generation import forward_step

        return forward_step(self, use_past_kv_cache), self._module_device(self.embed)

    # ------------------------------------------------------------------ forward
    def _attention_context(
        self,
        batch: int,
        q_len: int,
        attention_mask: torch.Tensor | None,
        past_kv_cache: HookedTransformerKeyValueCache | None,
        device: torch.device,
    ) -> tuple[AttentionContext, torch.Tensor]:
        """Mask and positions for this pass, accounting for left padding and the KV cache."""
        rotary = getattr(self, "rotary", None)
        return attention_context(self.cfg, rotary, batch, q_len, attention_mask, past_kv_cache, device)

    def input_to_embed(
        self,
        input: ModelInput,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        attention_mask: torch.Tensor | None = None,
        past_kv_cache: HookedTransformerKeyValueCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionContext, torch.Tensor | None]:
        """Tokens -> (residual, tokens, attention context, attention mask)."""
        device = self._module_device(self.embed)
        if isinstance(input, torch.Tensor):
            tokens = input
            if tokens.dim() == 1:
                tokens = tokens[None]
        else:
            tokens, text_mask = self._encode(input, prepend_bos, padding_side)
            if attention_mask is None and not bool(text_mask.all()):
                attention_mask = text_mask
        tokens = tokens.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
            if attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
        if self.cfg.use_hook_tokens:
            tokens = self.hook_tokens(tokens)
        ctx, positions = self._attention_context(
            tokens.shape[0], tokens.shape[1], attention_mask, past_kv_cache, device
        )
        embed = self.hook_embed(self.embed(tokens))  # [batch, pos, d_model]
        if hasattr(self, "pos_embed"):
            positions = positions.expand(tokens.shape[0], -1)  # TransformerLens shape: [batch, pos]
            resid = embed + self.hook_pos_embed(self.pos_embed.embed_positions(positions))
        else:
            resid = embed
        return resid, tokens, ctx, attention_mask

    def forward(
        self,
        input: ModelInput,
        return_type: Literal["logits", "loss", "both"] | None = "logits",
        loss_per_token: bool = False,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        start_at_layer: int | None = None,
        tokens: torch.Tensor | None = None,
        shortformer_pos_embed: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        stop_at_layer: int | None = None,
        past_kv_cache: HookedTransformerKeyValueCache | None = None,
    ) -> Any:
        """Run the model.

        ``input`` is text, a list of texts, token ids [batch, pos], or (with
        ``start_at_layer``) the residual stream [batch, pos, d_model] entering that block.
        ``stop_at_layer`` returns the residual stream entering that block instead of logits
        (``n_layers``: after the last block, before ``ln_final``). Both count from the end when
        negative; other values raise ValueError.
        """
        n_layers = self.cfg.n_layers
        start_at_layer = resolve_layer(start_at_layer, n_layers, "start_at_layer")
        stop_at_layer = resolve_layer(stop_at_layer, n_layers, "stop_at_layer")
        if start_at_layer is None:
            resid, tokens, ctx, attention_mask = self.input_to_embed(
                input, prepend_bos, padding_side, attention_mask, past_kv_cache
            )
            start = 0
        else:
            if not isinstance(input, torch.Tensor) or input.dim() != 3:
                raise ValueError(
                    "with start_at_layer, input must be the residual stream [batch, pos, d_model]"
                )
            resid = input
            start = start_at_layer
            if attention_mask is not None and attention_mask.dim() == 1:
                attention_mask = attention_mask[None]
            ctx, _ = self._attention_context(
                resid.shape[0], resid.shape[1], attention_mask, past_kv_cache, resid.device
            )
        stop = n_layers if stop_at_layer is None else stop_at_layer

        ctx_by_device: dict[torch.device, AttentionContext] = {resid.device: ctx}
        for layer in range(start, stop):
            block = self.blocks[layer]
            dev = self._module_device(block)
            if resid.device != dev:
                resid = resid.to(dev)
            if dev not in ctx_by_device:
                ctx_by_device[dev] = ctx.to(dev)
            cache_entry = past_kv_cache.entries[layer] if past_kv_cache is not None else None
            resid = block(resid, past_kv_cache_entry=cache_entry, ctx=ctx_by_device[dev])
        if stop_at_layer is not None:
            return resid

        if self.ln_final is not None:
            resid = self.ln_final(resid.to(self._module_device(self.ln_final)))
        if return_type is None:
            return None
        logits = self.unembed(resid.to(self.unembed.weight.device))  # [batch, pos, d_vocab_out]
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ValueError("return_type='loss' needs tokens (pass tokens= when using start_at_layer)")
        loss = self.loss_fn(logits, tokens, attention_mask, per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return logits, loss
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")

    # ------------------------------------------------------------------ caching
    def _make_cache(self, cache_dict: dict[str, torch.Tensor], has_batch_dim: bool) -> ActivationCache:
        from telelens.lens.activation_cache import ActivationCache

        return ActivationCache(cache_dict, self, has_batch_dim=has_batch_dim)

    @overload
    def run_with_cache(
        self, *args: Any, return_cache_object: Literal[True] = True, **kw: Any
    ) -> tuple[Any, ActivationCache]: ...
    @overload
    def run_with_cache(
        self, *args: Any, return_cache_object: Literal[False], **kw: Any
    ) -> tuple[Any, dict[str, torch.Tensor]]: ...
    @overload
    def run_with_cache(
        self, *args: Any, return_cache_object: bool = True, **kw: Any
    ) -> tuple[Any, ActivationCache | dict[str, torch.Tensor]]: ...
    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Run and cache activations: ``logits, cache = model.run_with_cache(tokens, names_filter=...)``.

        Only the hook points the filter accepts are recorded; everything else runs the
        fast path (fused attention where no pattern or score is cached).
        """
        return super().run_with_cache(*args, **kwargs)

    # ------------------------------------------------------------------ intervention graphs
    def trace(self, allow_code: bool = False) -> Any:
        """A tracing context that builds an intervention graph and runs it here on exit.

        The same code runs against a remote model (``telelens.connect``) with the same
        numbers: both execute the graph with ``telelens.core.graph``::

            with model.trace() as t:
                clean, corrupt = t.run(clean_tokens), t.run(corrupt_tokens)
                corrupt["blocks.6.hook_resid_post"][:, -1] = clean["blocks.6.hook_resid_post"][:, -1]
                diff = t.save(corrupt.logits[0, -1, paris] - corrupt.logits[0, -1, rome])
            diff.value
        """
        from telelens.core.graph.local import LocalBackend
        from telelens.trace.tracing import Tracer

        return Tracer(LocalBackend(self), allow_code=allow_code)

    # ------------------------------------------------------------------ switches
    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Compute ``attn.hook_result`` (per-head outputs) on every pass."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give Q, K, V separate per-head inputs (``hook_q_input``, ...)."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """Enable ``hook_mlp_in``."""
        if self.cfg.attn_only:
            raise ValueError("an attention-only model has no MLP input")
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """Enable ``hook_attn_in`` (per-head attention input)."""
        self.cfg.use_attn_in = use_attn_in

    _FLAG_HOOKS: tuple[tuple[str, str, str], ...] = (
        ("attn.hook_result", "use_attn_result", "set_use_attn_result(True)"),
        ("hook_attn_in", "use_attn_in", "set_use_attn_in(True)"),
        ("hook_q_input", "use_split_qkv_input", "set_use_split_qkv_input(True)"),
        ("hook_k_input", "use_split_qkv_input", "set_use_split_qkv_input(True)"),
        ("hook_v_input", "use_split_qkv_input", "set_use_split_qkv_input(True)"),
        ("hook_mlp_in", "use_hook_mlp_in", "set_use_hook_mlp_in(True)"),
    )

    def disabled_hook_reason(self, name: str) -> str | None:
        """Hook points behind a switch (as in TransformerLens) fire only once it is on."""
        for suffix, flag, call in self._FLAG_HOOKS:
            if name.endswith(suffix) and not getattr(self.cfg, flag):
                return f"call model.{call} first"
        return None
