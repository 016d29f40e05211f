"""Where each block lives when a model is split over several devices."""

from __future__ import annotations

import torch

from telelens.core.config import HookedTransformerConfig


def base_device(cfg: HookedTransformerConfig) -> torch.device:
    """The configured device, or cpu."""
    return torch.device(cfg.device) if cfg.device is not None else torch.device("cpu")


def block_devices(cfg: HookedTransformerConfig) -> list[torch.device]:
    """One device per block: ``cfg.device_map`` when given, else ``n_devices`` contiguous slices.

    Blocks are split as evenly as possible (earlier devices take the remainder), and
    activations cross devices only at block boundaries.
    """
    if cfg.device_map is not None:
        if len(cfg.device_map) != cfg.n_layers:
            raise ValueError(f"device_map has {len(cfg.device_map)} entries for {cfg.n_layers} layers")
        return [torch.device(d) for d in cfg.device_map]
    base = base_device(cfg)
    if cfg.n_devices <= 1:
        return [base] * cfg.n_layers
    if base.type == "cpu":
        raise ValueError("n_devices > 1 needs an accelerator device (e.g. device='cuda')")
    available = torch.cuda.device_count() if base.type == "cuda" else cfg.n_devices
    if cfg.n_devices > available:
        raise ValueError(f"n_devices={cfg.n_devices} but only {available} {base.type} devices are visible")
    start = base.index or 0
    per, extra = divmod(cfg.n_layers, cfg.n_devices)
    out: list[torch.device] = []
    for i in range(cfg.n_devices):
        out += [torch.device(base.type, start + i)] * (per + (1 if i < extra else 0))
    return out
