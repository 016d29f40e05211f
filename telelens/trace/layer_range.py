"""``start_at_layer`` / ``stop_at_layer``: which blocks a forward pass runs, and which hooks fire.

TransformerLens runs ``blocks[start_at_layer:stop_at_layer]``: ``start`` is inclusive (the
input is the residual stream entering that block), ``stop`` exclusive (the output is the
residual stream entering that block); both count from the end when negative, and
``n_layers`` means "after the last block" (``stop_at_layer=n_layers`` stops before ``ln_final``).
The local forward pass and the graph builders share these rules, so both refuse the same
values with the same words and fire the same hooks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def resolve_layer(value: int | None, n_layers: int, arg: str) -> int | None:
    """``value`` as a block index in ``[0, n_layers]`` (None stays None); ValueError when out of range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    if not -n_layers <= value <= n_layers:
        raise ValueError(
            f"{arg}={value} is out of range for a model with {n_layers} layers "
            f"(use {-n_layers} .. {n_layers}; negative values count from the end)"
        )
    return value + n_layers if value < 0 else value


def n_layers_of(hook_names: Sequence[str]) -> int:
    """The number of blocks, from a model's hook names."""
    layers = [int(m.group(1)) for m in map(_BLOCK.match, hook_names) if m]
    return max(layers, default=-1) + 1


def hook_layer(name: str, n_layers: int) -> int:
    """Block of a hook: ``blocks.3.*`` -> 3; embeddings -> -1; ``ln_final.*`` and logits -> n_layers."""
    m = _BLOCK.match(name)
    if m:
        return int(m.group(1))
    if name == "logits" or name.startswith("ln_final."):
        return n_layers
    return -1


def fires(name: str, n_layers: int, start: int | None, stop: int | None) -> bool:
    """Whether hook ``name`` fires in a pass from block ``start`` (None: from the tokens) to block
    ``stop`` (None: through ``ln_final`` and the unembedding); ``start``/``stop`` already resolved."""
    layer = hook_layer(name, n_layers)
    if layer < 0:
        return start is None
    if layer >= n_layers:
        return stop is None
    return (start or 0) <= layer < (n_layers if stop is None else stop)


class LayerSpan:
    """The blocks one call runs: ``start``/``stop`` resolved against the model's ``n_layers``."""

    def __init__(
        self, hook_names: Sequence[str], start_at_layer: int | None, stop_at_layer: int | None
    ) -> None:
        self.n_layers = n_layers_of(hook_names)
        self.start = resolve_layer(start_at_layer, self.n_layers, "start_at_layer")
        self.stop = resolve_layer(stop_at_layer, self.n_layers, "stop_at_layer")

    def fires(self, name: str) -> bool:
        """Whether hook ``name`` fires in this span (see :func:`fires`)."""
        return fires(name, self.n_layers, self.start, self.stop)

    @property
    def entry_hook(self) -> str:
        """The hook whose whole-tensor value is the residual entering block ``start``: that block's
        ``hook_resid_pre``, or the last block's ``hook_resid_post`` for ``start == n_layers``."""
        assert self.start is not None
        if self.start < self.n_layers:
            return f"blocks.{self.start}.hook_resid_pre"
        return f"blocks.{self.n_layers - 1}.hook_resid_post"
