"""Weight initialisation with TransformerLens's fan conventions (``transformer_lens.utils`` names).

TransformerLens stores weights as ``[d_in, d_out]`` (and attention as ``[n_heads, d_model,
d_head]``), the transpose of torch's ``nn.Linear``, so it computes fans itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "calc_fan_in_and_fan_out",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
]


def calc_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out): 1-d ``[d]`` -> (1, d); 2-d ``[d_in, d_out]``; 3-d ``[n_heads, d_model, d_head]``
    -> (d_model, n_heads * d_head)."""
    shape = tensor.shape
    if len(shape) == 0:
        raise ValueError("Fan in and fan out can not be computed for scalars.")
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"Fan in and fan out can not be computed for shape {shape} tensors.")


def init_xavier_uniform_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Uniform in ``±gain * sqrt(6 / (fan_in + fan_out))``, in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * np.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Normal with std ``gain * sqrt(2 / (fan_in + fan_out))``, in place."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    std = gain * np.sqrt(2.0 / (fan_in + fan_out))
    return nn.init.normal_(param, mean=0.0, std=std)


def _kaiming_gain(
    param: torch.Tensor, a: float, nonlinearity: Any, gain: float, mode: str
) -> tuple[float, int]:
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return gain * nn.init.calculate_gain(nonlinearity, a), fan


def init_kaiming_uniform_(
    param: torch.Tensor, a: float = 0, nonlinearity: Any = "relu", gain: float = 1.0, mode: str = "fan_in"
) -> torch.Tensor:
    """Uniform in ``±c * sqrt(3 / fan)``, ``c = gain * calculate_gain(nonlinearity, a)``, in place."""
    c, fan = _kaiming_gain(param, a, nonlinearity, gain, mode)
    bound = c * np.sqrt(3.0 / fan)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(
    param: torch.Tensor, a: float = 0, nonlinearity: Any = "relu", gain: float = 1.0, mode: str = "fan_in"
) -> torch.Tensor:
    """Normal with std ``c / sqrt(fan)``, ``c = gain * calculate_gain(nonlinearity, a)``, in place."""
    c, fan = _kaiming_gain(param, a, nonlinearity, gain, mode)
    return nn.init.normal_(param, mean=0.0, std=c * np.sqrt(1.0 / fan))
