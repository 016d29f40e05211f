"""The architecture adapter: how a Hugging Face checkpoint maps onto a :class:`HookedTransformer`.

An adapter does two small jobs and nothing else:

* :meth:`ArchitectureAdapter.make_config` turns a Hugging Face config into a
  :class:`HookedTransformerConfig` (architecture fields only; run-time fields such as
  dtype and device are set by the loader);
* :meth:`ArchitectureAdapter.targets` says where one checkpoint tensor goes: which of
  our parameters, which rows of it, after which transform (a transpose, a row
  reordering). An empty list means "known, deliberately not loaded" (a causal-mask
  buffer, a tied ``lm_head``, a layer past ``first_n_layers``); ``None`` means "unknown",
  which the loader reports as an unused tensor.

Adapters never touch tensors themselves; the loader streams tensors one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from telelens.core.config import ACT_FNS, HookedTransformerConfig

Transform = Callable[[torch.Tensor], torch.Tensor]

_LAYER = re.compile(r"^(?:layers|h)\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Target:
    """Where a checkpoint tensor lands: ``param`` (a ``named_parameters`` name), rows ``[start, stop)``
    of it (None: all of it), after ``transform`` (None: as is)."""

    param: str
    rows: tuple[int, int] | None = None
    transform: Transform | None = None


class ArchitectureAdapter:
    """Base class; a family subclasses it and implements the two mappings.

    The names it reads (``architectures``, ``model_types``) come from its row in
    :data:`telelens.core.models.registry.FAMILIES`, the one place that lists them.
    """

    prefixes: ClassVar[tuple[str, ...]] = ()
    """Leading module names stripped from checkpoint names (``model.``, ``transformer.``)."""
    ignored: ClassVar[tuple[str, ...]] = ()
    """Regexes (searched in the stripped name) of tensors that are known and never loaded."""

    def __init__(self, architectures: tuple[str, ...], model_types: tuple[str, ...]) -> None:
        self.architectures = architectures
        """Hugging Face ``config.architectures`` names this adapter reads."""
        self.model_types = model_types
        """Hugging Face ``config.model_type`` values (used when ``architectures`` is absent, e.g. GGUF)."""

    def make_config(self, hf_config: Any) -> HookedTransformerConfig:
        raise NotImplementedError

    def layer_targets(self, layer: int, rest: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        """Targets of ``<layer>.<rest>`` (``rest`` without the layer prefix)."""
        raise NotImplementedError

    def global_targets(self, name: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        """Targets of a tensor outside the blocks (embeddings, final norm, unembedding)."""
        raise NotImplementedError

    def hf_names(self, cfg: HookedTransformerConfig) -> list[str]:
        """Every tensor name a complete Hugging Face checkpoint of ``cfg`` holds (for GGUF renaming)."""
        raise NotImplementedError

    def rotary_override(self, hf_config: Any) -> tuple[torch.Tensor, float] | None:
        """``(inv_freq, attention_scaling)`` for scaled RoPE variants, or None for the plain formula."""
        return None

    def strip(self, name: str) -> str:
        for prefix in self.prefixes:
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def targets(self, name: str, cfg: HookedTransformerConfig) -> list[Target] | None:
        """Where checkpoint tensor ``name`` goes ([] = skip on purpose, None = unknown)."""
        short = self.strip(name)
        if any(re.search(pattern, short) for pattern in self.ignored):
            return []
        m = _LAYER.match(short)
        if m is None:
            return self.global_targets(short, cfg)
        layer = int(m.group(1))
        if layer >= cfg.n_layers:  # first_n_layers: the rest of the checkpoint is read past
            return []
        return self.layer_targets(layer, m.group(2), cfg)


def unembed_targets(cfg: HookedTransformerConfig) -> list[Target]:
    """The unembedding of a tied model is the embedding: its checkpoint copy (if any) is skipped."""
    return [] if cfg.tie_word_embeddings else [Target("unembed.weight")]


def transpose(t: torch.Tensor) -> torch.Tensor:
    """Conv1D ([in, out]) -> Linear ([out, in]) layout."""
    return t.T


def check_act(act: str, arch: str) -> str:
    """``act`` if the MLP knows that activation function, else a ValueError naming ``arch``."""
    if act not in ACT_FNS:
        raise ValueError(f"{arch}: activation {act!r} is not supported (known: {', '.join(ACT_FNS)})")
    return act
