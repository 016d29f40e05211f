"""Putting checkpoint tensors into a model built on the meta device.

The model is built with no storage (``torch.device("meta")``), its modules are given
uninitialised storage on their target devices (``to_empty``, pages untouched until
written), and checkpoint tensors are then copied in one at a time. Everything the
checkpoint does not provide (the rotary frequencies, a non-persistent buffer) is
recomputed here; every parameter row must be written exactly once, and every
checkpoint tensor must be used or deliberately skipped, or loading fails naming them.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import torch
from torch import nn

from telelens.core import devices
from telelens.core.components import Rotary
from telelens.core.config import HookedTransformerConfig
from telelens.core.loading.checkpoint import Checkpoint
from telelens.core.models.registry import ArchitectureAdapter

logger = logging.getLogger(__name__)

_SHOW = 20  # names listed per problem kind in an error


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fill the model exactly (missing, unused or misshaped tensors)."""


def retie(model: nn.Module) -> None:
    """Make ``unembed.weight`` the very same Parameter as ``embed.W_E`` again (tied embeddings)."""
    if model.cfg.tie_word_embeddings:  # type: ignore[union-attr]
        model.unembed.weight = model.embed.W_E  # type: ignore[union-attr]


def materialize(model: nn.Module, move_to_device: bool) -> None:
    """Give every parameter uninitialised storage where it will live (no copy, no page touched).

    Placement follows ``HookedTransformer.move_model_modules_to_device``: embeddings on the
    first block's device, each block per ``devices.block_devices``, the final norm with the
    last block, the unembedding with the last block (with the embedding when tied).
    """
    cfg: HookedTransformerConfig = model.cfg  # type: ignore[assignment]
    if not move_to_device:
        model.to_empty(device="cpu")
        retie(model)
        return
    placement = devices.block_devices(cfg)
    first = placement[0] if placement else devices.base_device(cfg)
    last = placement[-1] if placement else first
    for name, module in model.named_children():
        if name == "blocks":
            for block, dev in zip(cast(nn.ModuleList, module), placement):
                block.to_empty(device=dev)
        elif name == "ln_final":
            module.to_empty(device=last)
        elif name == "unembed":
            module.to_empty(device=first if cfg.tie_word_embeddings else last)
        else:
            module.to_empty(device=first)
    retie(model)


def init_buffers(model: nn.Module, adapter: ArchitectureAdapter, hf_config: Any) -> None:
    """Recompute the buffers no checkpoint holds: the rotary ``inv_freq`` (plain or scaled)."""
    cfg: HookedTransformerConfig = model.cfg  # type: ignore[assignment]
    for name, _buf in model.named_buffers():
        if name != "rotary.inv_freq":
            raise NotImplementedError(f"the loader does not know how to initialise buffer {name!r}")
    rotary = getattr(model, "rotary", None)
    if rotary is None:
        return
    override = adapter.rotary_override(hf_config)
    if override is None:
        inv_freq, scaling = Rotary(cfg).inv_freq, 1.0  # built on CPU: the plain formula
    else:
        inv_freq, scaling = override
    expected = (int(cfg.rotary_dim or cfg.d_head) // 2,)
    if tuple(inv_freq.shape) != expected:
        raise ValueError(f"rotary inv_freq has shape {tuple(inv_freq.shape)}, expected {expected}")
    rotary.inv_freq = inv_freq.to(device=rotary.inv_freq.device, dtype=torch.float32)
    rotary.attention_scaling = float(scaling)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown + (f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else "")


def fill(
    model: nn.Module, checkpoint: Checkpoint, adapter: ArchitectureAdapter, progress: bool = False
) -> None:
    """Copy every checkpoint tensor into its parameter rows; fail naming whatever does not fit."""
    cfg: HookedTransformerConfig = model.cfg  # type: ignore[assignment]
    by_name = dict(model.named_parameters(remove_duplicate=False))
    written: dict[str, list[tuple[int, int, str]]] = {}
    unused: list[str] = []
    problems: list[str] = []

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=checkpoint.total_bytes, unit="B", unit_scale=True, desc=checkpoint.description)
    with torch.no_grad():
        for ref in checkpoint:
            targets = adapter.targets(ref.name, cfg)
            if targets is None:
                unused.append(ref.name)
                if bar is not None:
                    bar.update(ref.size_bytes())
                continue
            loaded: torch.Tensor | None = None
            for target in targets:
                param = by_name.get(target.param)
                if param is None:
                    problems.append(f"{ref.name} -> {target.param}: the model has no such parameter")
                    continue
                start, stop = target.rows if target.rows is not None else (0, param.shape[0])
                dest = param.data[start:stop] if target.rows is not None else param.data
                direct = loaded is None and target.transform is None and len(targets) == 1
                if not (direct and ref.load_into(dest)):
                    if loaded is None:
                        loaded = ref.load()
                    value = target.transform(loaded) if target.transform is not None else loaded
                    if tuple(value.shape) != tuple(dest.shape):
                        rows = f" rows {start}:{stop}" if target.rows is not None else ""
                        problems.append(
                            f"{ref.name} {tuple(value.shape)} -> {target.param}{rows} {tuple(dest.shape)}: shape mismatch"
                        )
                        continue
                    dest.copy_(value)
                written.setdefault(target.param, []).append((start, stop, ref.name))
            if bar is not None:
                bar.update(ref.size_bytes())
            del loaded
    if bar is not None:
        bar.close()

    missing: list[str] = []
    for name, param in model.named_parameters():  # tied weights appear once
        spans = sorted(written.get(name, []))
        covered = 0
        for start, stop, source in spans:
            if start < covered:
                problems.append(f"{name} rows {start}:{stop} written twice (again by {source})")
            covered = max(covered, stop)
        gaps = _gaps(spans, param.shape[0])
        if gaps:
            missing.append(name if not spans else f"{name} (rows {', '.join(f'{a}:{b}' for a, b in gaps)})")

    if missing or unused or problems:
        parts = []
        if missing:
            parts.append(f"parameters not filled by the checkpoint: {_listing(missing)}")
        if unused:
            parts.append(f"checkpoint tensors not used: {_listing(unused)}")
        if problems:
            parts.append("; ".join(problems[:_SHOW]))
        raise CheckpointMismatchError(
            f"{cfg.original_architecture or 'model'} checkpoint does not match the model: " + ". ".join(parts)
        )


def _gaps(spans: list[tuple[int, int, str]], n_rows: int) -> list[tuple[int, int]]:
    out, covered = [], 0
    for start, stop, _ in spans:
        if start > covered:
            out.append((covered, start))
        covered = max(covered, stop)
    if covered < n_rows:
        out.append((covered, n_rows))
    return out
