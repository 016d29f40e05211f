"""The model families telelens loads: one table row each, the family's module imported on first use.

Adding a family is one file in ``core/models`` (a subclass of
:class:`~telelens.core.models.adapter.ArchitectureAdapter`: its config mapping and its
weight-name mapping) and one row in :data:`FAMILIES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import Any

from telelens.core.models.adapter import ArchitectureAdapter

__all__ = [
    "FAMILIES",
    "ArchitectureAdapter",
    "Family",
    "architecture_name",
    "get_adapter",
    "supported_architectures",
]


@dataclass(frozen=True)
class Family:
    """One model family: the adapter class ``adapter`` in ``telelens.core.models.<module>``."""

    module: str
    adapter: str
    architectures: tuple[str, ...]
    """Hugging Face ``config.architectures`` names the family reads."""
    model_types: tuple[str, ...]
    """Hugging Face ``config.model_type`` values (used when ``architectures`` is absent, e.g. GGUF)."""


FAMILIES: tuple[Family, ...] = (
    Family("gpt2", "GPT2Adapter", ("GPT2LMHeadModel",), ("gpt2",)),
    Family("neox", "NeoXAdapter", ("GPTNeoXForCausalLM",), ("gpt_neox",)),
    Family(
        "llama",
        "LlamaAdapter",
        ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"),
        ("llama", "mistral", "qwen2"),
    ),
)


@cache
def _adapter(family: Family) -> ArchitectureAdapter:
    """The family's adapter (its module is imported here, the first time it is needed)."""
    module = importlib.import_module(f"telelens.core.models.{family.module}")
    adapter_cls: type[ArchitectureAdapter] = getattr(module, family.adapter)
    return adapter_cls(family.architectures, family.model_types)


def supported_architectures() -> list[str]:
    """Every Hugging Face architecture name telelens can load."""
    return sorted(a for family in FAMILIES for a in family.architectures)


def architecture_name(hf_config: Any) -> str | None:
    """``config.architectures[0]``, else the causal-LM class transformers uses for ``model_type``."""
    names = getattr(hf_config, "architectures", None)
    if names:
        return str(names[0])
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(str(getattr(hf_config, "model_type", "")))


def get_adapter(hf_config: Any) -> ArchitectureAdapter:
    """The adapter for a Hugging Face config (by ``architectures``, else ``model_type``)."""
    names = list(getattr(hf_config, "architectures", None) or [])
    for name in names:
        for family in FAMILIES:
            if name in family.architectures:
                return _adapter(family)
    model_type = getattr(hf_config, "model_type", None)
    if not names:
        for family in FAMILIES:
            if model_type in family.model_types:
                return _adapter(family)
    shown = ", ".join(names) if names else f"model_type {model_type!r}"
    raise ValueError(
        f"unsupported architecture {shown}: telelens can load {', '.join(supported_architectures())}"
    )
