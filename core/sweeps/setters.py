"""TransformerLens's patch setters, and the patch site each one writes.

A setter ``setter(corrupted_activation, index, clean_activation)`` writes the clean slice
named by a TransformerLens index (layer first) into the corrupted activation. The sweep
engine cannot call Python inside a batched pass, so :func:`site_of` reads what a known
setter writes as a :class:`~telelens.core.sweeps.sites.PatchSite`; any other setter is
handed to the engine as a custom one (called inside a hook, every position recomputed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from telelens.core.sweeps.sites import PatchSite

PatchSetter = Callable[[torch.Tensor, Sequence[int], torch.Tensor], torch.Tensor]
"""``setter(corrupted_activation, index, clean_activation) -> patched_activation``."""


def layer_pos_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, pos]; activation [batch, pos, ...] (anything but attention patterns/scores)."""
    assert len(index) == 2, f"expected [layer, pos], got {index}"
    _, pos = index
    corrupted_activation[:, pos, ...] = clean_activation[:, pos, ...]
    return corrupted_activation


def layer_pos_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, pos, head_index]; activation [batch, pos, head_index, ...] (q, k, v, z, result)."""
    assert len(index) == 3, f"expected [layer, pos, head_index], got {index}"
    _, pos, head = index
    corrupted_activation[:, pos, head] = clean_activation[:, pos, head]
    return corrupted_activation


def layer_head_vector_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index]; activation [batch, pos, head_index, ...]; every position."""
    assert len(index) == 2, f"expected [layer, head_index], got {index}"
    _, head = index
    corrupted_activation[:, :, head] = clean_activation[:, :, head]
    return corrupted_activation


def layer_head_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index]; activation [batch, head_index, dest_pos, src_pos] (pattern, scores)."""
    assert len(index) == 2, f"expected [layer, head_index], got {index}"
    _, head = index
    corrupted_activation[:, head] = clean_activation[:, head]
    return corrupted_activation


def layer_head_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos]; activation [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 3, f"expected [layer, head_index, dest_pos], got {index}"
    _, head, dest = index
    corrupted_activation[:, head, dest, :] = clean_activation[:, head, dest, :]
    return corrupted_activation


def layer_head_dest_src_pos_pattern_patch_setter(
    corrupted_activation: torch.Tensor, index: Sequence[int], clean_activation: torch.Tensor
) -> torch.Tensor:
    """index = [layer, head_index, dest_pos, src_pos]; activation [batch, head_index, dest_pos, src_pos]."""
    assert len(index) == 4, f"expected [layer, head_index, dest_pos, src_pos], got {index}"
    _, head, dest, src = index
    corrupted_activation[:, head, dest, src] = clean_activation[:, head, dest, src]
    return corrupted_activation


_POSITIONAL_SETTERS = (
    layer_pos_patch_setter,
    layer_pos_head_vector_patch_setter,
    layer_head_pattern_patch_setter,
    layer_head_pos_pattern_patch_setter,
    layer_head_dest_src_pos_pattern_patch_setter,
)
"""Setters writing ``act[:, index[1], index[2], ...]``: the engine reads the index as is."""


def site_of(setter: PatchSetter, index: Sequence[int]) -> PatchSite | None:
    """The site a known setter writes for a TransformerLens ``index`` (layer first); None for
    a setter the engine cannot read."""
    if not index:
        raise ValueError("every cell needs at least a layer index")
    layer = int(index[0])
    if setter is layer_head_vector_patch_setter:
        return PatchSite(layer, (None, int(index[1])))  # act[:, :, head]
    if setter in _POSITIONAL_SETTERS:
        return PatchSite(layer, tuple(int(i) for i in index[1:]))  # act[:, i1, i2, ...]
    return None
