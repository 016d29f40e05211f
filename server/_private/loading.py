"""The model a replica serves: what ``HookedTransformer.from_pretrained`` gives, unless told otherwise.

``process_weights: true`` (the default) loads with ``from_pretrained``, TransformerLens's weight
processing included, so that a served model gives the same numbers as a local
``from_pretrained(source)``; ``process_weights: false`` loads with
``from_pretrained_no_processing`` (Hugging Face's exact logits). Which processing was applied
travels to clients in the model's config JSON (:func:`weight_processing_fields`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from telelens.server.config import ModelConfig

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer

PROCESSING_FLAGS = (
    "fold_ln",
    "center_writing_weights",
    "center_unembed",
    "fold_value_biases",
    "refactor_factored_attn_matrices",
)
"""The weight-processing switches of ``from_pretrained``, in the order TransformerLens lists them."""


def load_model(config: ModelConfig) -> tuple[HookedTransformer, dict[str, bool]]:
    """The model as ``config`` describes it (weights straight to their device), and the weight
    processing applied to it (each of :data:`PROCESSING_FLAGS`: True or False)."""
    from telelens.core.hooked_transformer import HookedTransformer

    load = (
        HookedTransformer.from_pretrained
        if config.process_weights
        else HookedTransformer.from_pretrained_no_processing
    )
    kwargs: dict[str, Any] = {"device": config.device, "dtype": config.dtype, **config.from_pretrained_kwargs}
    if config.n_devices > 1:
        kwargs.setdefault("n_devices", config.n_devices)
    model = load(config.source, **kwargs).eval()
    defaults = inspect.signature(load).parameters
    flags = {name: kwargs.get(name, defaults[name].default) for name in PROCESSING_FLAGS}
    if flags["center_unembed"] is None:  # the loader's rule: centering would untie tied embeddings
        flags["center_unembed"] = not model.cfg.tie_word_embeddings
    return model, {name: bool(value) for name, value in flags.items()}


def weight_processing_fields(flags: dict[str, bool]) -> dict[str, Any]:
    """What joins the config JSON clients receive: ``weights_processed`` (whether any processing was
    applied) and ``weight_processing`` (each switch)."""
    return {"weights_processed": any(flags.values()), "weight_processing": dict(flags)}
