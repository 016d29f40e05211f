"""What a model is, as plain data: its config, hook points, weights and tokenizer.

:func:`describe_model` is what a server tells its clients about a model (it answers
``GetModelInfo`` from it without touching the model again); it returns strings, names and
shapes only, so that the caller needs no torch and no knowledge of the core's modules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from telelens.protos import ir

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


@dataclass(frozen=True)
class ModelDescription:
    """A model described as plain data (see :func:`describe_model`)."""

    architecture: str
    """The Hugging Face architecture it was loaded from (``LlamaForCausalLM``), or ""."""
    n_layers: int
    n_params: int
    """Every parameter, a tied weight counted once."""
    dtype: str
    """Its weights' dtype name (``float32``)."""
    device: str
    config_json: str
    """``cfg.to_dict()`` as JSON, plus the loader's extra fields (e.g. the weight processing)."""
    hooks: tuple[tuple[str, tuple[str, ...]], ...]
    """(hook name, dimension names), in firing order; ``logits`` excluded."""
    tokenizer_json: str
    """``tokenizer.json`` text of a fast Hugging Face tokenizer; "" when there is none."""
    tokenizer_config_json: str
    """Special tokens and the BOS/padding defaults as JSON (see :func:`tokenizer_config`)."""
    weights: tuple[tuple[str, tuple[int, ...], str], ...]
    """(weight name, shape, dtype name) of every weight a ``Weight`` node may read."""


def describe_model(
    model: HookedTransformer, config_extra: Mapping[str, Any] | None = None
) -> ModelDescription:
    """``model`` as a :class:`ModelDescription`; ``config_extra`` joins the config JSON (facts the
    loader knows and the config does not, such as which weight processing was applied)."""
    from telelens.core.graph.hooks import hook_dims, hook_table
    from telelens.core.graph.tensors import TORCH_DTYPES

    cfg = model.cfg
    dtype_names = {v: k for k, v in TORCH_DTYPES.items()}
    config_extra = {"n_params_total": model.n_params_total, **(config_extra or {})}
    hooks = tuple((name, tuple(hook_dims(name))) for name in hook_table(model).order if name != ir.LOGITS)
    return ModelDescription(
        architecture=str(cfg.original_architecture or ""),
        n_layers=cfg.n_layers,
        n_params=model.n_params_total,  # a tied weight counts once
        dtype=dtype_names.get(cfg.dtype, str(cfg.dtype).removeprefix("torch.")),
        device=str(cfg.device),
        config_json=json.dumps({**cfg.to_dict(), **config_extra}, default=str),
        hooks=hooks,
        tokenizer_json=tokenizer_json(model.tokenizer),
        tokenizer_config_json=json.dumps(tokenizer_config(model)),
        weights=tuple(_weights(model, dtype_names)),
    )


def tokenizer_json(tokenizer: Any) -> str:
    """``tokenizer.json`` text of a fast Hugging Face tokenizer; empty when there is none."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if tokenizer is not None else None
    return backend.to_str() if backend is not None else ""


def tokenizer_config(model: HookedTransformer) -> dict[str, Any]:
    """BOS/EOS/PAD/UNK tokens and ids and the BOS and padding defaults, for client-side tokenizing."""
    tok = model.tokenizer
    out: dict[str, Any] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        out[f"{kind}_token"] = getattr(tok, f"{kind}_token", None) if tok is not None else None
        out[f"{kind}_token_id"] = getattr(tok, f"{kind}_token_id", None) if tok is not None else None
    out["tokenizer_prepends_bos"] = bool(model.cfg.tokenizer_prepends_bos)
    out["default_prepend_bos"] = bool(model.cfg.default_prepend_bos)
    out["default_padding_side"] = model.cfg.default_padding_side
    out["model_max_length"] = model.cfg.n_ctx
    return out


def _weights(model: HookedTransformer, dtype_names: dict) -> Iterator[tuple[str, tuple[int, ...], str]]:
    from telelens.core.graph.weights import _all_names, weight_error, weight_shape

    for name in _all_names(model.cfg.n_layers):
        if weight_error(model, name) is None:
            try:
                shape, dtype = weight_shape(model, name)
            except AttributeError:  # a weight this model's components do not have (e.g. no bias)
                continue
            yield name, tuple(int(d) for d in shape), dtype_names.get(dtype, "float32")
