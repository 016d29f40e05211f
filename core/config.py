"""The model configuration: one dataclass passed down whole to every component.

Field names follow TransformerLens's ``HookedTransformerConfig`` so that code reading
``model.cfg.n_layers`` or ``model.cfg.d_head`` works unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

NORMALIZATION_TYPES = ("LN", "LNPre", "RMS", "RMSPre", None)
POSITIONAL_EMBEDDING_TYPES = ("standard", "rotary")
ACT_FNS = ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "relu", "silu", "swish", "quick_gelu")


@dataclass
class HookedTransformerConfig:
    """Architecture and run-time settings of a :class:`HookedTransformer`.

    Only the architecture fields are required; everything else has the default a
    TransformerLens user would expect.
    """

    n_layers: int
    """Number of transformer blocks."""
    d_model: int
    """Width of the residual stream."""
    n_ctx: int
    """Maximum context length (positional embedding rows; rotary tables are built lazily)."""
    d_head: int
    """Width of one attention head."""
    n_heads: int
    """Number of query heads."""
    d_vocab: int
    """Vocabulary size of the embedding."""
    d_mlp: int | None = None
    """Hidden width of the MLP (None for attention-only models)."""
    act_fn: str = "gelu_new"
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
    rotary_base: float = 10000.0
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
    tokenizer_prepends_bos: bool = False
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
    """Kept for TransformerLens compatibility."""
    default_padding_side: str = "right"
    """Padding side for batched string inputs."""
    final_rms: bool = False
    """The final norm is RMS (kept for TransformerLens compatibility; follows normalization_type)."""
    seed: int | None = None
    """Seed for random initialisation."""
    initializer_range: float = 0.02
    """Std of the random initialisation."""
    rope_scaling: dict[str, Any] | None = None
    """Hugging Face rope_scaling/rope_parameters dict (e.g. LLaMA 3's), applied to inv_freq."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Per-architecture odds and ends that do not deserve a field."""

    def __post_init__(self) -> None:
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not a multiple of n_key_value_heads={self.n_key_value_heads}"
            )
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.attn_scale == -1.0:
            self.attn_scale = float(self.d_head) ** 0.5
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"normalization_type {self.normalization_type!r} not in {NORMALIZATION_TYPES}")
        if self.positional_embedding_type not in POSITIONAL_EMBEDDING_TYPES:
            raise ValueError(
                f"positional_embedding_type {self.positional_embedding_type!r} not in {POSITIONAL_EMBEDDING_TYPES}"
            )
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn {self.act_fn!r} not in {ACT_FNS}")
        if not self.attn_only and self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if isinstance(self.dtype, str):
            self.dtype = getattr(torch, self.dtype)
        self.final_rms = self.normalization_type in ("RMS", "RMSPre")

    @property
    def n_params(self) -> int:
        """Parameters in the blocks (embeddings excluded), as TransformerLens counts them."""
        from telelens.lens.surface import block_param_count

        return block_param_count(self)

    @property
    def repeat_kv_heads(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // int(self.n_key_value_heads or self.n_heads)

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
