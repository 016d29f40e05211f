"""The MLP: plain (GPT-2, NeoX) or gated (LLaMA's SwiGLU), one module for both."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from telelens.core.config import HookedTransformerConfig
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
    ``W_in``/``W_gate``/``W_out`` are TransformerLens-shaped views.
    """

    def __init__(self, cfg: HookedTransformerConfig) -> None:
        super().__init__()
        d_mlp = int(cfg.d_mlp or 0)
        self.d_mlp = d_mlp
        self.gated = cfg.gated_mlp
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

    def output(self, post: torch.Tensor) -> torch.Tensor:
        """The MLP output [..., d_model] of the neurons' activations ``post`` [..., d_mlp]
        (shared by the forward pass and the sweep engine's neuron patches)."""
        return F.linear(post, self.out_weight, self.out_bias)
