"""Metrics over patched variants: which logit positions a metric reads, and one call per variant.

A TransformerLens metric takes the logits of a whole run, [batch, pos, d_vocab_out], and
returns a scalar. The engine keeps one buffer shaped like that, filled with the corrupted
run's logits, writes each variant's recomputed positions into it and calls the metric on
it: the metric sees exactly the tensor a separate forward pass would have produced at the
positions it reads, and only those positions are unembedded.

Which positions a metric reads is found by probing it on the corrupted logits (each
position in turn set to NaN, then to other finite values: a position that never changes
the result is not read). Pass the positions explicitly (``logit_positions=[...]``) or
``"all"`` to skip the probe.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

Metric = Callable[[torch.Tensor], Any]
LogitPositions = Sequence[int] | Literal["auto", "all"]

_PROBE_EACH_UP_TO = 512  # longer runs: probe "last position only", else read them all


def as_scalar(value: Any, device: torch.device) -> torch.Tensor:
    """A metric's result as a float32 0-d tensor of its own (never a view of the reused buffer)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"a patching metric must return a scalar, got shape {list(value.shape)}")
        return value.detach().reshape(()).to(device=device, dtype=torch.float32, copy=True)
    return torch.tensor(float(value), dtype=torch.float32, device=device)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b)) and bool(torch.isfinite(a).all())


def probe_positions(metric: Metric, logits: torch.Tensor) -> list[int]:
    """The positions of ``logits`` [batch, pos, vocab] that ``metric`` reads (all, when unsure)."""
    n = int(logits.shape[1])
    everything = list(range(n))
    buf = logits.clone()
    try:
        ref = as_scalar(metric(buf), buf.device)
        if not torch.isfinite(ref):
            return everything

        def unchanged(where: Any) -> bool:
            saved = buf[:, where].clone()
            buf[:, where] = float("nan")
            nan_ok = _same(as_scalar(metric(buf), buf.device), ref)
            buf[:, where] = saved * -2.0 + 1.0  # finite, and different from every original value
            moved_ok = _same(as_scalar(metric(buf), buf.device), ref)
            buf[:, where] = saved
            return nan_ok and moved_ok

        if n > 1 and unchanged(slice(0, n - 1)):
            return [n - 1] if not unchanged(slice(n - 1, n)) else []
        if n > _PROBE_EACH_UP_TO:
            return everything
        return [j for j in everything if not unchanged(slice(j, j + 1))]
    except Exception:  # a metric that refuses odd values reads them: stay safe
        return everything


def resolve_positions(metric: Metric, logits: torch.Tensor, spec: LogitPositions) -> list[int]:
    """``spec`` ("auto", "all" or explicit positions, negatives allowed) -> sorted positions."""
    n = int(logits.shape[1])
    if isinstance(spec, str):
        if spec == "all":
            return list(range(n))
        if spec == "auto":
            return probe_positions(metric, logits)
        raise ValueError(f"logit_positions must be 'auto', 'all' or a list of positions, got {spec!r}")
    out = sorted({int(p) % n for p in spec})
    return out


class MetricBuffer:
    """One [batch, pos, vocab] tensor, holding the corrupted logits except where a variant writes."""

    def __init__(self, metric: Metric, corrupted_logits: torch.Tensor, positions: list[int]) -> None:
        self.metric = metric
        self.corrupted = corrupted_logits
        self.buf = corrupted_logits.clone()
        self.positions = positions
        self.device = corrupted_logits.device

    def baseline(self) -> torch.Tensor:
        """The metric of the unpatched corrupted run."""
        self.buf[:, self.positions] = self.corrupted[:, self.positions]
        return as_scalar(self.metric(self.buf), self.device)

    def evaluate(self, start: int, new: torch.Tensor, batch: int) -> list[torch.Tensor]:
        """One metric value per variant.

        ``new`` [n_variants * batch, k, vocab] holds the recomputed logits at the metric's
        positions ``>= start`` (in order); positions before ``start`` keep the corrupted values.
        """
        before = [p for p in self.positions if p < start]
        after = [p for p in self.positions if p >= start]
        if before:
            self.buf[:, before] = self.corrupted[:, before]
        per_variant = new.view(-1, batch, *new.shape[1:])
        out = []
        for v in range(per_variant.shape[0]):
            if after:
                self.buf[:, after] = per_variant[v].to(self.buf.dtype)
            out.append(as_scalar(self.metric(self.buf), self.device))
        return out
