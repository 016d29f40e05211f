"""Metrics on logits (``logit_diff``, ``logit``, ``log_prob``), locally or in a graph.

A :class:`Metric` takes a [batch, pos, vocab] tensor, ``run.logits`` in a trace, or a run, and
returns the mean over the batch, as in TransformerLens's tutorials (``per_prompt=True`` keeps
one value per sequence). Users reach these through :mod:`telelens.trace.ops`.
"""

from __future__ import annotations

from typing import Any

import torch

from telelens.trace.graph import GraphBuilder
from telelens.trace.hook_ops import _as_run, _here
from telelens.trace.proxies import RunProxy, ValueProxy


def _token(x: Any, what: str) -> int | torch.Tensor:
    if isinstance(x, str):
        raise TypeError(f"{what} must be a token id (e.g. model.to_single_token(' Paris')), not a string")
    if isinstance(x, bool):
        raise TypeError(f"{what} must be a token id, not a bool")
    if isinstance(x, int):
        return x
    t = torch.as_tensor(x)
    if t.dim() == 0:
        return int(t)
    if t.dim() != 1 or t.is_floating_point():
        raise ValueError(f"{what} must be an int or one int per sequence (1-D), got {tuple(t.shape)}")
    return t.to(torch.long)


def _pick(x: Any, token: int | torch.Tensor) -> Any:
    """``x[:, token]`` from [batch, vocab]; one token per row with a 1-D tensor."""
    if isinstance(token, int):
        return x[:, token]
    return x.gather(1, _here(token, x)[:, None])[:, 0]  # [batch]


class Metric:
    """A scalar computed from logits, locally (``metric(logits)``) or in a graph (``metric(run)``)."""

    def __init__(self, pos: int = -1, per_prompt: bool = False) -> None:
        self.pos = int(pos)
        self.per_prompt = per_prompt

    def __call__(self, logits: Any) -> Any:
        """``logits``: a [batch, pos, vocab] tensor, ``run.logits`` in a trace, or a run."""
        if isinstance(logits, RunProxy):
            logits = logits.logits
        per_prompt = self._compute(logits[:, self.pos])  # [batch]
        return per_prompt if self.per_prompt else per_prompt.mean()

    def to_nodes(self, builder: GraphBuilder, run: RunProxy) -> ValueProxy:
        """The metric of ``run``'s logits as a graph value."""
        return self(_as_run(builder, run))

    def _compute(self, last: Any) -> Any:  # last: [batch, vocab]
        raise NotImplementedError


class LogitDiff(Metric):
    def __init__(self, a_token: Any, b_token: Any, pos: int = -1, per_prompt: bool = False) -> None:
        super().__init__(pos, per_prompt)
        self.a_token, self.b_token = _token(a_token, "a_token"), _token(b_token, "b_token")

    def _compute(self, last: Any) -> Any:
        return _pick(last, self.a_token) - _pick(last, self.b_token)


class Logit(Metric):
    def __init__(self, token: Any, pos: int = -1, per_prompt: bool = False) -> None:
        super().__init__(pos, per_prompt)
        self.token = _token(token, "token")

    def _compute(self, last: Any) -> Any:
        return _pick(last, self.token)


class LogProb(Metric):
    def __init__(self, token: Any, pos: int = -1, per_prompt: bool = False) -> None:
        super().__init__(pos, per_prompt)
        self.token = _token(token, "token")

    def _compute(self, last: Any) -> Any:
        return _pick(last.log_softmax(-1), self.token)


# ---------------------------------------------------------------------- constructors
def logit_diff(a_token: Any, b_token: Any, pos: int = -1, per_prompt: bool = False) -> LogitDiff:
    """``logits[:, pos, a] - logits[:, pos, b]``, averaged over the batch."""
    return LogitDiff(a_token, b_token, pos=pos, per_prompt=per_prompt)


def logit(token: Any, pos: int = -1, per_prompt: bool = False) -> Logit:
    """``logits[:, pos, token]``, averaged over the batch."""
    return Logit(token, pos=pos, per_prompt=per_prompt)


def log_prob(token: Any, pos: int = -1, per_prompt: bool = False) -> LogProb:
    """``log_softmax(logits[:, pos])[:, token]``, averaged over the batch."""
    return LogProb(token, pos=pos, per_prompt=per_prompt)
