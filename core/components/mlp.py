"""The MLP: plain (GPT-2, NeoX) or gated (LLaMA's SwiGLU), one module for both.

TransformerLens's two classes are :class:`MLP` (plain) and :class:`GatedMLP`; :func:`mlp_class`
picks the one a config asks for, as TransformerLens's MLP factory does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.components.config_arg import ConfigLike, as_config
from telelens.core.components.state_dict_names import load_tl_mlp_names
from telelens.core.hook_points import HookPoint


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "quick_gelu": _quick_gelu,
}


class MLP(nn.Module):
    """``W_in`` (and ``W_gate``) -> activation -> ``W_out``.

    Stored as ``in_weight`` [(2 if gated) * d_mlp, d_model] (gate rows first) and
    ``out_weight`` [d_model, d_mlp] so one ``F.linear`` does each projection;
    ``W_in``/``W_gate``/``W_out`` are TransformerLens-shaped views, and ``load_state_dict`` also
    takes TransformerLens's names. ``MLP(cfg)`` is plain, :class:`GatedMLP` gated.
    """

    gated_kind: bool = False

    def __init__(self, cfg: ConfigLike) -> None:
        super().__init__()
        cfg = as_config(cfg)
        if cfg.d_mlp is None:
            raise ValueError("d_mlp must be set to use an MLP")
        self.cfg = cfg
        d_mlp = int(cfg.d_mlp)
        self.d_mlp = d_mlp
        self.gated = self.gated_kind
        n_in = 2 * d_mlp if self.gated else d_mlp
        self.in_weight = nn.Parameter(torch.empty(n_in, cfg.d_model, dtype=cfg.dtype))
        self.in_bias = nn.Parameter(torch.zeros(n_in, dtype=cfg.dtype)) if cfg.mlp_bias else None
        self.out_weight = nn.Parameter(torch.empty(cfg.d_model, d_mlp, dtype=cfg.dtype))
        self.out_bias = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype)) if cfg.mlp_bias else None
        self.act = ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        if self.gated:
            self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    # TransformerLens-shaped views (no copies).
    @property
    def W_in(self) -> torch.Tensor:
        return self.in_weight[self.d_mlp :].T if self.gated else self.in_weight.T  # [d_model, d_mlp]

    @property
    def W_gate(self) -> torch.Tensor | None:
        return self.in_weight[: self.d_mlp].T if self.gated else None  # [d_model, d_mlp]

    @property
    def b_in(self) -> torch.Tensor:
        if self.in_bias is None:
            return torch.zeros(self.d_mlp, dtype=self.in_weight.dtype, device=self.in_weight.device)
        return self.in_bias[self.d_mlp :] if self.gated else self.in_bias

    @property
    def W_out(self) -> torch.Tensor:
        return self.out_weight.T  # [d_mlp, d_model]

    @property
    def b_out(self) -> torch.Tensor:
        if self.out_bias is None:
            return torch.zeros(
                self.out_weight.shape[0], dtype=self.out_weight.dtype, device=self.out_weight.device
            )
        return self.out_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.in_weight, self.in_bias)  # [batch, pos, n_in]
        if self.gated:
            gate, lin = h.split(self.d_mlp, dim=-1)
            # Split outputs are views; a hook editing one in place under autograd needs its own copy.
            gate = gate.clone() if self.hook_pre.active else gate
            lin = lin.clone() if self.hook_pre_linear.active else lin
            post = self.hook_post(self.act(self.hook_pre(gate)) * self.hook_pre_linear(lin))
        else:
            post = self.hook_post(self.act(self.hook_pre(h)))  # [batch, pos, d_mlp]
        return self.output(post)  # [batch, pos, d_model]

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # TransformerLens's names (W_in, W_gate, b_in, W_out, b_out) load into the fused weights.
        super()._load_from_state_dict(load_tl_mlp_names(self, state_dict, prefix, *args), prefix, *args)

    def output(self, post: torch.Tensor) -> torch.Tensor:
        """The MLP output [..., d_model] of the neurons' activations ``post`` [..., d_mlp]
        (shared by the forward pass and the sweep engine's neuron patches)."""
        return F.linear(post, self.out_weight, self.out_bias)


class GatedMLP(MLP):
    """TransformerLens's ``GatedMLP`` (LLaMA's SwiGLU): ``act(x W_gate) * (x W_in)``, then ``W_out``."""

    gated_kind = True


def mlp_class(cfg: ConfigLike) -> type[MLP]:
    """The MLP class ``cfg`` asks for: :class:`GatedMLP` when ``cfg.gated_mlp``, else :class:`MLP`."""
    return GatedMLP if as_config(cfg).gated_mlp else MLP
