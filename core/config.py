"""The model configuration: one dataclass passed down whole to every component.

Field names follow TransformerLens's ``HookedTransformerConfig`` so that code reading
``model.cfg.n_layers`` or ``model.cfg.d_head`` works unchanged.
"""

from __future__ import annotations

import dataclasses
import pprint
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from telelens.core.config_support import (
    ACT_FNS,
    NORMALIZATION_TYPES,
    POSITIONAL_EMBEDDING_TYPES,
    refuse_unsupported,
)

__all__ = [
    "ACT_FNS",
    "NORMALIZATION_TYPES",
    "POSITIONAL_EMBEDDING_TYPES",
    "HookedTransformerConfig",
    "TransformerConfig",
]


@dataclass(repr=False)
class HookedTransformerConfig:
    """Architecture and run-time settings of a :class:`HookedTransformer`.

    Every field of TransformerLens 3.9's ``HookedTransformerConfig`` is accepted, with
    its default, and inferred as TransformerLens infers it: ``n_heads`` from
    ``d_model // d_head``, ``d_mlp`` as ``4 * d_model``, ``d_vocab`` from the tokenizer
    (``HookedTransformer(cfg, tokenizer)`` fills it), ``d_vocab_out``, ``attn_scale``,
    ``initializer_range``, ``rotary_dim`` and ``n_params``. A field whose value the core
    cannot honour (``use_local_attn=True``, ``attention_dir="bidirectional"``, ...) is
    refused with an error naming it (see :mod:`telelens.core.config_support`).
    """

    d_model: int
    """Width of the residual stream."""
    d_head: int
    """Width of one attention head."""
    n_layers: int
    """Number of transformer blocks."""
    n_ctx: int
    """Maximum context length (positional embedding rows; rotary tables are built lazily)."""
    n_heads: int = -1
    """Number of query heads; -1 means ``d_model // d_head``."""
    d_mlp: int | None = None
    """Hidden width of the MLP; None means ``4 * d_model`` (set even for attention-only models, as TL does)."""
    d_vocab: int = -1
    """Vocabulary size of the embedding; -1 means "from the tokenizer" (filled by HookedTransformer)."""
    act_fn: str = "relu"
    """MLP activation, one of ACT_FNS."""
    n_key_value_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head)."""
    d_vocab_out: int = -1
    """Unembedding width; -1 means d_vocab."""
    normalization_type: str | None = "LN"
    """"LN", "RMS", their folded variants "LNPre"/"RMSPre", or None."""
    eps: float = 1e-5
    """Normalization epsilon."""
    positional_embedding_type: str = "standard"
    """"standard" (learned absolute) or "rotary"."""
    rotary_dim: int | None = None
    """How many dimensions of each head are rotated (partial rotary, as in GPT-NeoX); None means d_head."""
    rotary_base: float = 10000
    """Rotary base (theta)."""
    rotary_adjacent_pairs: bool = False
    """True rotates interleaved pairs (GPT-J style); False rotates halves (LLaMA/NeoX style)."""
    gated_mlp: bool = False
    """Gated MLP (LLaMA's SwiGLU): act(x W_gate) * (x W_in)."""
    parallel_attn_mlp: bool = False
    """Attention and MLP both read resid_pre (GPT-NeoX, GPT-J)."""
    attn_only: bool = False
    """No MLP layers."""
    attn_bias: bool = True
    """Whether Q/K/V have biases (GPT-2, NeoX, Qwen2 yes; LLaMA no)."""
    attn_out_bias: bool = True
    """Whether the attention output projection has a bias."""
    mlp_bias: bool = True
    """Whether the MLP projections have biases."""
    unembed_bias: bool = False
    """Whether the unembedding has a bias b_U (reads as zeros when absent)."""
    tie_word_embeddings: bool = False
    """Unembedding shares the embedding matrix (W_U is W_E.T, never untied)."""
    use_attn_scale: bool = True
    """Whether attention scores are divided by ``attn_scale`` (False divides by 1)."""
    attn_scale: float = -1.0
    """Divisor of the attention scores; -1 means sqrt(d_head)."""
    use_attn_result: bool = False
    """Compute per-head outputs ``attn.hook_result`` [batch, pos, head_index, d_model] (costly)."""
    use_split_qkv_input: bool = False
    """Give Q, K and V separate per-head inputs (``hook_q_input``/``hook_k_input``/``hook_v_input``)."""
    use_attn_in: bool = False
    """Give attention a per-head input ``hook_attn_in`` [batch, pos, head_index, d_model]."""
    use_hook_mlp_in: bool = False
    """Add ``hook_mlp_in`` (a copy of the MLP input that can be patched)."""
    use_hook_tokens: bool = False
    """Add ``hook_tokens`` on the input ids."""
    default_prepend_bos: bool = True
    """Whether ``to_tokens`` and string inputs get a BOS token by default."""
    tokenizer_prepends_bos: bool | None = False
    """Whether the tokenizer itself adds BOS (then telelens does not add another)."""
    original_architecture: str | None = None
    """Hugging Face architecture name the weights came from (e.g. "LlamaForCausalLM")."""
    model_name: str = "custom"
    """Short name of the model."""
    tokenizer_name: str | None = None
    """Where the tokenizer came from."""
    dtype: torch.dtype = torch.float32
    """Parameter dtype."""
    device: str | None = None
    """Device of the first block; None means cpu."""
    n_devices: int = 1
    """Number of devices the blocks are split over."""
    device_map: list[str] | None = None
    """Explicit device per block (overrides n_devices)."""
    from_checkpoint: bool = False
    """Whether the weights came from a training checkpoint (informational)."""
    checkpoint_index: int | None = None
    """Index of that checkpoint (informational)."""
    checkpoint_label_type: str | None = None
    """Whether checkpoints are labelled by steps or tokens (informational)."""
    checkpoint_value: int | None = None
    """The checkpoint's label value (informational)."""
    default_padding_side: str = "right"
    """Padding side for batched string inputs."""
    final_rms: bool = False
    """TL's "RMS final norm on an LN model"; refused as True with "LN"/"LNPre" (RMS models' final norm is RMS)."""
    seed: int | None = None
    """Seed: set in torch, random and numpy when the config is made (as TL does), and for the weights."""
    init_mode: str = "gpt2"
    """Weight initialisation; only "gpt2" (normal with std initializer_range) is built."""
    initializer_range: float = -1.0
    """Std of the random initialisation; -1 means 0.8 / sqrt(d_model) (1.0 for other init modes)."""
    init_weights: bool = True
    """Whether HookedTransformer initialises the weights randomly."""
    n_params: int | None = None
    """Weights in the blocks (attention and MLP matrices; no embeddings, biases or norms). Computed."""
    rope_scaling: dict[str, Any] | None = None
    """Hugging Face rope_scaling/rope_parameters dict (e.g. LLaMA 3's), applied to inv_freq by loaders."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Per-architecture odds and ends that do not deserve a field."""

    # TransformerLens fields the core keeps but does not compute with; values that would change
    # the computation are refused in __post_init__ (config_support.UNSUPPORTED).
    uses_rms_norm: bool = False
    layer_norm_folding: bool = False
    num_experts: int | None = None
    experts_per_token: int | None = None
    norm_topk_prob: bool = False
    use_qk_norm: bool = False
    clip_qkv: float | None = None
    use_logn_attn: bool = False
    train_seq_length: int | None = None
    use_dynamic_ntk_rope: bool = False
    use_local_attn: bool = False
    window_size: int | None = None
    attn_types: list[str] | None = None
    ungroup_grouped_query_attention: bool = False
    attention_dir: str = "causal"
    scale_attn_by_inverse_layer_idx: bool = False
    post_embedding_ln: bool = False
    rotary_base_local: float | None = None
    rotary_scaling_factor: float = 1.0
    trust_remote_code: bool = False
    load_in_4bit: bool = False
    quantization_method: str | None = None
    relative_attention_max_distance: int | None = None
    relative_attention_num_buckets: int | None = None
    decoder_start_token_id: int | None = None
    use_normalization_before_and_after: bool = False
    attn_scores_soft_cap: float = -1.0
    output_logits_soft_cap: float = -1.0
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    use_yarn_rope: bool = False
    yarn_factor: float = 1.0
    yarn_attention_factor: float = 1.0
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_original_max_position_embeddings: int = 4096
    yarn_truncate: bool = True
    yarn_global_attn_only: bool = False
    use_attention_sinks: bool = False

    def __post_init__(self) -> None:
        if self.n_heads == -1:
            if self.d_model % self.d_head:
                raise ValueError(f"d_model ({self.d_model}) must be divisible by d_head ({self.d_head})")
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if isinstance(self.dtype, str):
            self.dtype = getattr(torch, self.dtype.removeprefix("torch."))
        refuse_unsupported(self)
        if self.seed is not None:
            self.set_seed_everywhere(self.seed)
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}"
            )
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / float(np.sqrt(self.d_model)) if self.init_mode == "gpt2" else 1.0
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.attn_scale == -1.0:
            # use_attn_scale=False divides by one, which is what not scaling means.
            self.attn_scale = float(self.d_head) ** 0.5 if self.use_attn_scale else 1.0
        from telelens.lens.surface import block_param_count

        self.n_params = block_param_count(self)

    @property
    def repeat_kv_heads(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // int(self.n_key_value_heads or self.n_heads)

    def set_seed_everywhere(self, seed: int) -> None:
        """Seed torch, Python's ``random`` and numpy (TransformerLens does this for ``seed``)."""
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)

    def is_layer_norm_activation(self) -> bool:
        """True for activations with a norm inside the MLP (``"solu_ln"``; refused by the core)."""
        return self.act_fn is not None and self.act_fn.endswith("_ln")

    def __repr__(self) -> str:
        return "HookedTransformerConfig:\n" + pprint.pformat(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (dtype as its name)."""
        d = dataclasses.asdict(self)
        d["dtype"] = str(self.dtype).removeprefix("torch.")
        return d

    @classmethod
    def unwrap(cls, config: dict[str, Any] | Any) -> HookedTransformerConfig:
        """A config from a config or a dict, as TransformerLens's components take either.

        A dict goes through :meth:`from_dict`; an instance comes back as is; any other
        config-like object (with ``to_dict``) is converted through its dict.
        """
        if isinstance(config, dict):
            return cls.from_dict(config)
        if isinstance(config, cls):
            return config
        return cls.from_dict(config.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HookedTransformerConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**d)


TransformerConfig = HookedTransformerConfig
