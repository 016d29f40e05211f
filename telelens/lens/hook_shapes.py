"""The TransformerLens shape of every hook point, as a tuple of dimension names."""

from __future__ import annotations

_BY_SUFFIX: dict[str, tuple[str, ...]] = {
    "hook_tokens": ("batch", "pos"),
    "hook_scale": ("batch", "pos", "1"),
    "hook_q": ("batch", "pos", "head_index", "d_head"),
    "hook_k": ("batch", "pos", "kv_head_index", "d_head"),
    "hook_v": ("batch", "pos", "kv_head_index", "d_head"),
    "hook_rot_q": ("batch", "pos", "head_index", "d_head"),
    "hook_rot_k": ("batch", "pos", "kv_head_index", "d_head"),
    "hook_z": ("batch", "pos", "head_index", "d_head"),
    "hook_attn_scores": ("batch", "head_index", "query_pos", "key_pos"),
    "hook_pattern": ("batch", "head_index", "query_pos", "key_pos"),
    "hook_result": ("batch", "pos", "head_index", "d_model"),
    "hook_attn_in": ("batch", "pos", "head_index", "d_model"),
    "hook_q_input": ("batch", "pos", "head_index", "d_model"),
    "hook_k_input": ("batch", "pos", "kv_head_index", "d_model"),
    "hook_v_input": ("batch", "pos", "kv_head_index", "d_model"),
    "hook_pre": ("batch", "pos", "d_mlp"),
    "hook_pre_linear": ("batch", "pos", "d_mlp"),
    "hook_post": ("batch", "pos", "d_mlp"),
}


def hook_shape_pattern(name: str) -> tuple[str, ...]:
    """``blocks.3.attn.hook_pattern`` -> ("batch", "head_index", "query_pos", "key_pos")."""
    suffix = name.rsplit(".", 1)[-1]
    return _BY_SUFFIX.get(suffix, ("batch", "pos", "d_model"))
