"""``HookedTransformer.from_pretrained`` and friends: TransformerLens's loading front door.

The loading itself (hub, folder, ``.gguf``, weight conversion) is ``telelens.core.loading``;
weight processing is ``telelens.core.weight_processing``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

if TYPE_CHECKING:
    from telelens.core.hooked_transformer import HookedTransformer


class PretrainedConstructors:
    """``from_pretrained``, ``from_pretrained_no_processing`` and ``process_weights_`` (mixed into
    ``HookedTransformer``)."""

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool | None = None,
        refactor_factored_attn_matrices: bool = False,
        checkpoint_index: int | None = None,
        checkpoint_value: int | None = None,
        hf_model: Any = None,
        device: str | torch.device | None = None,
        n_devices: int = 1,
        tokenizer: Any = None,
        move_to_device: bool = True,
        fold_value_biases: bool = True,
        default_prepend_bos: bool | None = None,
        default_padding_side: Literal["left", "right"] = "right",
        dtype: str | torch.dtype = torch.float32,
        first_n_layers: int | None = None,
        device_map: Sequence[str] | None = None,
        **from_pretrained_kwargs: Any,
    ) -> HookedTransformer:
        """Load weights by hub name, TransformerLens alias, local folder or ``.gguf`` file.

        Weight processing follows TransformerLens's defaults (fold LayerNorm, center
        writing weights, center unembed, fold value biases); logits then differ from
        Hugging Face's by a constant per position (log-probs agree). ``center_unembed``
        defaults to True except for tied embeddings, where it would untie them.
        Use :meth:`from_pretrained_no_processing` for Hugging Face's exact logits.
        """
        from telelens.core.loading import load_pretrained

        if checkpoint_index is not None or checkpoint_value is not None:
            raise NotImplementedError(
                "training checkpoints (checkpoint_index/checkpoint_value) are not supported yet: "
                "pass the checkpoint's folder as model_name instead"
            )

        return load_pretrained(
            cast("type[HookedTransformer]", cls),  # a mixin of HookedTransformer only
            model_name,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            hf_model=hf_model,
            device=device,
            n_devices=n_devices,
            device_map=list(device_map) if device_map is not None else None,
            tokenizer=tokenizer,
            move_to_device=move_to_device,
            default_prepend_bos=default_prepend_bos,
            default_padding_side=default_padding_side,
            dtype=dtype,
            first_n_layers=first_n_layers,
            **from_pretrained_kwargs,
        )

    @classmethod
    def from_pretrained_no_processing(
        cls,
        model_name: str,
        fold_ln: bool = False,
        center_writing_weights: bool = False,
        center_unembed: bool = False,
        refactor_factored_attn_matrices: bool = False,
        fold_value_biases: bool = False,
        dtype: str | torch.dtype = torch.float32,
        **kwargs: Any,
    ) -> HookedTransformer:
        """Load with no weight processing: logits equal Hugging Face's."""
        return cls.from_pretrained(
            model_name,
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
            fold_value_biases=fold_value_biases,
            dtype=dtype,
            **kwargs,
        )

    def process_weights_(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
        refactor_factored_attn_matrices: bool = False,
    ) -> None:
        """Apply TransformerLens's weight processing in place (see ``telelens.core.weight_processing``)."""
        from telelens.core.weight_processing import process_weights

        process_weights(
            cast("HookedTransformer", self),  # a mixin of HookedTransformer only
            fold_ln=fold_ln,
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
            refactor_factored_attn_matrices=refactor_factored_attn_matrices,
        )
