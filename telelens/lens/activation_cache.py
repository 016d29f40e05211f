"""ActivationCache: the activations of one forward pass, with TransformerLens's helpers.

``logits, cache = model.run_with_cache(tokens)`` returns one. Index it by full hook name
(``cache["blocks.0.hook_resid_pre"]``) or by shorthand (``cache["pattern", 3]``,
``cache["scale", 2, "ln1"]``, negative layers allowed), and decompose the residual stream
for direct logit attribution or the logit lens (``decompose_resid``, ``accumulated_resid``,
``stack_head_results``, ``stack_neuron_results``, ``apply_ln_to_stack``, ``logit_attrs``).

Semantics follow TransformerLens 3.9's ``ActivationCache``. Stacks have shape
``[component, *batch_and_pos_dims, d_model]`` where the batch/pos dims are ``[batch, pos]``,
``[pos]`` after ``remove_batch_dim()``, or fewer when an int ``pos_slice`` drops the position.

This module holds the dict-like cache; the decomposition helpers are mixins from
:mod:`telelens.lens.decomposition` and :mod:`telelens.lens.component_stacks`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import ItemsView, Iterator, KeysView, ValuesView
from typing import TYPE_CHECKING, Any

import torch

from telelens.lens.component_stacks import SliceLike, StackOrLabelled, TokensLike
from telelens.lens.decomposition import ResidDecomposition
from telelens.lens.utils import as_slice, get_act_name, warn_if_mps

if TYPE_CHECKING:
    from telelens.lens.surface import CacheModel

logger = logging.getLogger(__name__)

__all__ = ["ActivationCache", "SliceLike", "StackOrLabelled", "TokensLike"]


class ActivationCache(ResidDecomposition):
    """Cached activations of a model run, with decomposition helpers.

    Args:
        cache_dict: hook name -> activation.
        model: the model that produced them, local or remote: the helpers read its config and
            weights through :class:`~telelens.lens.surface.CacheModel` (``get_weight``, ...).
        has_batch_dim: whether activations start with a batch dimension.
    """

    def __init__(
        self, cache_dict: dict[str, torch.Tensor], model: CacheModel, has_batch_dim: bool = True
    ) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.has_embed = "hook_embed" in cache_dict
        self.has_pos_embed = "hook_pos_embed" in cache_dict

    # ------------------------------------------------------------------ dict-like access
    def _resolve(self, key: str | tuple[Any, ...]) -> str:
        """Full hook name of a key: a name, a shorthand, or ``(name, layer[, layer_type])``."""
        if isinstance(key, str):
            return key if key in self.cache_dict else get_act_name(key)
        name, *rest = key
        if rest and isinstance(rest[0], int) and rest[0] < 0:
            rest[0] += self.model.cfg.n_layers  # negative layers count from the end
        return get_act_name(name, *rest)

    def __getitem__(self, key: str | tuple[Any, ...]) -> torch.Tensor:
        """``cache["blocks.0.attn.hook_pattern"]``, ``cache["pattern", 0]``, ``cache["scale", 2, "ln1"]``."""
        name = self._resolve(key)
        try:
            return self.cache_dict[name]
        except KeyError:
            hint = "" if name == key else f" (from {key!r})"
            raise KeyError(
                f"{name!r}{hint} is not in the cache; run_with_cache with a names_filter that keeps it"
            ) from None

    def __contains__(self, key: object) -> bool:
        """True for a cached full name, and for a shorthand or tuple key that resolves to one."""
        try:
            return self._resolve(key) in self.cache_dict  # type: ignore[arg-type]
        except (TypeError, ValueError, AttributeError):
            return False

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def keys(self) -> KeysView[str]:
        return self.cache_dict.keys()

    def values(self) -> ValuesView[torch.Tensor]:
        return self.cache_dict.values()

    def items(self) -> ItemsView[str, torch.Tensor]:
        return self.cache_dict.items()

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self.cache_dict.keys())}"

    def to(self, device: str | torch.device) -> ActivationCache:
        """Move every activation to ``device`` (in place; returns self)."""
        warn_if_mps(device)
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Set torch's *global* autodiff switch (``torch.set_grad_enabled(mode)``)."""
        logger.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    # ------------------------------------------------------------------ batch dimension
    def _batch_size(self) -> int:
        """The most common leading size (broadcast entries such as pos_embed lead with 1)."""
        counts = Counter(v.shape[0] for v in self.cache_dict.values() if v.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch dimension of a batch-of-one cache (in place; returns self)."""
        if not self.has_batch_dim:
            logger.warning("Tried removing batch dimension after already having removed it.")
            return self
        size = self._batch_size()
        if size != 1:
            raise ValueError(f"Cannot remove batch dimension from cache with batch size {size}")
        self.cache_dict = {
            k: v[0] if v.ndim > 0 and v.shape[0] == 1 else v for k, v in self.cache_dict.items()
        }
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: SliceLike) -> ActivationCache:
        """A new cache with ``batch_slice`` applied to every batched activation (an int drops the dim)."""
        bs = as_slice(batch_slice)
        if not self.has_batch_dim and bs.mode != "identity":
            raise ValueError("Cannot index into a cache without a batch dim")
        size = self._batch_size()
        new: dict[str, torch.Tensor] = {}
        for name, t in self.cache_dict.items():
            if t.ndim > 0 and t.shape[0] == size:
                t = bs.apply(t, dim=0)
            elif t.ndim > 0 and t.shape[0] == 1 and bs.mode == "int":
                t = t[0]  # a broadcast entry loses its batch dim along with the others
            new[name] = t
        return ActivationCache(new, self.model, has_batch_dim=self.has_batch_dim and bs.mode != "int")
