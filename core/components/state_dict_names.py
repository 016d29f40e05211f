"""TransformerLens's parameter names, read by ``load_state_dict``.

telelens stores attention, MLP and unembedding weights fused and in ``F.linear``'s layout
(``qkv_weight``, ``in_weight``, ``weight``): the model's own state dict keeps those names. A
component's ``load_state_dict`` also accepts what ``tl_component.state_dict()`` holds (``W_Q``,
``_W_K``, ``W_in``, ``W_U``, ...): each function here returns the state dict with this module's
TransformerLens entries turned into its fused ones (an untouched dict when there are none), and
the errors to report (a nonzero bias the module has no parameter for).
"""

from __future__ import annotations

from typing import Any

import torch

# Buffers TransformerLens's attention keeps that telelens computes per pass.
_TL_ATTENTION_BUFFERS = ("mask", "IGNORE", "rotary_sin", "rotary_cos")


def _rows(w: torch.Tensor) -> torch.Tensor:
    """Per-head weights [head_index, d_model, d_head] -> projection rows [head_index * d_head, d_model]."""
    return w.transpose(1, 2).reshape(-1, w.shape[1])


def _take(d: dict[str, Any], prefix: str, *names: str) -> torch.Tensor | None:
    """Pop the first of ``names`` present under ``prefix`` (TransformerLens has two names for GQA's)."""
    found = None
    for name in names:
        value = d.pop(prefix + name, None)
        if found is None and value is not None:
            found = value
    return found


def _bias(
    d: dict[str, Any], key: str, value: torch.Tensor | None, has_param: bool, errors: list[str], why: str = ""
) -> None:
    """Store ``value`` as ``key`` if the module has that bias; a nonzero bias it lacks is an error."""
    if value is None:
        return
    if has_param:
        d[key] = value
    elif bool(value.count_nonzero()):
        errors.append(f"{key}: a nonzero TransformerLens bias, but this module has none{why}")


def _report(errors: list[str], args: tuple[Any, ...]) -> None:
    if errors:
        args[4].extend(errors)  # _load_from_state_dict's error_msgs


def load_tl_attention_names(
    module: Any, state_dict: dict[str, Any], prefix: str, *args: Any
) -> dict[str, Any]:
    """``W_Q``/``W_K``/``W_V`` [head_index, d_model, d_head] (``_W_K``/``_W_V`` under GQA), their
    biases, ``W_O`` [head_index, d_head, d_model] and ``b_O`` -> ``qkv_weight``/``qkv_bias``/
    ``o_weight``/``o_bias``."""
    if prefix + "W_Q" not in state_dict or prefix + "qkv_weight" in state_dict:
        return state_dict
    d = dict(state_dict)
    errors: list[str] = []
    for name in _TL_ATTENTION_BUFFERS:
        d.pop(prefix + name, None)
    w_q, w_k, w_v = (_take(d, prefix, n, "_" + n) for n in ("W_Q", "W_K", "W_V"))
    b_q, b_k, b_v = (_take(d, prefix, n, "_" + n) for n in ("b_Q", "b_K", "b_V"))
    w_o, b_o = _take(d, prefix, "W_O"), _take(d, prefix, "b_O")
    assert w_q is not None and w_k is not None and w_v is not None and w_o is not None
    d[prefix + "qkv_weight"] = torch.cat((_rows(w_q), _rows(w_k), _rows(w_v)))
    if b_q is not None and b_k is not None and b_v is not None:
        qkv_bias = torch.cat((b_q.flatten(), b_k.flatten(), b_v.flatten()))
        _bias(d, prefix + "qkv_bias", qkv_bias, module.qkv_bias is not None, errors, " (cfg.attn_bias=False)")
    d[prefix + "o_weight"] = w_o.permute(2, 0, 1).reshape(w_o.shape[2], -1)  # [d_model, head_index * d_head]
    _bias(d, prefix + "o_bias", b_o, module.o_bias is not None, errors, " (cfg.attn_out_bias=False)")
    _report(errors, args)
    return d


def load_tl_mlp_names(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> dict[str, Any]:
    """``W_in`` [d_model, d_mlp] (and ``W_gate``), ``b_in``, ``W_out`` [d_mlp, d_model], ``b_out`` ->
    ``in_weight`` (gate rows first) / ``in_bias`` / ``out_weight`` / ``out_bias``.

    TransformerLens's ``GatedMLP`` adds ``b_in`` after the gate (``act(x W_gate) * (x W_in) + b_in``);
    telelens's gated MLP follows Hugging Face (biases inside the projections), so only a zero
    ``b_in`` of a gated MLP loads.
    """
    if prefix + "W_in" not in state_dict or prefix + "in_weight" in state_dict:
        return state_dict
    d = dict(state_dict)
    errors: list[str] = []
    w_in, w_gate, b_in = _take(d, prefix, "W_in"), _take(d, prefix, "W_gate"), _take(d, prefix, "b_in")
    w_out, b_out = _take(d, prefix, "W_out"), _take(d, prefix, "b_out")
    assert w_in is not None and w_out is not None
    has_bias = module.in_bias is not None
    if module.gated:
        assert w_gate is not None, "a gated MLP needs W_gate"
        d[prefix + "in_weight"] = torch.cat((w_gate.T, w_in.T))
        if b_in is not None and bool(b_in.count_nonzero()):
            errors.append(
                f"{prefix}b_in: TransformerLens's GatedMLP adds b_in after the gate; telelens's gated MLP "
                "biases the projections (as Hugging Face does), so a nonzero b_in cannot load"
            )
        if has_bias:
            d[prefix + "in_bias"] = torch.zeros(2 * w_in.shape[1], dtype=w_in.dtype, device=w_in.device)
    else:
        d[prefix + "in_weight"] = w_in.T
        _bias(d, prefix + "in_bias", b_in, has_bias, errors, " (cfg.mlp_bias=False)")
    d[prefix + "out_weight"] = w_out.T
    _bias(d, prefix + "out_bias", b_out, module.out_bias is not None, errors, " (cfg.mlp_bias=False)")
    _report(errors, args)
    return d


def load_tl_unembed_names(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> dict[str, Any]:
    """``W_U`` [d_model, d_vocab_out] and ``b_U`` -> ``weight`` [d_vocab_out, d_model] and ``bias``."""
    if prefix + "W_U" not in state_dict or prefix + "weight" in state_dict:
        return state_dict
    d = dict(state_dict)
    errors: list[str] = []
    w_u, b_u = _take(d, prefix, "W_U"), _take(d, prefix, "b_U")
    assert w_u is not None
    d[prefix + "weight"] = w_u.T
    _bias(d, prefix + "bias", b_u, module.bias is not None, errors, " (cfg.unembed_bias=False)")
    _report(errors, args)
    return d
